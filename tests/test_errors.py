"""How errors reach the user: user errors and OS errors as one clear line (exit 2), bugs as bugs (exit 70)."""

import errno
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mme3dr import __version__
from mme3dr.cli import app
from mme3dr.errors import (EXIT_BUG, EXIT_USER_ERROR, InputError, MissingInputError, ModelArgumentError, Mme3drError,
                           UnknownNameError, describe_os_error)
from mme3dr.jsonl import read_jsonl
from test_crash_recovery import outcome
from test_evaluate import LIMIT, make_assets

REPO = Path(__file__).resolve().parents[1]


def cli(*args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(app, [str(a) for a in args])


def evaluate_args(assets, run):
    return ["evaluate", "--model", "folder", "--model-arg", f"root={assets}", "--metrics", "geometry", "--limit",
            LIMIT, "--resolution", 48, "--out", run, "--no-progress", "--no-report"]


def test_user_errors_keep_their_old_bases():
    """Code that caught the built-in types still catches them; every user-facing error has one base."""
    from mme3dr.assets import AssetError
    from mme3dr.data import BenchmarkFormatError
    from mme3dr.generation import RunConflictError
    from mme3dr.metrics.vlm import VLMRequestError
    from mme3dr.weights import MissingWeightsError
    from mme3dr.runlock import RunLockedError

    for cls, old in ((BenchmarkFormatError, ValueError), (RunConflictError, ValueError), (AssetError, Exception),
                     (MissingWeightsError, FileNotFoundError), (RunLockedError, RuntimeError),
                     (VLMRequestError, RuntimeError), (UnknownNameError, KeyError), (ModelArgumentError, TypeError),
                     (InputError, ValueError), (MissingInputError, FileNotFoundError)):
        assert issubclass(cls, Mme3drError) and issubclass(cls, old), cls
    assert str(UnknownNameError("unknown model 'x'")) == "unknown model 'x'"  # no KeyError quotes


class Boom:
    """A plug-in adapter whose constructor rejects its settings with a plain ValueError."""

    def __init__(self) -> None:
        raise ValueError("bad plug-in setting")


@pytest.mark.parametrize("args, message", [
    (["generate", "--model", "nosuch", "--out", "R"], "unknown model 'nosuch'"),  # a registry KeyError
    (["generate", "--model", "folder", "-a", "rot=x", "--out", "R"], "has no argument 'rot'"),  # a TypeError
    (["generate", "--model", "python", "-a", "factory=collections:OrderedDict", "--out", "R"],
     "not a mme3dr.adapters.Generator"),
    (["generate", "--model", "python", "-a", "factory=json:dumps", "--out", "R"],  # the user's factory fails
     "python model: json:dumps() raised TypeError"),
    (["generate", "--model", "boom", "--out", "R"], "model 'boom' (test_errors:Boom) could not be created: "
                                                    "ValueError: bad plug-in setting"),
    (["render", "nosuch.glb", "--preset", "nosuch"], "unknown render preset 'nosuch'"),
    (["prompts", "--category", "spatal"], "Did you mean 'spatial'"),
])
def test_user_mistakes_raised_as_builtin_types_stay_friendly(args, message, tmp_path, monkeypatch):
    from mme3dr.adapters import GENERATORS

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(GENERATORS._entries, "boom", type(GENERATORS._entries["folder"])(Boom, "entry-point test"))
    res = cli(*args)
    assert res.exit_code == EXIT_USER_ERROR, res.output
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output


def test_a_bug_shows_as_a_bug(monkeypatch):
    import mme3dr.data

    def broken(*args, **kwargs):
        return {}["no such key"]  # a genuine KeyError inside the toolkit

    monkeypatch.setattr(mme3dr.data, "load_benchmark", broken)
    res = cli("prompts")
    assert res.exit_code == EXIT_BUG != EXIT_USER_ERROR
    text = " ".join(res.output.split())
    assert "Traceback" in res.output and "KeyError: 'no such key'" in res.output
    assert f"This is a bug in mme3dr {__version__}" in text and "Please report it" in text
    assert res.output.count("\n  File ") <= 8  # a short traceback


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on the device"),
                                         (errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system"),
                                         (errno.EDQUOT, "disk quota exceeded")])
def test_os_errors_read_as_what_happened_where(code, words):
    msg = describe_os_error(OSError(code, os.strerror(code), "/runs/R/scores.jsonl"))
    assert msg.startswith("/runs/R/scores.jsonl: " + words)
    assert describe_os_error(FileNotFoundError("our own message")) == "our own message"


def test_disk_full_during_an_append_names_the_file_and_the_rerun_finishes(tmp_path, monkeypatch):
    """ENOSPC in the middle of writing a score record: a clear message naming scores.jsonl and exit 2, no torn
    line left behind, and the same command afterwards gives the results of a run that never failed."""
    import mme3dr.jsonl

    make_assets(tmp_path / "assets")
    assert cli(*evaluate_args(tmp_path / "assets", tmp_path / "FULL")).exit_code == 0
    real = mme3dr.jsonl._write_all

    def full_disk(fd, data):
        if b'"metric": "geometry"' in data and b'"prompt_id": "mechanical' in data:
            real(fd, data[:len(data) // 2])  # the disk fills up half-way through the record
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(mme3dr.jsonl, "_write_all", full_disk)
    run = tmp_path / "RUN"
    res = cli(*evaluate_args(tmp_path / "assets", run))
    assert res.exit_code == EXIT_USER_ERROR, res.output
    text = " ".join(res.output.split())
    assert f"{run / 'scores.jsonl'}: no space left on the device" in text and "Traceback" not in res.output
    assert (run / "scores.jsonl").read_bytes().endswith(b"\n")  # the half record was taken back
    assert 0 < len(read_jsonl(run / "scores.jsonl")) < LIMIT - 1
    monkeypatch.setattr(mme3dr.jsonl, "_write_all", real)  # space freed
    assert cli(*evaluate_args(tmp_path / "assets", run)).exit_code == 0
    assert outcome(run) == outcome(tmp_path / "FULL")


def test_disk_full_while_replacing_a_file_leaves_the_old_file(tmp_path):
    """A write that fails half-way (the disk fills up) through the atomic writer: the error names the file, the
    old content stays and no temporary file is left."""
    import mme3dr.jsonl

    path = tmp_path / "run.json"
    mme3dr.jsonl.atomic_write_text(path, "old")
    with pytest.raises(OSError) as info:
        with mme3dr.jsonl.atomic_writer(path) as f:
            f.write(b"n")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_damaged_run_json_is_named(tmp_path):
    make_assets(tmp_path / "assets")
    run = tmp_path / "RUN"
    assert cli(*evaluate_args(tmp_path / "assets", run)).exit_code == 0
    (run / "run.json").write_text((run / "run.json").read_text()[:40])
    res = cli(*evaluate_args(tmp_path / "assets", run))
    assert res.exit_code == EXIT_USER_ERROR
    text = " ".join(res.output.split())
    assert f"{run / 'run.json'} is damaged: not valid JSON" in text and "delete it" in text
    assert "Traceback" not in res.output


def _without_root_powers() -> None:
    """preexec_fn: drop the capabilities that let root ignore file permissions (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH) from the bounding set, so the program run next is refused like any other user."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_read_only_run_folder_is_reported_with_its_path(tmp_path):
    """EACCES for real: the run folder exists but may not be written (as root, the command runs without the
    capabilities that let root write anywhere)."""
    run = tmp_path / "RUN"
    run.mkdir()
    run.chmod(0o555)
    argv = [sys.executable, "-m", "mme3dr.cli", "generate", "--model", "folder", "--model-arg", f"root={tmp_path}",
            "--limit", "1", "--out", str(run), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300,
                             preexec_fn=_without_root_powers if os.geteuid() == 0 else None)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot run without root's file powers here: {exc}")
    assert res.returncode == EXIT_USER_ERROR, res.stderr
    text = " ".join(res.stderr.split())
    assert f"{run / '.mme3dr.lock'}: permission denied" in text and "Traceback" not in res.stderr
