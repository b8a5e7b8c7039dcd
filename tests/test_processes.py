"""Generator programs never outlive mme3dr: a SIGKILLed mme3dr takes its generator with it (Linux parent-death
signal), and the next run on the folder ends whatever the generator itself had started.

No test here depends on timing: each waits for a condition (a pid file written, a process gone) with a generous
deadline, and a process counts as gone once it has exited (a zombie waiting for its parent to reap it is gone)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mme3dr import runfiles
from mme3dr.runlock import run_lock

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
REPO = Path(__file__).resolve().parents[1]
DEADLINE = 120.0  # seconds; only ever reached when the behaviour under test is broken

# A generator program: records its pid, optionally starts a grandchild that records its own pid, then either
# sleeps (a generator still working when mme3dr is killed) or writes its output and exits.
CHILD = textwrap.dedent("""
    import os, subprocess, sys, time
    out, folder, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    def record(name, pid):
        tmp = os.path.join(folder, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(str(pid))
        os.replace(tmp, os.path.join(folder, name))
    if mode != "alone":
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        record("grandchild", grandchild.pid)
    record("child", os.getpid())
    if mode == "finish":
        open(out, "w").write("solid\\n")
        sys.exit(0)
    time.sleep(3600)
""")
# mme3dr itself, running one prompt through the command adapter under the run lock.
PARENT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mme3dr.adapters.base import GenerationRequest
    from mme3dr.adapters.command import CommandGenerator
    from mme3dr.runlock import run_lock
    run, child, folder, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    gen = CommandGenerator(f"{sys.executable} {child} {{output}} {folder} {mode}", timeout=3600, ext="obj")
    with run_lock(run):
        out = run / "assets" / "p"
        out.mkdir(parents=True)
        print(gen.generate_one(GenerationRequest("p", "a prompt", "spatial", 0, out)).error, flush=True)
""")


def running(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {DEADLINE:g} s for {what}"
        time.sleep(0.05)


def read_pid(path: Path) -> int:
    wait_for(path.exists, f"{path.name} to be written")
    return int(path.read_text())


@pytest.fixture
def scene(tmp_path):
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "parent.py").write_text(PARENT)
    (tmp_path / "pids").mkdir()
    started: list[int] = []
    yield tmp_path, started
    for pid in started:  # never leave a sleeper behind, whatever the outcome
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_parent(tmp_path: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), str(tmp_path / "RUN"),
                             str(tmp_path / "child.py"), str(tmp_path / "pids"), mode], env=env,
                            stdout=subprocess.PIPE, text=True)


def test_a_generator_dies_with_a_killed_mme3dr(scene):
    tmp_path, started = scene
    parent = start_parent(tmp_path, "alone")
    child = read_pid(tmp_path / "pids" / "child")
    started.append(child)
    wait_for(lambda: any((tmp_path / "RUN" / runfiles.CHILDREN_DIR).glob("*.json")), "the generator to be recorded")
    parent.kill()  # SIGKILL: no cleanup code of mme3dr runs
    parent.wait()
    wait_for(lambda: not running(child), "the generator to die with mme3dr")


def test_the_next_run_ends_what_the_generator_started(scene):
    tmp_path, started = scene
    parent = start_parent(tmp_path, "sleep")
    grandchild = read_pid(tmp_path / "pids" / "grandchild")
    child = read_pid(tmp_path / "pids" / "child")
    started += [child, grandchild]
    parent.kill()
    parent.wait()
    wait_for(lambda: not running(child), "the generator to die with mme3dr")
    assert running(grandchild)  # the kernel signals the direct child only
    with run_lock(tmp_path / "RUN"):  # the next run on this folder
        assert not running(grandchild)
    assert not list((tmp_path / "RUN" / runfiles.CHILDREN_DIR).glob("*"))


def test_what_a_finished_generator_left_running_is_ended(scene):
    tmp_path, started = scene
    parent = start_parent(tmp_path, "finish")
    out, _ = parent.communicate(timeout=DEADLINE)
    grandchild = read_pid(tmp_path / "pids" / "grandchild")
    started.append(grandchild)
    assert parent.returncode == 0 and out.strip() == "None"  # the prompt succeeded
    wait_for(lambda: not running(grandchild), "the generator's leftover to be killed")
    assert not list((tmp_path / "RUN" / runfiles.CHILDREN_DIR).glob("*"))


def test_a_recorded_pid_now_used_by_another_process_is_left_alone(tmp_path):
    """The record's start time no longer matches (the pid was reused): that process is not ours to kill."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        records = tmp_path / "RUN" / runfiles.CHILDREN_DIR
        records.mkdir(parents=True)
        (records / f"{other.pid}.json").write_text(json.dumps({"pid": other.pid, "start_time": "1",
                                                               "token": "0" * 32, "argv": ["gen"]}))
        (records / "123.json").write_text('{"pid": 123, "sta')  # a record torn by a kill
        with run_lock(tmp_path / "RUN"):
            pass
        assert running(other.pid) and not list(records.glob("*"))
    finally:
        other.kill()
        other.wait()
