"""Every code block of the README runs as written.

Python blocks run as scripts in a fresh folder (with the files they name, such as ``my_meshes/``, made there first).
Shell blocks: every command line that needs nothing from outside runs and must succeed; a line that names inputs a
new user would bring (their meshes, Toys4K, a reference set, a GPU) still runs, and must stop with the toolkit's
own one-line error about that input, never a usage error or a traceback, so its options are checked too.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: Words that mark a command as needing the user's own inputs (or hardware this machine may lack).
EXTERNAL = ("my_meshes", "toys4k", "refs/", "mesh.glb", "runs/mine", "runs/other", "my_model", "gen.py",
            "REF", "RUN", "--device cuda", "--checkpoint ckpt", "/weights/", "out/")
#: Training and evaluation modules of the reference policy (minutes on a GPU): their command lines are checked with
#: ``--help`` (the module exists and parses its arguments) instead of being run.
HELP_ONLY = ("python -m reference_policy.",)

pytestmark = pytest.mark.slow


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[str]:
    """Command lines of the shell blocks (comments dropped, backslash continuations joined)."""
    out = []
    for block in blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                out.append(line)
    return out


def env() -> dict[str, str]:
    """The user's shell after ``pip install``: the interpreter's scripts (``torchrun``, ``mme3dr``) on ``PATH``,
    even when the tests run from an environment that was never activated (``.ci/run``)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PATH": path}


def shell(line: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    argv = shlex.split(line)
    if argv[0] == "mme3dr":
        argv = [sys.executable, "-m", "mme3dr.cli", *argv[1:]]
    elif argv[0] in ("python", "python3"):
        argv = [sys.executable, *argv[1:]]
    elif argv[0] == "bash":
        pytest.skip("the install command is what CI itself runs")
    return subprocess.run(argv, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def test_the_readme_has_the_blocks_this_test_expects():
    assert len(blocks("python")) >= 2 and any(c.startswith("mme3dr evaluate") for c in commands())
    assert "bash .ci/run" in commands()


@pytest.mark.parametrize("line", [c for c in commands() if not any(w in c for w in EXTERNAL)
                                  and not c.startswith(HELP_ONLY)])
def test_self_contained_command_runs(line, tmp_path):
    res = shell(line, tmp_path)
    assert res.returncode == 0, f"{line}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("line", [c for c in commands() if c.startswith(HELP_ONLY)])
def test_training_commands_exist_and_take_their_options(line):
    argv = shlex.split(line)
    module = argv[argv.index("-m") + 1]
    res = subprocess.run([sys.executable, "-m", module, "--help"], env=env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    for option in (a for a in argv if a.startswith("--")):
        assert option in res.stdout, f"{module} has no option {option}"


@pytest.mark.parametrize("line", [c for c in commands() if any(w in c for w in EXTERNAL)
                                  and not c.startswith(HELP_ONLY)])
def test_command_with_user_inputs_stops_with_a_clear_error(line, tmp_path):
    res = shell(line, tmp_path, timeout=300)
    text = res.stdout + res.stderr
    assert res.returncode in (1, 2), f"{line}\n{text[-2000:]}"
    if line.startswith("torchrun"):  # the launcher reports a failed worker with its own traceback; ours has none
        expected = "error: argument --device" if "reference_policy" in line else "error:"
        assert expected in text, text[-2000:]
        assert "/reference_policy/" not in text and "/mme3dr/" not in text, text[-2000:]
        return
    assert "Traceback" not in text and "No such option" not in text and "Usage:" not in text, text[-2000:]
    assert "error:" in text or "failed" in text, text[-2000:]


def _meshes(folder: Path, ids: list[str]) -> None:
    """y-up GLBs for the prompts the Python block uses (a user's meshes)."""
    folder.mkdir()
    for i, pid in enumerate(ids):
        mesh = trimesh.creation.box(extents=(1.0, 0.4 + 0.1 * i, 0.6))
        mesh.visual.vertex_colors = np.tile([200, 40 + 30 * i, 40, 255], (len(mesh.vertices), 1))
        mesh.export(folder / f"{pid}.glb")


def test_python_blocks_run_as_plain_scripts(tmp_path):
    """The snippets run as a script with no ``__main__`` guard, render_run with 4 worker processes included."""
    from mme3dr.data import load_benchmark

    _meshes(tmp_path / "my_meshes", [r.id for r in load_benchmark(categories=["spatial"], limit=5)])
    for i, code in enumerate(blocks("python")):
        script = tmp_path / f"readme_{i}.py"
        script.write_text(code)
        res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env(), capture_output=True, text=True,
                             timeout=900)
        assert res.returncode == 0, f"block {i}:\n{code}\n{res.stderr[-3000:]}"
        assert res.stderr.count("Traceback") == 0
    views = sorted((tmp_path / "runs/mine/renders").glob("canonical-*/spatial-00*/023.png"))
    assert len(views) == 5  # every asset rendered by the worker pool
