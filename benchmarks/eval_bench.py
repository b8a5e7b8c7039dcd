"""Evaluation-stage timings on N prompts of a synthetic run: generate, render, score (per metric), report.

Writes N small meshes (12 to 5,120 faces: bumpy spheres, boxes, a table with a floating part, cones),
serves them through the ``folder`` adapter, and runs each stage of ``mme3dr evaluate`` through the Python API in
one process, timing each. The geometry metric is scored once per ``--workers`` value, from an empty score log
each time, and the records of every worker count are checked to be equal (the ``seconds`` field aside). With
``--tiny-clip`` the CLIP score runs alone with the tests' tiny random CLIP (tests/tiny_clip.py): that measures the
stage around the model (decode, preprocessing, records), not a real ViT-B/32.

Image metrics (CLIP + KID + FID + KID-DINOv2 in one image pass) run when models are given: ``--tiny-models`` (the
tests' tiny CLIP/DINOv2 and a random full-size Inception), ``--random-weights`` (full-size models with random
weights, each saved to a local file or folder and loaded through the real loading path: open_clip ViT-B/32,
torch-fidelity's Inception-v3, DINOv2-base from transformers' default ``Dinov2Config``), or real weights
(``--clip-weights FILE``, ``--inception-weights FILE``, ``--dinov2-model DIR``). They compare against a synthetic
reference set (``--ref-objects`` meshes rendered with ``mme3dr references build``) whose features are computed and
cached before the clock starts. ``score`` then times the scoring stage as ``mme3dr score`` runs it on the generated
side: one ``score_run`` with the four image metrics and geometry (its worker processes, the most ``--workers``,
score beside the image pass): decoding, the three models, the records, geometry and the set-metric arithmetic;
``set_math`` is that arithmetic alone (features cached).
``total_s`` = render + model loading + score: the whole benchmark's work.

More prompts than the 249 of the benchmark are copies of them with new ids (``-r<k>`` suffix). ``--render-prompts
K`` renders only K prompts and copies their render folders to the others (cyclically), for runs whose rendering
would take too long; the JSON says so (``renders_copied``). Memory: peak host RSS (``ru_maxrss``) after each stage
and peak GPU memory. The scaling check of the image pass runs the benchmark twice, e.g.

    python benchmarks/eval_bench.py --prompts 249 --random-weights --device cuda -j 16 --workers 8 --out a.json
    python benchmarks/eval_bench.py --prompts 2490 --random-weights --device cuda -j 16 --workers 8 --out b.json

and compares ``peak_rss_mb`` (``python benchmarks/eval_bench.py --compare a.json b.json`` prints the ratio).
Prints one JSON object; ``--out FILE`` also writes it.

    python benchmarks/eval_bench.py --prompts 24 --workers 1 2 [--views 24] [--resolution 512] [--tiny-clip]
        [--out benchmarks/results/eval_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh


def make_meshes(folder: Path, prompt_ids: list[str], subdivisions: int = 4, offset: int = 0) -> None:
    """One mesh per prompt id, ``<id>.glb`` in ``folder``, cycling through four kinds of shape (the sphere has
    ``20 * 4**subdivisions`` faces: 5,120 at 4, 81,920 at 6). ``offset`` shifts the cycle and the sizes."""
    rng = np.random.default_rng(offset)
    folder.mkdir(parents=True, exist_ok=True)
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    for i, pid in enumerate(prompt_ids, start=offset):
        kind = i % 4
        if kind == 0:
            m = sphere.copy()
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


IMAGE_METRICS = ["clip", "kid", "fid", "kid_dinov2"]
TESTS = Path(__file__).resolve().parents[1] / "tests"


def synthetic_prompts(n: int, folder: Path):
    """The first ``n`` benchmark prompts (stratified); past 249, copies of the 249 with ids ``<id>-r<k>``."""
    from mme3dr.data import load_benchmark

    if n <= 249:
        return load_benchmark(limit=n)
    base = load_benchmark()
    rows = []
    for k in range(n):
        r = base[k % len(base)]
        copy = k // len(base)
        rows.append({**r.to_dict(), "id": r.id if copy == 0 else f"{r.id}-r{copy}"})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"prompts_{n}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return load_benchmark(source=path)


def reference_set(folder: Path, preset, n_objects: int, workers: int) -> Path:
    """A reference set of ``n_objects`` synthetic meshes spread over the five categories (``references build``)."""
    from mme3dr.categories import CATEGORIES
    from mme3dr.render.references import build_references

    meshes = folder / "ref_meshes"
    cats = list(CATEGORIES)
    for i in range(n_objects):
        make_meshes(meshes / cats[i % len(cats)], [f"ref{i:03d}"], subdivisions=3, offset=i + 1)
    build_references(folder / "REF", preset, meshes=meshes, workers=workers, progress=False)
    return folder / "REF"


def image_models(a, folder: Path):
    """(ScoreOptions, kind) for the image metrics from the command line ((None, None): no image models asked for)."""
    from mme3dr.metrics.specs import ScoreOptions

    folder.mkdir(parents=True, exist_ok=True)
    opts = dict(device=a.device, batch_size=a.batch_size)
    if a.decode_workers is not None:
        opts["decode_workers"] = a.decode_workers
    if a.tiny_models:
        sys.path.insert(0, str(TESTS))
        import tiny_clip
        import tiny_features

        return ScoreOptions(**opts, clip_model=tiny_clip.TINY_CLIP,
                            clip_pretrained=str(tiny_clip.tiny_clip_checkpoint(folder)),
                            inception_weights=str(tiny_features.random_inception_weights(folder / "inception.pth")),
                            dinov2_model=str(tiny_features.tiny_dinov2(folder / "dinov2"))), "tiny"
    if a.random_weights:
        return ScoreOptions(**opts, **random_full_size_models(folder)), "random full-size"
    if a.clip_weights or a.inception_weights or a.dinov2_model:
        if not (a.clip_weights and a.inception_weights and a.dinov2_model):
            raise SystemExit("give all three of --clip-weights, --inception-weights and --dinov2-model")
        return ScoreOptions(**opts, clip_weights=a.clip_weights, inception_weights=a.inception_weights,
                            dinov2_model=a.dinov2_model), "given weights"
    return None, None


def random_full_size_models(folder: Path) -> dict:
    """Full-size models with random weights, saved where the real loaders read them: open_clip ViT-B/32 (a
    state-dict file), torch-fidelity's Inception-v3 (Kaiming-initialised convolutions, a state-dict file) and
    DINOv2-base (transformers' default ``Dinov2Config``, ``save_pretrained``)."""
    import open_clip
    import torch
    from transformers import Dinov2Config, Dinov2Model

    sys.path.insert(0, str(TESTS))
    import tiny_features

    torch.manual_seed(0)
    clip = folder / "vit-b-32-random.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), clip)
    inception = tiny_features.random_inception_weights(folder / "inception-random.pth")
    Dinov2Model(Dinov2Config()).save_pretrained(folder / "dinov2-base-random")
    return dict(clip_model="ViT-B-32", clip_pretrained=str(clip), inception_weights=str(inception),
                dinov2_model=str(folder / "dinov2-base-random"))


def copy_renders(run: Path, preset, from_ids: list[str], to_ids: list[str]) -> None:
    """Copy the render folders of ``from_ids`` to ``to_ids`` (cyclically), render records included."""
    base = run / "renders" / preset.tag
    for k, pid in enumerate(to_ids):
        shutil.copytree(base / from_ids[k % len(from_ids)], base / pid, dirs_exist_ok=True)


def gpu_peak_mb(device: str | None) -> float | None:
    import torch

    if device is None or not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _records(run: Path, metric: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows if r["metric"] == metric]


def _peak_rss_mb() -> dict[str, float]:
    """Peak resident set size (MiB) of this process and of the largest finished child (Linux: ru_maxrss in KiB)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return {"self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1),
            "largest_child": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale, 1)}


def cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its finished children (worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def compare(a_path: Path, b_path: Path) -> None:
    """Print the peak-RSS ratio of two benchmark results (the scaling check: more prompts, flat memory)."""
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    ra, rb = a["peak_rss_mb"]["self"], b["peak_rss_mb"]["self"]
    print(json.dumps({"prompts": [a["prompts"], b["prompts"]], "peak_rss_mb": [ra, rb], "ratio": round(rb / ra, 3),
                      "peak_gpu_mb": [a.get("peak_gpu_mb"), b.get("peak_gpu_mb")]}, indent=1))


def add_shared_options(ap: argparse.ArgumentParser) -> None:
    """The options eval_bench.py and evalpy_loop.py share: the synthetic assets and the image models."""
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--subdivisions", type=int, default=4, help="of the bumpy spheres (every 4th mesh)")
    models = ap.add_argument_group("image metrics (CLIP, KID, FID, KID-DINOv2)")
    models.add_argument("--tiny-models", action="store_true", help="the tests' tiny models (CPU)")
    models.add_argument("--random-weights", action="store_true", help="full-size models with random weights")
    models.add_argument("--clip-weights", default=None, help="ViT-B/32 checkpoint file")
    models.add_argument("--inception-weights", default=None, help="torch-fidelity Inception-v3 weights file")
    models.add_argument("--dinov2-model", default=None, help="DINOv2 folder (save_pretrained layout)")
    models.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    models.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: DEFAULTS)")
    models.add_argument("--decode-workers", type=int, default=None, help="view-decoding workers (default: DEFAULTS)")
    models.add_argument("--ref-objects", type=int, default=40, help="synthetic reference objects")
    models.add_argument("--image-metrics", default=",".join(IMAGE_METRICS),
                        help="clip first, then set metrics (e.g. clip,kid_dinov2 leaves Inception out on a CPU)")
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. how busy the machine was)")
    ap.add_argument("--out", type=Path, default=None)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_options(ap)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="geometry worker counts to time")
    ap.add_argument("--render-workers", "-j", type=int, default=None,
                    help="rendering processes (default: DEFAULTS.render_workers)")
    ap.add_argument("--render-prompts", type=int, default=None,
                    help="render only this many prompts and copy their renders to the others")
    ap.add_argument("--tiny-clip", action="store_true", help="also time the clip stage with the tests' tiny CLIP")
    ap.add_argument("--no-report", action="store_true", help="leave out the report stage")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"),
                    help="print the peak-RSS ratio of two results and exit")
    return ap


def write_result(result: dict, out: Path | None) -> None:
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=1)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def machine() -> dict:
    return {"node": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}


def generate_and_render(a, bench, preset, tmp: Path, result: dict) -> Path:
    """Synthetic meshes for ``bench`` served by the folder adapter, generated and rendered into ``tmp/RUN``."""
    from mme3dr.adapters import ModelSpec, create_generator
    from mme3dr.data import Benchmark
    from mme3dr.generation import generate_run
    from mme3dr.render.runs import render_run

    stages = result["stages_s"]
    assets, run = tmp / "assets", tmp / "RUN"
    make_meshes(assets, [r.id for r in bench], a.subdivisions)
    gen = create_generator("folder", root=str(assets))
    t = time.perf_counter()
    generate_run(gen, bench, run, model_spec=ModelSpec("folder", {"root": str(assets)}), progress=False)
    stages["generate"] = round(time.perf_counter() - t, 3)
    k = a.render_prompts if a.render_prompts and a.render_prompts < len(bench) else len(bench)
    t = time.perf_counter()
    if k < len(bench):  # render k prompts in a run of their own, copy their folders to every prompt
        seed = tmp / "SEED"
        generate_run(gen, Benchmark(bench.records[:k], bench.source, bench.location), seed,
                     model_spec=ModelSpec("folder", {"root": str(assets)}), progress=False)
        ren = render_run(seed, preset, workers=a.render_workers, progress=False)
        stages["render"] = round(time.perf_counter() - t, 3)
        ids = [r.id for r in bench]
        shutil.copytree(seed / "renders", run / "renders", dirs_exist_ok=True)
        copy_renders(run, preset, ids[:k], ids[k:])
        result["renders_copied"] = {"rendered_prompts": k, "copied_to": len(bench) - k,
                                    "note": "render_s is for the rendered prompts only"}
    else:
        cpu = cpu_seconds()
        ren = render_run(run, preset, workers=a.render_workers, progress=False)
        stages["render"] = round(time.perf_counter() - t, 3)
        result["cpu_s"]["render"] = round(cpu_seconds() - cpu, 1)
    result["render_images_per_s"] = round(ren.rendered * preset.n_views / stages["render"], 2)
    return run


def time_image_metrics(a, run: Path, preset, tmp: Path, result: dict, geometry_records: list[dict]) -> None:
    """Load the models, cache the reference features, then time the scoring stage on the run: CLIP + KID + FID +
    KID-DINOv2 + geometry in one ``score_run`` (``geometry_records``: what geometry scored alone, to compare)."""
    from mme3dr.scoring import SetInputs, build_metrics, fill_features, score_run

    opts, kind = image_models(a, tmp / "models")
    if opts is None:
        return
    stages = result["stages_s"]
    result["image_models"] = kind
    t = time.perf_counter()
    ref = reference_set(tmp, preset, a.ref_objects, a.render_workers)
    stages["reference_build_untimed"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    metrics = a.image_metrics.split(",")
    sets = [m for m in metrics if m != "clip"]
    built = build_metrics([*metrics, "geometry"], preset, ref, opts)
    stages["load_models"] = round(time.perf_counter() - t, 3)
    result["image_options"] = {"device": built.prompt["clip"].clip.device, "batch_size": opts.batch_size,
                               "decode_workers": opts.decode_workers}
    t = time.perf_counter()  # the reference side, cached before timing (as for any run after the first)
    ref_only = SetInputs.load(run, [], ref / preset.tag, preset, built.extractors, sets)
    fill_features(ref_only, built.extractors, opts, progress=False)
    stages["reference_features_untimed"] = round(time.perf_counter() - t, 3)
    (run / "scores.jsonl").unlink(missing_ok=True)
    _sync(opts.device)
    _reset_gpu_peak(opts.device)
    workers = max(a.workers)
    t, cpu = time.perf_counter(), cpu_seconds()  # the scoring stage as `mme3dr score` runs it: geometry beside the pass
    s = score_run(run, [*metrics, "geometry"], preset, ref, opts, progress=False, built=built, workers=workers)
    _sync(opts.device)
    stages["score"] = round(time.perf_counter() - t, 3)
    result["cpu_s"]["score"] = round(cpu_seconds() - cpu, 1)
    assert s.scored["clip"] == result["prompts"] and not s.errors["clip"], s.lines()
    assert s.scored["geometry"] == result["prompts"] and not s.errors["geometry"], s.lines()
    result["geometry_records_equal_in_the_scoring_stage"] = _records(run, "geometry") == geometry_records
    views = result["prompts"] * preset.n_views
    result["score_views_per_s"] = round(views / stages["score"], 1)
    result["peak_gpu_mb"] = gpu_peak_mb(opts.device or built.prompt["clip"].clip.device)
    result["peak_rss_after_stage_mb"]["score"] = _peak_rss_mb()["self"]
    t = time.perf_counter()  # features now cached: the set-metric arithmetic alone
    score_run(run, sets, preset, ref, opts, progress=False, built=built)
    stages["set_math"] = round(time.perf_counter() - t, 3)
    result["peak_rss_after_stage_mb"]["set_math"] = _peak_rss_mb()["self"]
    result["set_scores_overall"] = {m: r.overall.value for m, r in s.set_scores.items()}
    result["image_pass_parts"] = image_pass_parts(run, built, opts)
    result["peak_rss_after_stage_mb"]["image_pass_parts"] = _peak_rss_mb()["self"]


def image_pass_parts(run: Path, built, opts) -> dict:
    """Where the image pass spends its time: decoding alone (the views of every prompt through
    :func:`~mme3dr.metrics.views.stream_views`, no model), and each model alone on views decoded beforehand
    (at most 20 batches, the device synchronised), in images/s."""
    from mme3dr.metrics.views import stream_views

    models = {"clip": built.prompt["clip"].clip, **built.extractors}
    sizes = sorted({s for m in models.values() for s in m.sizes})
    groups = [sorted((d).glob("[0-9][0-9][0-9].png")) for d in sorted((run / "renders").glob("*/*")) if d.is_dir()]
    groups = [g for g in groups if g]
    keep, sample, n = 20 * opts.batch_size, [], 0  # only a sample is kept: memory stays flat
    t, first = time.perf_counter(), None
    device = opts.device or built.prompt["clip"].clip.device
    for grp in stream_views(groups, sizes, opts.decode_workers, device=device):
        first = first or round(time.perf_counter() - t, 3)
        n += len(grp.views)
        sample += grp.views[:keep - len(sample)]
    out = {"decode_images_per_s": round(n / (time.perf_counter() - t), 1), "decode_first_group_s": first}
    for name, model in models.items():
        model.embed(sample[:opts.batch_size])  # warm-up
        _sync(opts.device)
        t = time.perf_counter()
        model.embed(sample)
        _sync(opts.device)
        out[f"{name}_images_per_s"] = round(len(sample) / (time.perf_counter() - t), 1)
    return out


def _sync(device) -> None:
    import torch

    if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
        torch.cuda.synchronize()


def _reset_gpu_peak(device) -> None:
    import torch

    if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    a = parser().parse_args()
    if a.compare:
        compare(*a.compare)
        return
    from mme3dr.defaults import DEFAULTS
    from mme3dr.metrics.specs import ScoreOptions
    from mme3dr.render.presets import get_preset
    from mme3dr.report import build_report
    from mme3dr.scoring import score_run

    a.render_workers = a.render_workers or DEFAULTS.render_workers
    preset = get_preset(DEFAULTS.preset).with_overrides(resolution=a.resolution, n_views=a.views)
    result: dict = {"machine": machine(), "prompts": a.prompts, "sphere_subdivisions": a.subdivisions,
                    "views": preset.n_views, "resolution": preset.resolution, "render_workers": a.render_workers,
                    "geometry_workers": a.workers, "note": a.note, "renders_copied": None, "stages_s": {},
                    "peak_rss_after_stage_mb": {}, "cpu_s": {}}
    stages, rss = result["stages_s"], result["peak_rss_after_stage_mb"]
    with tempfile.TemporaryDirectory() as tmp:
        bench = synthetic_prompts(a.prompts, Path(tmp) / "prompts")
        result["prompts"] = len(bench)
        run = generate_and_render(a, bench, preset, Path(tmp), result)
        rss["render"] = _peak_rss_mb()["self"]

        geometry = {}
        for w in a.workers:
            (run / "scores.jsonl").unlink(missing_ok=True)
            t = time.perf_counter()
            s = score_run(run, ["geometry"], preset, progress=False, workers=w)
            stages[f"score_geometry_workers_{w}"] = round(time.perf_counter() - t, 3)
            assert s.scored["geometry"] == len(bench), s.lines()
            geometry[w] = _records(run, "geometry")
        result["geometry_records_equal_across_workers"] = all(r == geometry[a.workers[0]] for r in geometry.values())
        rss["geometry"] = _peak_rss_mb()["self"]

        if a.tiny_clip:
            sys.path.insert(0, str(TESTS))
            import tiny_clip

            opts = ScoreOptions(device="cpu", clip_model=tiny_clip.TINY_CLIP,
                                clip_pretrained=str(tiny_clip.tiny_clip_checkpoint(Path(tmp))))
            t = time.perf_counter()
            s = score_run(run, ["clip"], preset, options=opts, progress=False)
            stages["score_clip_tiny"] = round(time.perf_counter() - t, 3)
            assert s.scored["clip"] == len(bench), s.lines()
            result["clip_tiny_images_per_s"] = round(len(bench) * preset.n_views / stages["score_clip_tiny"], 2)
            (run / "scores.jsonl").unlink(missing_ok=True)

        time_image_metrics(a, run, preset, Path(tmp), result, geometry[max(a.workers)])
        if "score" in stages:
            result["total_s"] = round(stages["render"] + stages["load_models"] + stages["score"], 3)

        if not a.no_report:
            t = time.perf_counter()
            build_report([run], Path(tmp) / "report")
            stages["report"] = round(time.perf_counter() - t, 3)
    result["peak_rss_mb"] = _peak_rss_mb()
    write_result(result, a.out)


if __name__ == "__main__":
    main()
