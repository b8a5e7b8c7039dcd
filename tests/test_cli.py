import json
import sys
import textwrap

import numpy as np
import pytest
import trimesh
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


def test_generate_with_a_failing_prompt(tmp_path):
    """One prompt's program fails, the others succeed: the failure is recorded and the run goes on. The default
    per-prompt timeout (600 s) is far beyond what a loaded machine needs here, so nothing depends on timing."""
    script = tmp_path / "gen.py"
    script.write_text(textwrap.dedent("""
        import shutil, sys
        pid, out = sys.argv[1], sys.argv[2]
        if pid == "mechanical-001":
            sys.exit("cannot do guitars")
        shutil.copyfile(sys.argv[3], out)
    """))
    sphere = tmp_path / "sphere.glb"
    trimesh.creation.icosphere().export(sphere)
    out = tmp_path / "RUN"
    res = run("generate", "--model", "command", "--model-arg",
              f"cmd={sys.executable} {script} {{prompt_id}} {{output}} {sphere}", "--limit", "5", "--out", out,
              "--no-progress")
    assert res.exit_code == 0, res.output
    assert "4 generated, 1 failed" in res.output
    assert "FAILED mechanical-001: command exited with status 1" in res.output
    rows = {json.loads(l)["prompt_id"]: json.loads(l) for l in (out / "generations.jsonl").read_text().splitlines()}
    assert len(rows) == 5
    assert "cannot do guitars" in (out / "assets/mechanical-001/command.log").read_text()
    for pid in ("spatial-001", "biological-001", "world-knowledge-001", "stylized-001"):
        assert rows[pid]["error"] is None and (out / rows[pid]["asset_path"]).is_file()
    res = run("validate", out, "--no-progress")
    assert res.exit_code == 1 and "4/5 assets valid" in res.output and "generation_failed" in res.output


def test_generate_with_a_hanging_prompt_times_out(tmp_path):
    """A program that never finishes is killed at the timeout and recorded; it sleeps far longer than the test's
    1 s timeout, so the outcome does not depend on how busy the machine is."""
    script = tmp_path / "hang.py"
    script.write_text("import time\ntime.sleep(600)\n")
    out = tmp_path / "RUN"
    res = run("generate", "--model", "command", "--model-arg", f"cmd={sys.executable} {script} {{output}}",
              "--model-arg", "timeout=1", "-c", "biological", "--limit", "1", "--out", out, "--no-progress")
    assert res.exit_code == 1, res.output  # the run holds no asset
    assert "0 generated, 1 failed" in res.output and "FAILED biological-001: timed out after 1 s" in res.output


def test_generate_reports_bad_arguments_clearly(tmp_path):
    res = run("generate", "--model", "folde", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "Did you mean 'folder'" in res.output
    res = run("generate", "--model", "folder", "--model-arg", "rot=x", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "Did you mean 'root'" in res.output
    res = run("generate", "--model", "folder", "--model-arg", f"root={tmp_path}", "--out", tmp_path / "r",
              "--limit", "2", "--no-progress")
    assert res.exit_code == 1 and "0 generated, 2 failed" in res.output  # nothing produced -> exit 1


def test_evaluate_names_every_missing_weight_at_once_and_writes_nothing(tmp_path, monkeypatch):
    """Default metrics (clip, geometry) offline, with a generator checkpoint that is not there: one message names
    both weights and the weightless alternative, and no run folder (or lock file) is left behind."""
    monkeypatch.setenv("MME3DR_WEIGHTS", str(tmp_path / "weights"))
    out = tmp_path / "R"
    res = run("evaluate", "--model", "reference", "-a", f"checkpoint={tmp_path / 'nockpt'}", "--metrics",
              "clip,geometry,kid", "--reference", tmp_path, "--out", out, "--no-progress")
    assert res.exit_code == 2
    assert "reference set" in res.output and not out.exists()  # the reference is checked first
    res = run("evaluate", "--model", "reference", "-a", f"checkpoint={tmp_path / 'nockpt'}", "--out", out,
              "--no-progress")
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "2 weights are missing" in text and "model reference: no reference-policy checkpoint" in text
    assert "metric clip: cannot load CLIP weights" in text and "--clip-weights PATH" in text
    assert "--metrics geometry runs without downloads" in text
    assert not out.exists()
    assert "Traceback" not in res.output and "ERROR:root" not in res.output


def test_clip_message_keeps_the_underlying_error_whole():
    from mme3dr.weights import missing_message

    long = RuntimeError("word " * 100 + "Please check your connection and try again.")
    assert missing_message("CLIP", "ViT-B-32/openai", "x.pt", long).count("connection and try again.") == 1


def test_inception_advice_names_the_file_torch_fidelity_reads():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    from mme3dr.metrics.features import INCEPTION_FILE

    assert URL_INCEPTION_V3.rsplit("/", 1)[-1] == INCEPTION_FILE


def test_released_adapters_say_model_arg(tmp_path, monkeypatch):
    monkeypatch.setenv("MME3DR_WEIGHTS", str(tmp_path))
    res = run("generate", "--model", "ar3d-r1", "--out", tmp_path / "R", "--no-progress")
    assert res.exit_code == 2 and "pass --model-arg model=PATH" in " ".join(res.output.split())
    assert not (tmp_path / "R").exists()


@pytest.mark.parametrize("args, message", [
    (["--model", "command", "-a", "cmd=true"], "cmd must contain {output}"),
    (["--model", "command", "-a", "cmd=true {output}", "-a", "timeout=abc"], "timeout takes a number"),
    (["--model", "reference", "-a", "temperature=abc"], "temperature takes a number"),
])
def test_bad_model_arguments_get_one_clear_message_before_any_work(args, message, tmp_path):
    res = run("generate", *args, "--out", tmp_path / "R", "--limit", "3", "--no-progress")
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert res.output.count("error:") == 1 and not (tmp_path / "R").exists()


def test_paper_refuses_a_missing_run_and_explains_an_empty_row(tmp_path):
    res = run("paper", "--run", tmp_path / "nothere")
    assert res.exit_code == 2 and "is not a run folder" in res.output
    run_dir = tmp_path / "geo"
    run_dir.mkdir()
    rec = {"prompt_id": "spatial-001", "category": "spatial", "prompt": "p", "seed": 0, "model": {"name": "m"},
           "asset_path": None, "error": "x", "up_axis": "+z", "seconds": 0.0}
    (run_dir / "generations.jsonl").write_text(json.dumps(rec) + "\n")
    (run_dir / "scores.jsonl").write_text(json.dumps({"prompt_id": "spatial-001", "metric": "geometry"}) + "\n")
    res = run("paper", "--run", run_dir, "--markdown")
    assert res.exit_code == 0
    assert "no clip, kid, kid_dinov2, fid scores (it has: geometry)" in " ".join(res.output.split())


def test_rerun_with_failures_mentions_retry_failed(tmp_path):
    res = run("generate", "--model", "folder", "-a", f"root={tmp_path}", "--limit", "2", "--out", tmp_path / "R",
              "--no-progress")
    assert res.exit_code == 1 and "--retry-failed" not in res.output
    res = run("generate", "--model", "folder", "-a", f"root={tmp_path}", "--limit", "2", "--out", tmp_path / "R",
              "--no-progress")
    assert "0 generated, 0 failed, 2 already done" in res.output
    assert "2 of the prompts already done failed in an earlier call; --retry-failed generates them again" in \
        " ".join(res.output.split())


def test_files_and_render_folders_follow_the_umask(tmp_path):
    """Reports and renders can be shared: atomic writes and render folders get the umask's modes (0644/0755 under
    umask 022), not tempfile's private 0600/0700."""
    import os
    import stat

    from mme3dr.jsonl import atomic_write_text
    from mme3dr.render.output import write_render
    from mme3dr.render.presets import get_preset
    from mme3dr.render.renderer import RenderOutput

    preset = get_preset("canonical").with_overrides(n_views=1, resolution=8)
    out = RenderOutput(np.zeros((1, 8, 8, 4), np.uint8), preset.camera_set(), preset.hash, "test")
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        write_render(tmp_path / "view", out, preset, {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "view").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "view" / "render.json").stat().st_mode) == 0o644


def test_piped_output_is_not_wrapped_and_models_show_plain_text():
    import subprocess

    res = subprocess.run([sys.executable, "-m", "mme3dr.cli", "models"], capture_output=True, text=True)
    assert res.returncode == 0
    row = next(line for line in res.stdout.splitlines() if line.startswith(("│ reference", "| reference")))
    assert "The bundled reference policy: text -> plan -> 3D tokens -> coloured mesh" in row  # one line
    assert "``" not in res.stdout and ":class:" not in res.stdout
    res = subprocess.run([sys.executable, "-m", "mme3dr.cli", "presets"], capture_output=True, text=True)
    assert "ar3d-r1-compat" in res.stdout


def test_the_cli_starts_without_heavy_imports():
    """An error or a listing never imports torch, trimesh or datasets (the CLI used to take 6 s to print an error)."""
    import subprocess

    code = ("import sys; from typer.testing import CliRunner; from mme3dr.cli import app; "
            "r = CliRunner().invoke(app, ['generate', '--model', 'nothere', '--out', 'x']); "
            "r2 = CliRunner().invoke(app, ['models']); "
            "print(r.exit_code, r2.exit_code, sorted(m for m in ('torch', 'trimesh', 'datasets') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.split() == ["2", "0", "[]"], res.stdout + res.stderr
