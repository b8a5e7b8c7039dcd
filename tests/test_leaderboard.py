"""The committed leaderboard (``leaderboards/``) is what ``mme3dr report`` makes from the committed run records.

``leaderboards/runs/<name>/`` holds each run's ``run.json``, ``generations.jsonl`` and ``scores.jsonl`` (assets and
renders are not committed); ``leaderboards/report/`` is the output of the command in :data:`COMMAND`, run from the
repository root. Regenerating it here must give the same bytes.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mme3dr.cli import app

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / "leaderboards"
RUNS = ("sphere-baseline", "reference-policy", "reference-sft")
#: The command that wrote leaderboards/report (also in leaderboards/README.md).
COMMAND = ("mme3dr report " + " ".join(f"leaderboards/runs/{r}" for r in RUNS) + " "
           + " ".join(f"--name {r}" for r in RUNS) + " --title 'MME-3DR leaderboard' --no-plots --out leaderboards/report")


def test_every_run_is_committed_with_its_records():
    for run in RUNS:
        folder = BOARD / "runs" / run
        assert {"run.json", "generations.jsonl", "scores.jsonl"} <= {p.name for p in folder.iterdir()}, run


def test_the_readme_gives_the_command():
    assert COMMAND.replace("mme3dr report ", "") in " ".join((BOARD / "README.md").read_text().replace("\\\n", " ").split())


@pytest.mark.parametrize("name", ["leaderboard.md", "leaderboard.csv", "leaderboard.json", "paired_differences.csv"])
def test_report_regenerates_the_committed_leaderboard(name, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(COMMAND)[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "report")
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "report" / name).read_bytes() == (BOARD / "report" / name).read_bytes()
