"""Render throughput: views per second at 512x512 for meshes of about 20k and 200k faces.

Measures ``Renderer.render`` (pixels into memory: scene set-up once per asset, then every view rendered, read
back and finished to RGBA) and the full per-asset job (``render_one``: load the file, render, write PNGs, contact
sheet and transforms.json), in one process and in several processes at once. Prints one JSON object.

    python benchmarks/render_bench.py [--views 24] [--repeats 5] [--procs 1 4] [--backend egl]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh


def make_meshes(folder: Path) -> dict[str, Path]:
    """A bumpy vertex-coloured icosphere (20,480 faces) and a bumpy UV sphere (about 200k faces)."""
    rng = np.random.default_rng(0)
    out = {}
    for name, mesh in (("20k", trimesh.creation.icosphere(subdivisions=5)),
                       ("200k", trimesh.creation.uv_sphere(count=[224, 224]))):
        n = mesh.vertex_normals
        mesh.vertices += n * 0.03 * np.sin(8 * mesh.vertices[:, :1]) * np.cos(6 * mesh.vertices[:, 1:2])
        mesh.visual.vertex_colors = rng.integers(0, 255, (len(mesh.vertices), 4), dtype=np.uint8) | 255
        path = folder / f"mesh_{name}.ply"
        mesh.export(path)
        out[name] = path
    return out


def bench_process(args: tuple) -> dict:
    path, views, repeats, backend, out_dir = args
    from mme3dr.assets import load_asset
    from mme3dr.render.jobs import RenderJob, render_one
    from mme3dr.render.presets import get_preset
    from mme3dr.render.renderer import get_renderer

    preset = get_preset("canonical").with_overrides(n_views=views)
    asset = load_asset(path)
    r = get_renderer(backend)
    r.render(asset, preset)  # warm-up: context, shaders
    t = time.perf_counter()
    for _ in range(repeats):
        r.render(asset, preset)
    render_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(repeats):
        res = render_one(RenderJob(f"x{i}", str(path), f"{out_dir}/job{os.getpid()}_{i}"), preset, r)
        assert res.ok, res.error
    job_s = time.perf_counter() - t
    backend = r.backend
    return {"render_s": render_s, "job_s": job_s, "views": views * repeats, "faces": asset.n_faces, "backend": backend}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--backend", default=None)
    a = ap.parse_args()
    results = {"machine": platform.node(), "cpu_count": os.cpu_count(), "resolution": 512, "views_per_asset": a.views,
               "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        meshes = make_meshes(Path(tmp))
        ctx = mp.get_context("spawn")
        for name, path in meshes.items():
            for procs in a.procs:
                work = [(str(path), a.views, a.repeats, a.backend, tmp)] * procs
                wall = time.perf_counter()
                with ctx.Pool(procs) as pool:
                    per = pool.map(bench_process, work)
                wall = time.perf_counter() - wall
                views = sum(p["views"] for p in per)
                results["runs"].append({
                    "mesh": name, "faces": per[0]["faces"], "processes": procs, "backend": per[0]["backend"],
                    # each process: views / its own time; total: sum over processes running at the same time
                    "render_views_per_s_per_process": round(float(np.mean([p["views"] / p["render_s"] for p in per])), 1),
                    "render_views_per_s_total": round(sum(p["views"] / p["render_s"] for p in per), 1),
                    "job_views_per_s_per_process": round(float(np.mean([p["views"] / p["job_s"] for p in per])), 1),
                    "job_views_per_s_total": round(sum(p["views"] / p["job_s"] for p in per), 1),
                    "views_rendered": views * 2, "wall_s": round(wall, 2)})
                print(json.dumps(results["runs"][-1]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
