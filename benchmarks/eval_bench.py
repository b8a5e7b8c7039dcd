"""Evaluation-stage timings on N prompts of a synthetic run: generate, render, score (per metric), report.

Writes N small meshes (12 to 5,120 faces: bumpy spheres, boxes, a table with a floating part, cones),
serves them through the ``folder`` adapter, and runs each stage of ``mme3dr evaluate`` through the Python API in
one process, timing each. The geometry metric is scored once per ``--workers`` value, from an empty score log
each time, and the records of every worker count are checked to be equal (the ``seconds`` field aside). With
``--tiny-clip`` the CLIP score runs with the tests' tiny random CLIP (tests/tiny_clip.py): that measures the
stage around the model (decode, preprocessing, records), not a real ViT-B/32. KID/FID need a reference set and
real-size feature extractors and are not run here. Prints one JSON object; ``--out FILE`` also writes it.

    python benchmarks/eval_bench.py --prompts 24 --workers 1 2 [--views 24] [--resolution 512] [--tiny-clip]
        [--out benchmarks/results/eval_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh


def make_meshes(folder: Path, prompt_ids: list[str], subdivisions: int = 4) -> None:
    """One mesh per prompt id, ``<id>.glb`` in ``folder``, cycling through four kinds of shape (the sphere has
    ``20 * 4**subdivisions`` faces: 5,120 at 4, 81,920 at 6)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i, pid in enumerate(prompt_ids):
        kind = i % 4
        if kind == 0:
            m = trimesh.creation.icosphere(subdivisions=subdivisions)
            m.vertices += m.vertex_normals * 0.05 * np.sin(5 * m.vertices[:, :1] + i)
        elif kind == 1:
            m = trimesh.creation.box(extents=(1, 0.3 + 0.05 * i, 0.6))
        elif kind == 2:  # a table top with a floating block above it
            m = trimesh.util.concatenate([trimesh.creation.box(extents=(1, 1, 0.1)),
                                          trimesh.creation.box(extents=(0.2, 0.2, 0.2)).apply_translation([0, 0, 0.6])])
        else:
            m = trimesh.creation.cone(radius=0.5, height=1.0 + 0.02 * i, sections=64)
        m.visual.vertex_colors = np.tile(np.r_[rng.integers(40, 255, 3), 255], (len(m.vertices), 1))
        m.export(folder / f"{pid}.glb")


def _records(run: Path, metric: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows if r["metric"] == metric]


def _peak_rss_mb() -> dict[str, float]:
    """Peak resident set size (MiB) of this process and of the largest finished child (Linux: ru_maxrss in KiB)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return {"self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
            "largest_child": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="geometry worker counts to time")
    ap.add_argument("--render-workers", type=int, default=1)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--subdivisions", type=int, default=4, help="of the bumpy spheres (every 4th mesh)")
    ap.add_argument("--tiny-clip", action="store_true", help="also time the clip stage with the tests' tiny CLIP")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. how busy the machine was)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    from mme3dr.adapters import ModelSpec, create_generator
    from mme3dr.data import load_benchmark
    from mme3dr.defaults import DEFAULTS
    from mme3dr.generation import generate_run
    from mme3dr.metrics.specs import ScoreOptions
    from mme3dr.render.presets import get_preset
    from mme3dr.render.runs import render_run
    from mme3dr.report import build_report
    from mme3dr.scoring import score_run

    preset = get_preset(DEFAULTS.preset).with_overrides(resolution=a.resolution, n_views=a.views)
    bench = load_benchmark(limit=a.prompts)
    result: dict = {
        "machine": {"node": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    "load_average_start": [round(x, 2) for x in os.getloadavg()]},
        "prompts": len(bench), "sphere_subdivisions": a.subdivisions, "views": preset.n_views, "resolution": preset.resolution,
        "render_workers": a.render_workers, "geometry_workers": a.workers, "note": a.note, "stages_s": {}}
    stages = result["stages_s"]
    with tempfile.TemporaryDirectory() as tmp:
        assets, run = Path(tmp) / "assets", Path(tmp) / "RUN"
        make_meshes(assets, [r.id for r in bench], a.subdivisions)
        gen = create_generator("folder", root=str(assets))
        t = time.perf_counter()
        generate_run(gen, bench, run, model_spec=ModelSpec("folder", {"root": str(assets)}), progress=False)
        stages["generate"] = round(time.perf_counter() - t, 3)

        t = time.perf_counter()
        ren = render_run(run, preset, workers=a.render_workers, progress=False)
        stages["render"] = round(time.perf_counter() - t, 3)
        result["render_images_per_s"] = round(ren.rendered * preset.n_views / stages["render"], 2)

        geometry = {}
        for w in a.workers:
            (run / "scores.jsonl").unlink(missing_ok=True)
            t = time.perf_counter()
            s = score_run(run, ["geometry"], preset, progress=False, workers=w)
            stages[f"score_geometry_workers_{w}"] = round(time.perf_counter() - t, 3)
            assert s.scored["geometry"] == len(bench), s.lines()
            geometry[w] = _records(run, "geometry")
        result["geometry_records_equal_across_workers"] = all(r == geometry[a.workers[0]] for r in geometry.values())

        if a.tiny_clip:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            import tiny_clip

            opts = ScoreOptions(device="cpu", clip_model=tiny_clip.TINY_CLIP,
                                clip_pretrained=str(tiny_clip.tiny_clip_checkpoint(Path(tmp))))
            t = time.perf_counter()
            s = score_run(run, ["clip"], preset, options=opts, progress=False)
            stages["score_clip_tiny"] = round(time.perf_counter() - t, 3)
            assert s.scored["clip"] == len(bench), s.lines()
            result["clip_tiny_images_per_s"] = round(len(bench) * preset.n_views / stages["score_clip_tiny"], 2)

        t = time.perf_counter()
        build_report([run], Path(tmp) / "report")
        stages["report"] = round(time.perf_counter() - t, 3)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=1)
    print(text)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
