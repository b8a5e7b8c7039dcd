"""`mme3dr evaluate`, reports and the paper tables, on the CPU with no downloads (folder/command adapters +
geometry metrics)."""

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from mme3dr.cli import app
from mme3dr.data import load_benchmark
from mme3dr.evaluate import evaluate
from mme3dr.render.presets import get_preset
from mme3dr.runlock import RunLockedError, run_lock

PRESET = get_preset("canonical").with_overrides(resolution=48, n_views=4)
LIMIT = 8


def make_assets(folder: Path, skip: int = 3) -> list[str]:
    """Vertex-coloured meshes named by prompt id; prompt number ``skip`` has none (a failed generation)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [r.id for r in load_benchmark(limit=LIMIT)]
    rng = np.random.default_rng(0)
    for i, pid in enumerate(ids):
        if i == skip:
            continue
        m = [trimesh.creation.box(extents=(1, 0.6, 0.3 + 0.1 * i)), trimesh.creation.icosphere(subdivisions=2),
             trimesh.util.concatenate([trimesh.creation.box(extents=(1, 1, 0.2)),
                                       trimesh.creation.box(extents=(0.3, 0.3, 0.3)).apply_translation([0, 0, 0.8])])][i % 3]
        m.visual.vertex_colors = np.tile(np.r_[rng.integers(40, 255, 3), 255], (len(m.vertices), 1))
        m.export(folder / f"{pid}.glb")
    return ids


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    return folder, make_assets(folder)


def test_evaluate_folder_geometry_end_to_end(assets, tmp_path):
    folder, ids = assets
    run = tmp_path / "RUN"
    s = evaluate("folder", run, {"root": str(folder)}, ["geometry"], limit=LIMIT, preset=PRESET, progress=False)
    assert s.generation.generated == LIMIT - 1 and s.generation.failed == 1
    assert s.render.rendered == LIMIT - 1 and s.score.scored["geometry"] == LIMIT - 1
    info = json.loads((run / "run.json").read_text())
    for key in ("toolkit_version", "git_commit", "packages", "hardware", "model", "seed", "preset", "metric_configs",
                "timings", "prompts"):
        assert key in info, key
    assert info["model"] == {"name": "folder", "args": {"root": str(folder)}} and info["preset"]["hash"] == PRESET.hash
    assert set(info["timings"]) == {"generate", "render", "score", "report"}
    assert info["metric_configs"]["geometry"]["config_hash"]
    board = list(csv.DictReader(io.StringIO((run / "report" / "leaderboard.csv").read_text())))
    assert len(board) == 1 and float(board[0]["success:micro"]) == pytest.approx((LIMIT - 1) / LIMIT)
    assert float(board[0]["watertight:micro"]) == 1.0 and float(board[0]["floating_area:micro"]) > 0
    again = evaluate("folder", run, {"root": str(folder)}, ["geometry"], limit=LIMIT, preset=PRESET, progress=False)
    assert again.work_done == 0  # a finished run does no work


SLOW_COPY = textwrap.dedent("""
    import os, shutil, sys, time
    src, pid, out, pids = sys.argv[1:]
    open(os.path.join(pids, str(os.getpid())), "w").close()
    time.sleep(0.4)
    shutil.copy(f"{src}/{pid}.glb", out)
""")  # a slow generator that records its pid: copies the prepared mesh, or fails when there is none


def _cli_evaluate(folder, run, script, pids):
    return [sys.executable, "-m", "mme3dr.cli", "evaluate", "--model", "command", "--model-arg",
            f"cmd={sys.executable} {script} {folder} {{prompt_id}} {{output}} {pids}", "--metrics", "geometry",
            "--limit", str(LIMIT), "--resolution", "48", "--out", str(run), "--no-progress"]


@pytest.fixture(scope="module")
def uninterrupted(assets, tmp_path_factory):
    """The CLI evaluate of the slow command generator, run once without interruption."""
    folder, _ = assets
    base = tmp_path_factory.mktemp("uninterrupted")
    (base / "slow_copy.py").write_text(SLOW_COPY)
    (base / "pids").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(_cli_evaluate(folder, base / "FULL", base / "slow_copy.py", base / "pids"), check=True, env=env,
                   capture_output=True, timeout=600)
    return base / "FULL", base / "slow_copy.py"


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


#: When to SIGKILL mme3dr: a condition on the run folder, polled; the kill lands at that moment or a little later.
MOMENTS = {
    "generate": lambda run: (run / "generations.jsonl").exists() and
    len((run / "generations.jsonl").read_text().splitlines()) >= 3,
    "render": lambda run: (run / "renders").exists() and any((run / "renders").rglob("*.png")),
    "score": lambda run: (run / "scores.jsonl").exists(),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(assets, uninterrupted, moment, tmp_path):
    """SIGKILL of mme3dr alone (as the OOM killer or a scheduler would), not of its process group: the generator
    program dies with it, and the same command then finishes with the uninterrupted run's results, with no manual
    step; a third call does no work."""
    folder, ids = assets
    full, script = uninterrupted
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed, pids = tmp_path / "KILLED", tmp_path / "pids"
    pids.mkdir()
    proc = subprocess.Popen(_cli_evaluate(folder, killed, script, pids), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not MOMENTS[moment](killed):
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the moment to kill it"
    proc.kill()
    proc.wait()
    log = killed / "generations.jsonl"
    n_before = len(log.read_text().splitlines()) if log.exists() else 0
    if moment == "generate":
        assert 3 <= n_before < LIMIT  # killed in the middle of the generation stage
    if sys.platform.startswith("linux"):  # the generator programs died with mme3dr
        generators = [int(p.name) for p in pids.iterdir()]
        while time.time() < deadline and any(_running(p) for p in generators):
            time.sleep(0.01)
        assert not any(_running(p) for p in generators)
    res = subprocess.run(_cli_evaluate(folder, killed, script, pids), env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    if moment == "generate":
        assert f"{LIMIT - n_before} generated" in res.stderr or f"{LIMIT - n_before - 1} generated" in res.stderr

    def scores(run):
        rows = [json.loads(l) for l in (run / "scores.jsonl").read_text().splitlines()]
        keys = [(r["prompt_id"], r["metric"]) for r in rows]
        assert len(keys) == len(set(keys))  # no duplicate records
        return {(r["prompt_id"], r["metric"]): (r["values"], r["asset_sha256"]) for r in rows}

    assert scores(killed) == scores(full) and len(scores(full)) == LIMIT - 1
    assert (killed / "report" / "leaderboard.csv").read_text() == (full / "report" / "leaderboard.csv").read_text()
    views = sorted(p.relative_to(full) for p in (full / "renders").rglob("[0-9][0-9][0-9].png"))
    assert views == sorted(p.relative_to(killed) for p in (killed / "renders").rglob("[0-9][0-9][0-9].png"))
    assert all((full / v).read_bytes() == (killed / v).read_bytes() for v in views)  # the same pixels
    gens = [json.loads(l) for l in (killed / "generations.jsonl").read_text().splitlines()]
    assert sorted(g["prompt_id"] for g in gens) == sorted(ids)
    assert not [p for p in killed.rglob("*") if ".mme3dr-tmp" in p.name]  # no temporary left behind
    again = subprocess.run(_cli_evaluate(folder, killed, script, pids), env=env, capture_output=True, text=True,
                           timeout=600)
    assert "0 generated, 0 failed" in again.stderr and "0 rendered" in again.stderr and "0 scored" in again.stderr


def test_a_second_writer_is_locked_out(tmp_path):
    run = tmp_path / "RUN"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mme3dr.runlock import run_lock\n"
                               f"with run_lock({str(run)!r}):\n print('held', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            with run_lock(run):
                pass
        res = CliRunner().invoke(app, ["generate", "--model", "folder", "--model-arg", f"root={tmp_path}",
                                       "--out", str(run), "--limit", "1"])
        assert res.exit_code == 2 and "another mme3dr process" in res.output
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run):  # released when the holder died
        with run_lock(run):  # re-entrant in one process
            pass


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs = [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.imgs += tag == "img" and dict(attrs).get("src", "").startswith("data:image/")


def test_report_of_two_runs(assets, tmp_path):
    folder, _ = assets
    a, b = tmp_path / "A", tmp_path / "B"
    evaluate("folder", a, {"root": str(folder)}, ["geometry"], limit=LIMIT, preset=PRESET, report=False, progress=False)
    evaluate("folder", b, {"root": str(folder), "up_axis": "y"}, ["geometry"], limit=4, preset=PRESET, report=False,
             progress=False)
    res = CliRunner().invoke(app, ["report", str(a), str(b), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    rep = tmp_path / "rep"
    board = list(csv.DictReader(io.StringIO((rep / "leaderboard.csv").read_text())))
    assert [r["run"] for r in board] == ["folder (A)", "folder (B)"]
    md = (rep / "leaderboard.md").read_text()
    assert "failures" in md and "### stable (higher is better)" in md and "95% CI" in md
    j = json.loads((rep / "leaderboard.json").read_text())
    assert set(j["leaderboard"]) == {"folder (A)", "folder (B)"} and "micro_worst" in j["leaderboard"]["folder (A)"]["stable"]
    for kind in ("radar", "bars", "dist"):
        assert (rep / "plots" / f"{kind}_stable.png").exists() and (rep / "plots" / f"{kind}_stable.svg").exists()
    page = _Collect()
    page.feed((rep / "report.html").read_text())
    assert "table" in page.tags and "script" in page.tags and page.imgs >= LIMIT - 1 + 4


def test_paper_prints_table4_and_a_run_beside_it(assets, tmp_path):
    shared = Path(__file__).resolve().parents[2] / "shared" / "paper" / "table4_main.csv"
    packaged = Path(__file__).resolve().parents[1] / "mme3dr" / "data" / "paper" / "table4_main.csv"
    rows = list(csv.DictReader(io.StringIO((shared if shared.exists() else packaged).read_text())))
    res = CliRunner().invoke(app, ["paper"])
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    for r in rows:
        assert any(r["benchmark"] in l and r["method"] in l and r["clip_score"] in l and r["kd_incep_x100"] in l
                   and r["kd_dinov2_x100"] in l and r["fd_incep"] in l for l in lines), r
    folder, _ = assets
    run = tmp_path / "RUN"
    evaluate("folder", run, {"root": str(folder)}, ["geometry"], limit=2, preset=PRESET, report=False, progress=False)
    from mme3dr.score_records import SetMetricRecord, SetScore

    kid = SetMetricRecord("kid", "inception", "h", "REF", SetScore("all", 2, 48, 40, 960, value=0.0005, se=0.0001,
                                                                 ci_low=0.0003, ci_high=0.0007, paper_value=0.002))
    (run / "set_scores.json").write_text(json.dumps({"kid": kid.to_json()}))
    res = CliRunner().invoke(app, ["paper", "--run", str(run), "--name", "mine"])
    assert res.exit_code == 0 and "MME-3DR (this toolkit)" in res.stdout and "d_kd_incep_x100" in res.stdout
    from mme3dr.report.paper import table4_with_runs

    t = table4_with_runs([run])
    ar3d = t[(t["benchmark"] == "MME-3DR") & (t["method"] == "AR3D-R1")].iloc[0]
    assert ar3d["d_kd_incep_x100"] == pytest.approx(0.2 - 0.194)  # the paper-style (pooled) value
    mine = t[t["method"] == "mine"] if "mine" in set(t["method"]) else t[t["benchmark"] == "MME-3DR (this toolkit)"]
    assert mine.iloc[0]["reference"] == "all (40 objects)" and mine.iloc[0]["gen_objects"] == 2
    res = CliRunner().invoke(app, ["paper", "--run", str(run), "--run", str(run), "--benchmark", "MME-3DR", "--markdown"])
    assert res.exit_code == 0 and res.stdout.count("| MME-3DR (this toolkit) |") == 2 and "d_clip" not in res.stdout
    assert "Toys4K" not in res.stdout and "| MME-3DR | AR3D-R1 | 28.5 |" in res.stdout
