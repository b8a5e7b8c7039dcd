"""The geometry metric over worker processes (issue 14, item 2): same records, same order, same values."""

import json
import shutil

import trimesh

import mme3dr.processes
from mme3dr.adapters import Generator, ModelSpec
from mme3dr.data import load_benchmark
from mme3dr.generation import generate_run
from mme3dr.render.presets import get_preset
from mme3dr.scoring import score_run

UNRENDERED = get_preset("canonical").with_overrides(resolution=48, n_views=3)  # geometry reads the mesh only


class Shapes(Generator):
    """Different shapes per prompt (one with a floating part), and one file that is not a mesh."""

    def generate_one(self, request):
        k = int(request.prompt_id[-3:]) + (3 if request.prompt_id.startswith("mechanical") else 0)  # 1..6
        path = request.output_dir / "mesh.ply"
        if k == 5:
            path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\nend_header\n\x00\x01")
            return path
        shapes = {1: trimesh.creation.box(extents=(1, 0.3, 0.6)),
                  2: trimesh.creation.icosphere(subdivisions=2),
                  3: trimesh.util.concatenate([trimesh.creation.box(extents=(1, 1, 0.2)),  # a floating part
                                               trimesh.creation.box(extents=(0.3, 0.3, 0.3)).apply_translation([0, 0, 0.8])]),
                  4: trimesh.creation.cone(radius=0.5, height=1.0),
                  6: trimesh.creation.cylinder(radius=0.2, height=1.5)}
        shapes[k].export(path)
        return path


def _records(run):
    """The run's score records without their time taken, the run folder in messages written as RUN."""
    text = (run / "scores.jsonl").read_text().replace(json.dumps(str(run))[1:-1], "RUN")
    rows = [json.loads(line) for line in text.splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def test_geometry_over_two_processes_writes_the_serial_records(tmp_path, monkeypatch):
    prompts = load_benchmark(categories=["spatial", "mechanical"], limit=6)
    serial = tmp_path / "serial"
    generate_run(Shapes(), prompts, serial, model_spec=ModelSpec("shapes"), progress=False)
    pooled = tmp_path / "pooled"
    shutil.copytree(serial, pooled)
    pools = []
    real_pool = mme3dr.processes.spawn_pool

    def counting_pool(workers, *args, **kwargs):
        pools.append(workers)
        return real_pool(workers, *args, **kwargs)

    monkeypatch.setattr(mme3dr.processes, "spawn_pool", counting_pool)

    one = score_run(serial, ["geometry"], UNRENDERED, progress=False, workers=1)
    assert pools == []  # one worker: scored in this process
    two = score_run(pooled, ["geometry"], UNRENDERED, progress=False, workers=2)
    assert pools == [2]
    assert one.scored == two.scored == {"geometry": len(prompts) - 1}
    [(bad_id, message)] = two.errors["geometry"]  # the file that is not a mesh: recorded, the others go on
    assert bad_id == "mechanical-002" and "AssetError" in message
    rows = _records(pooled)
    assert rows == _records(serial)  # same order, every value equal (the time taken aside)
    assert [r["prompt_id"] for r in rows] == [p.id for p in prompts]
    assert len({json.dumps(r["values"], sort_keys=True) for r in rows if not r["error"]}) == len(prompts) - 1

    again = score_run(pooled, ["geometry"], UNRENDERED, progress=False, workers=2)  # finished: nothing to score
    assert again.skipped["geometry"] == len(prompts) - 1 and again.scored["geometry"] == 0
    assert pools == [2]  # only the failed asset is scored again: one item, in this process
    assert _records(pooled) == _records(serial)


def test_workers_option_reaches_the_scoring_stage(tmp_path, monkeypatch):
    """`score -j N` and `evaluate -j N` pass N on; without -j, scoring takes DEFAULTS.score_workers and
    rendering DEFAULTS.render_workers."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import mme3dr.evaluate
    import mme3dr.scoring
    from mme3dr.cli import app
    from mme3dr.defaults import DEFAULTS
    from mme3dr.scoring import ScoreSummary

    seen = []
    monkeypatch.setattr(mme3dr.scoring, "score_run", lambda *a, **k: seen.append(k["workers"]) or ScoreSummary())
    monkeypatch.setattr(mme3dr.evaluate, "evaluate",
                        lambda *a, **k: seen.append((a[11], k["score_workers"])) or SimpleNamespace(lines=lambda: []))
    runner = CliRunner()
    for args in (["score", tmp_path, "-m", "geometry", "-j", "3"], ["score", tmp_path, "-m", "geometry"],
                 ["evaluate", "--model", "folder", "-a", f"root={tmp_path}", "-o", tmp_path / "run", "--metrics",
                  "geometry", "-j", "3"],
                 ["evaluate", "--model", "folder", "-a", f"root={tmp_path}", "-o", tmp_path / "run", "--metrics",
                  "geometry"]):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
    assert seen == [3, DEFAULTS.score_workers, (3, 3), (DEFAULTS.render_workers, DEFAULTS.score_workers)]


def test_rendering_processes_default_to_defaults_render_workers(tmp_path, monkeypatch):
    """Every entry point that renders takes DEFAULTS.render_workers when no -j is given (it was a hard-coded 1)."""
    import dataclasses
    import inspect
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import mme3dr.cli
    import mme3dr.evaluate
    from mme3dr.defaults import DEFAULTS
    from mme3dr.render.jobs import run_jobs
    from mme3dr.render.references import build_references
    from mme3dr.render.runs import render_run

    for fn in (run_jobs, render_run, build_references, mme3dr.evaluate.evaluate):
        assert inspect.signature(fn).parameters["workers"].default == DEFAULTS.render_workers, fn.__name__
    for command in (mme3dr.cli.render, mme3dr.cli.references_build):  # the options' defaults (`--help`)
        assert inspect.signature(command).parameters["workers"].default == DEFAULTS.render_workers, command
    seen = []
    monkeypatch.setattr(mme3dr.cli, "DEFAULTS", dataclasses.replace(DEFAULTS, render_workers=5))
    monkeypatch.setattr(mme3dr.evaluate, "evaluate",
                        lambda *a, **k: seen.append(a[11]) or SimpleNamespace(lines=lambda: []))
    res = CliRunner().invoke(mme3dr.cli.app, ["evaluate", "--model", "folder", "-a", f"root={tmp_path}", "-o",
                                              str(tmp_path / "run"), "--metrics", "geometry"])
    assert res.exit_code == 0, res.output
    assert seen == [5]
