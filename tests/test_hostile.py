"""The hostile corpus (tests/hostile_corpus.py) through the real run path, one CLI subprocess per stage.

folder adapter -> ``mme3dr generate`` -> ``validate`` -> ``render`` -> ``score --metrics geometry``. For every case:
the reason code recorded by each stage, no traceback on the terminal, nothing outside the run folder and the corpus
root opened (an audit hook on ``open``, ``os.listdir``/``os.scandir`` and every file-changing event, injected
into every Python process of the run through a ``sitecustomize`` on ``PYTHONPATH``), sentinel files outside left
unread and unchanged (atime and mtime), peak memory of each stage (its own and its children's max RSS) under
2 GB, and every asset within the loading budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import hostile_corpus as H
from mme3dr import runfiles
from mme3dr.defaults import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
MAX_RSS_BYTES = 2 * 10**9
#: Events of the audit hook that read (``open`` in a read mode, directory listings) and that write.
SITECUSTOMIZE = r'''
import os, sys
_dir = os.environ.get("MME3DR_AUDIT_DIR")
if _dir:
    _fd = os.open(os.path.join(_dir, f"audit-{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _WRITE_EVENTS = {"os.mkdir", "os.remove", "os.rmdir", "os.chmod", "os.utime", "shutil.rmtree"}

    def _log(kind, path, dir_fd=None):
        if isinstance(path, int) or path is None:
            return
        path = os.fsdecode(path) if isinstance(path, bytes) else str(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):  # shutil.rmtree's unlink(name, dir_fd)
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        os.write(_fd, (kind + "\t" + os.path.abspath(path) + "\n").encode("utf-8", "surrogateescape"))

    def _hook(event, args):
        try:
            if event == "open":
                mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
                flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
                writes = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
                _log("write" if writes else "read", args[0])
            elif event in ("os.listdir", "os.scandir"):
                _log("read", args[0] if args and args[0] is not None else ".")
            elif event in ("shutil.copyfile", "shutil.copytree"):
                _log("read", args[0])
                _log("write", args[1])
            elif event == "os.rename":  # (src, dst, src_dir_fd, dst_dir_fd)
                _log("write", args[0], args[2])
                _log("write", args[1], args[3])
            elif event == "os.truncate":
                _log("write", args[0])
            elif event in _WRITE_EVENTS:  # (path, ..., dir_fd)
                _log("write", args[0], args[-1] if len(args) > 1 else None)
        except Exception:
            pass

    sys.addaudithook(_hook)
'''


@dataclass
class Stage:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    max_rss: int  # bytes: the stage and every child it waited for
    seconds: float


#: Runs the stage (argv[3:]) as its child with a time limit (argv[2] seconds) and writes the peak RSS of its
#: children in KiB to argv[1]. The stage is not forked from pytest itself: Linux carries the memory high-water mark
#: of the address space a process had before ``exec`` into its ``ru_maxrss``, so a stage forked from a test process
#: of 2 GB (the whole suite's pytest) reads as 2 GB whatever it used. Forked from this small launcher instead, it
#: starts from the launcher's few MB. The launcher runs isolated (``-I``: no ``PYTHONPATH``, so no audit hook of
#: its own); the stage inherits the environment unchanged.
PEAK_RSS_LAUNCHER = """
import resource, subprocess, sys
try:
    rc = subprocess.call(sys.argv[3:], timeout=float(sys.argv[2]))
except subprocess.TimeoutExpired:
    rc = -9
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc if rc >= 0 else 128 - rc)
"""


def run_stage(args: list[str], env: dict, cwd: Path, timeout: float = 600) -> Stage:
    """One CLI call in a subprocess; its peak memory: the max RSS over it and its waited-for children
    (:data:`PEAK_RSS_LAUNCHER`)."""
    out, err, peak = (cwd.parent / f"{n}.txt" for n in ("stdout", "stderr", "peak_rss"))
    with open(out, "wb") as o, open(err, "wb") as e:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-I", "-c", PEAK_RSS_LAUNCHER, str(peak), str(timeout), sys.executable,
                               "-m", "mme3dr.cli", *args], stdout=o, stderr=e, env=env, cwd=cwd)
        seconds = time.perf_counter() - start
    return Stage(args, proc.returncode, out.read_text(), err.read_text(), int(peak.read_text()) * 1024, seconds)


def stage_env(audit: Path, scratch: Path) -> dict:
    """The stages' environment: the audit hook, and the system temp folder (TMPDIR) moved to ``scratch`` so that
    scratch files (the renderer's compiled shaders) are audited like everything else."""
    audit.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    (audit / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(audit), str(ROOT)]), "MME3DR_AUDIT_DIR": str(audit),
            "HF_HUB_OFFLINE": "1", "PYGLET_HEADLESS": "1", "TMPDIR": str(scratch)}


def audited(audit: Path) -> list[tuple[str, str, str]]:
    """(kind, path, log file) of every audited event of every process."""
    rows = []
    for log in sorted(audit.glob("audit-*.log")):
        for line in log.read_text(errors="surrogateescape").splitlines():
            kind, path = line.split("\t", 1)
            rows.append((kind, path, log.name))
    return rows


def _stamp(outside: Path) -> dict[str, tuple[int, int]]:
    """Sentinels get an atime older than their mtime, so that any read updates it (relatime)."""
    out = {}
    for name in H.SENTINELS:
        p = outside / name
        st = p.stat()
        os.utime(p, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))
        st = p.stat()
        out[name] = (st.st_atime_ns, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    root, outside, run, audit = base / "corpus", base / "outside", base / "run", base / "audit"
    cwd, scratch = base / "cwd", base / "scratch"
    cwd.mkdir()
    cases = H.build(root, outside)
    prompts = H.write_prompts(base / "prompts.jsonl", [c.id for c in cases])
    times = _stamp(outside)
    env = stage_env(audit, scratch)
    stages = {
        "generate": run_stage(["generate", "--model", "folder", "-a", f"root={root}", "--source", str(prompts),
                               "--out", str(run), "--no-progress"], env, cwd),
        "validate": run_stage(["validate", str(run), "--no-progress"], env, cwd),
        "render": run_stage(["render", str(run), "--preset", "reward6", "--resolution", "32", "--no-progress"], env, cwd),
        "score": run_stage(["score", str(run), "--metrics", "geometry", "--preset", "reward6", "--no-progress"], env, cwd),
    }
    return {"base": base, "root": root, "outside": outside, "run": run, "audit": audit, "cases": cases,
            "stages": stages, "times": times, "cwd": cwd, "scratch": scratch, "prompts": prompts}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_corpus_is_big_enough():
    assert len(H.CASES) >= 30 and len({c.id for c in H.CASES}) == len(H.CASES)
    assert sum(c.reason is not None for c in H.CASES) >= 30


@pytest.mark.slow  # four CLI runs (their start-up dominates): ~30 s
def test_no_traceback_and_expected_exit_codes(corpus):
    codes = {name: s.returncode for name, s in corpus["stages"].items()}
    assert codes == {"generate": 0, "validate": 1, "render": 0, "score": 0}, \
        {n: (s.returncode, s.stderr[-2000:]) for n, s in corpus["stages"].items()}
    for name, s in corpus["stages"].items():
        assert "Traceback" not in s.stdout + s.stderr, (name, s.stderr[-3000:])


@pytest.mark.slow  # four CLI runs (their start-up dominates): ~30 s
def test_every_case_gets_its_reason_at_every_stage(corpus):
    run = corpus["run"]
    validation = {r["prompt_id"]: r for r in _jsonl(run / runfiles.VALIDATION)}
    [renders_dir] = (run / "renders").iterdir()
    renders = {r["key"]: r for r in _jsonl(renders_dir / "renders.jsonl")}
    scores = {r["prompt_id"]: r for r in _jsonl(run / runfiles.SCORES) if r["metric"] == "geometry"}
    wrong = []
    for case in corpus["cases"]:
        v = validation[case.id]
        got = None if v["ok"] else v["reason"]
        if got != case.reason:
            wrong.append((case.id, "validate", case.reason, got, v["message"]))
            continue
        if case.reason == "generation_failed":  # no asset: nothing to render or score
            assert case.id not in renders and case.id not in scores
            continue
        r, s = renders[case.id], scores[case.id]
        if case.reason is None:
            if not (r["ok"] and s["error"] is None):
                wrong.append((case.id, "render/score", None, r["reason"], s["error"]))
        elif r["reason"] != case.reason or f"[{case.reason}]" not in (s["error"] or ""):
            wrong.append((case.id, "render/score", case.reason, r["reason"], s["error"]))
    assert not wrong, "\n".join(map(str, wrong))


@pytest.mark.slow  # four CLI runs (their start-up dominates): ~30 s
def test_good_assets_come_through_unaffected(corpus):
    validation = {r["prompt_id"]: r for r in _jsonl(corpus["run"] / runfiles.VALIDATION)}
    assert validation["ok-glb"]["n_faces"] == 12 and validation["ok-glb"]["source_extent"] == pytest.approx(3.0)
    assert validation["ok-obj"]["n_faces"] == 2 and validation["ok-obj"]["has_texture"]
    assert validation["ok-ply"]["n_faces"] == 4
    # zero-area faces are dropped and counted; the tetrahedron they surround is what is loaded
    assert validation["zero-area-many"]["n_faces"] == 4 and validation["zero-area-many"]["zero_area_faces"] == 200_000
    scores = {r["prompt_id"]: r for r in _jsonl(corpus["run"] / runfiles.SCORES)}
    assert scores["zero-area-many"]["values"]["degenerate_faces"] == pytest.approx(200_000 / 200_004)
    assert scores["zero-area-many"]["values"]["watertight"] == 1.0
    assert scores["ok-glb"]["values"]["watertight"] == 1.0 and scores["ok-glb"]["values"]["degenerate_faces"] == 0


def _inside(path: str, roots: list[Path]) -> bool:
    return any(Path(path) == r or Path(path).is_relative_to(r) for r in roots)


@pytest.mark.slow  # four CLI runs (their start-up dominates): ~30 s
def test_nothing_outside_the_run_is_read_or_written(corpus):
    rows = audited(corpus["audit"])
    assert len({log for _, _, log in rows}) >= 5  # 4 stages, and their loader processes, were audited
    forbidden = [corpus["outside"], Path("/etc/passwd"), Path("/dev/zero")]
    touched = [(k, p, log) for k, p, log in rows if _inside(p, forbidden)]
    assert not touched, touched
    # every write lands in the run folder (or the temp folder, left empty, and the audit logs)
    write_roots = [corpus["run"], corpus["scratch"], corpus["audit"], Path("/dev/null")]
    writes = [(p, log) for k, p, log in rows if k == "write" and not _inside(p, write_roots)]
    assert not writes, writes
    assert not list(corpus["scratch"].iterdir())
    # every read is of the run, the corpus root, the prompt file, or the Python installation and this toolkit
    # (import machinery also probes names relative to the working folder, an empty one here)
    code_roots = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, ROOT)}
    read_roots = [corpus["run"], corpus["root"], corpus["audit"], corpus["prompts"], corpus["cwd"],
                  corpus["scratch"], *code_roots,
                  *(Path(p).resolve() for p in sys.path if p and Path(p).is_dir() and p != "/"),
                  Path("/proc"), Path("/dev/null"), Path("/usr/share/zoneinfo")]
    reads = sorted({p for k, p, _ in rows if k == "read" and not _inside(p, read_roots)
                    and not _inside(str(Path(p).resolve()), read_roots)})
    assert not reads, reads
    # the sentinels outside were neither read (atime) nor changed (mtime)
    for name, (atime, mtime) in corpus["times"].items():
        st = (corpus["outside"] / name).stat()
        assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime), name


@pytest.mark.slow  # four CLI runs (their start-up dominates): ~30 s
def test_memory_and_time_stay_within_budget(corpus):
    for name, s in corpus["stages"].items():
        assert s.max_rss < MAX_RSS_BYTES, (name, s.max_rss)
    [renders_dir] = (corpus["run"] / "renders").iterdir()
    per_asset = [r["seconds"] for r in _jsonl(renders_dir / "renders.jsonl")]
    per_asset += [r["seconds"] for r in _jsonl(corpus["run"] / runfiles.SCORES)]
    assert per_asset and max(per_asset) < DEFAULTS.asset_timeout_s


@pytest.mark.parametrize("bad_id", [*H.HOSTILE_IDS, "ABSOLUTE"])
def test_hostile_prompt_ids_are_refused_on_load(bad_id, tmp_path):
    """A prompt id that names a path (``../../x``, an absolute path, ``a/b``) is refused when the prompt file is
    loaded, with a message that names the id."""
    from mme3dr.data import load_benchmark

    bad_id = str(tmp_path / "victim") if bad_id == "ABSOLUTE" else bad_id
    prompts = H.write_prompts(tmp_path / "prompts.jsonl", ["spatial-001", bad_id])
    with pytest.raises(ValueError) as info:
        load_benchmark(source=prompts)
    assert "id" in str(info.value) and (bad_id in str(info.value) or repr(bad_id) in str(info.value))


@pytest.mark.slow
@pytest.mark.parametrize("bad_id", ["../../victim", "ABSOLUTE"])
def test_hostile_prompt_ids_stop_generate_with_one_line(bad_id, tmp_path):
    """Through the CLI: exit code 2, a one-line error, and the folder the id names is left alone."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    bad_id = str(victim) if bad_id == "ABSOLUTE" else bad_id
    (tmp_path / "assets").mkdir()
    (tmp_path / "cwd").mkdir()
    prompts = H.write_prompts(tmp_path / "prompts.jsonl", [bad_id])
    res = run_stage(["generate", "--model", "folder", "-a", f"root={tmp_path / 'assets'}", "--source", str(prompts),
                     "--out", str(tmp_path / "run"), "--no-progress"],  # ../../victim from run/assets/
                    {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}, tmp_path / "cwd")
    assert (victim / "keep.txt").read_text() == "keep"
    assert "Traceback" not in res.stderr
    assert res.returncode == 2 and "error:" in res.stderr and "id" in res.stderr, res.stderr
