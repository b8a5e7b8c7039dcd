import json
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from mme3dr.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_prompts_jsonl_prints_249_records():
    res = run("prompts", "--format", "jsonl")
    assert res.exit_code == 0
    rows = [json.loads(l) for l in res.stdout.splitlines()]
    assert len(rows) == 249 and len({r["id"] for r in rows}) == 249
    assert all(3 <= len(r["checklist"]) <= 8 for r in rows)


def test_prompts_filters_and_formats():
    res = run("prompts", "-c", "mechanical", "-f", "csv")
    assert res.exit_code == 0 and len(res.stdout.strip().splitlines()) == 55  # header + 54
    res = run("prompts", "-c", "stylized", "-n", "2")
    assert res.exit_code == 0 and "stylized-002" in res.stdout and "stylized-003" not in res.stdout
    res = run("prompts", "-c", "mechanicl")
    assert res.exit_code == 2 and "Did you mean 'mechanical'" in res.output


def test_models_lists_builtins():
    res = run("models")
    assert res.exit_code == 0
    for name in ("folder", "command", "python", "ar3d-r1", "shapellm-omni"):
        assert name in res.stdout


@pytest.mark.parametrize("cmd", [[], ["prompts"], ["models"], ["generate"], ["validate"]])
def test_help_everywhere(cmd):
    res = run(*cmd, "--help")
    assert res.exit_code == 0 and "Usage" in res.stdout


def test_generate_with_a_failing_and_a_hanging_prompt(tmp_path):
    script = tmp_path / "gen.py"
    script.write_text(textwrap.dedent("""
        import sys, time, trimesh
        pid, out = sys.argv[1], sys.argv[2]
        if pid == "mechanical-001":
            sys.exit("cannot do guitars")
        if pid == "biological-001":
            time.sleep(120)
        trimesh.creation.icosphere().export(out)
    """))
    out = tmp_path / "RUN"
    res = run("generate", "--model", "command", "--model-arg", f"cmd={sys.executable} {script} {{prompt_id}} {{output}}",
              "--model-arg", "timeout=2", "--limit", "5", "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "3 generated, 2 failed" in res.output
    assert "FAILED mechanical-001: command exited with status 1" in res.output
    assert "FAILED biological-001: timed out after 2 s" in res.output
    rows = {json.loads(l)["prompt_id"]: json.loads(l) for l in (out / "generations.jsonl").read_text().splitlines()}
    assert len(rows) == 5
    assert "cannot do guitars" in (out / "assets/mechanical-001/command.log").read_text()
    for pid in ("spatial-001", "world-knowledge-001", "stylized-001"):
        assert rows[pid]["error"] is None and (out / rows[pid]["asset_path"]).is_file()
    res = run("validate", out, "--no-progress")
    assert res.exit_code == 1 and "3/5 assets valid" in res.output and "generation_failed" in res.output


def test_generate_reports_bad_arguments_clearly(tmp_path):
    res = run("generate", "--model", "folde", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "Did you mean 'folder'" in res.output
    res = run("generate", "--model", "folder", "--model-arg", "rot=x", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "Did you mean 'root'" in res.output
    res = run("generate", "--model", "folder", "--model-arg", f"root={tmp_path}", "--out", tmp_path / "r",
              "--limit", "2", "--no-progress")
    assert res.exit_code == 1 and "0 generated, 2 failed" in res.output  # nothing produced -> exit 1
