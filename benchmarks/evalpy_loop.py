"""The loop structure of the authors' released eval.py, on the assets of eval_bench.py, for a speed comparison.

For each generated object, one after another in this process: load CLIP, DINOv2 and Inception afresh (the
project's own loaders, :func:`mme3dr.scoring.build_metrics`), render its views serially (the project's
renderer, :func:`mme3dr.render.jobs.render_one`), score that object alone (CLIP through
:class:`~mme3dr.metrics.clip.ClipScore`, Inception and DINOv2 features through the extractors, each reading the
views from disk again), then the set metrics at the end (object-aware KID, pooled KID and FID overall, as
:func:`mme3dr.scoring.score_sets` computes them, on the same device). Only the loop structure differs from
``mme3dr score``: the same models, the same preprocessing and the same metric code. The reference features are
computed before the clock starts, as eval_bench.py does. Prints JSON with the total seconds and each object's
seconds.

    python benchmarks/evalpy_loop.py --prompts 249 --random-weights --device cuda [--out FILE]

Options are eval_bench.py's shared ones (``--prompts``, ``--views``, ``--resolution``, the model options).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_bench  # noqa: E402

SET_KINDS = {"kid": "inception", "fid": "inception", "kid_dinov2": "dinov2"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    eval_bench.add_shared_options(ap)
    a = ap.parse_args()

    from mme3dr.adapters import ModelSpec, create_generator
    from mme3dr.defaults import DEFAULTS
    from mme3dr.generation import generate_run, read_generations
    from mme3dr.metrics.base import ScoreItem
    from mme3dr.metrics.features import default_device
    from mme3dr.metrics.fidelity import default_subset_size, fid_by_object, kid_by_object, kid_from_features
    from mme3dr.render.jobs import RenderJob, render_one
    from mme3dr.render.presets import get_preset
    from mme3dr.render.renderer import get_renderer
    from mme3dr.scoring import build_metrics

    preset = get_preset(DEFAULTS.preset).with_overrides(resolution=a.resolution, n_views=a.views)
    result: dict = {"machine": eval_bench.machine(), "structure": "eval.py loop", "views": preset.n_views,
                    "resolution": preset.resolution, "note": a.note, "per_object_s": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bench = eval_bench.synthetic_prompts(a.prompts, tmp / "prompts")
        result["prompts"] = len(bench)
        opts, kind = eval_bench.image_models(a, tmp / "models")
        if opts is None:
            raise SystemExit("give the image models: --tiny-models, --random-weights or the three weight options")
        result["image_models"] = kind
        assets, run = tmp / "assets", tmp / "RUN"
        eval_bench.make_meshes(assets, [r.id for r in bench], a.subdivisions)
        generate_run(create_generator("folder", root=str(assets)), bench, run,
                     model_spec=ModelSpec("folder", {"root": str(assets)}), progress=False)
        ref = eval_bench.reference_set(tmp, preset, a.ref_objects, 1)
        names = ["clip", *SET_KINDS]
        built = build_metrics(names, preset, ref, opts)  # the reference features, before the clock starts
        ref_feats, ref_labels = {k: [] for k in built.extractors}, []
        for folder in sorted(p for p in (ref / preset.tag).iterdir() if p.is_dir() and p.name != "features"):
            views = ScoreItem(folder.name, "", "", render_dir=folder).views()
            for k, ext in built.extractors.items():
                ref_feats[k].append(ext(views))
            ref_labels += [folder.name] * len(views)
        ref_feats = {k: np.concatenate(v) for k, v in ref_feats.items()}
        del built

        gens = read_generations(run)
        renderer = get_renderer()
        gen_feats, gen_labels, clip = {k: [] for k in ref_feats}, [], []
        start = time.perf_counter()
        for rec in bench:
            t = time.perf_counter()
            built = build_metrics(names, preset, ref, opts)  # CLIP, Inception and DINOv2 loaded afresh
            folder = run / "renders" / preset.tag / rec.id
            g = gens[rec.id]
            render_one(RenderJob(rec.id, str(g.resolved_asset(run)), str(folder), g.up_axis), preset, renderer)
            item = ScoreItem(rec.id, rec.category, rec.prompt, render_dir=folder)
            clip.append(built.prompt["clip"].score(item).values["clip"])
            for k, ext in built.extractors.items():
                gen_feats[k].append(ext(item.views()))  # each metric reads the views again
            gen_labels += [rec.id] * preset.n_views
            del built
            result["per_object_s"].append(round(time.perf_counter() - t, 4))
        t = time.perf_counter()
        gen_feats = {k: np.concatenate(v) for k, v in gen_feats.items()}
        gl, rl = np.array(gen_labels), np.array(ref_labels)
        device = opts.device or default_device()  # where score_sets computes them
        sets = {}
        for name, k in SET_KINDS.items():
            g, r = gen_feats[k], ref_feats[k]
            if name.startswith("kid"):
                size = default_subset_size(len(g), len(r))
                sets[name] = {"value": kid_by_object(g, r, gl, rl, device=device).value,
                              "paper_value": kid_from_features(g, r, subset_size=size, device=device)[0]}
            else:
                sets[name] = {"value": fid_by_object(g, r, gl, rl, device=device).value}
        result["set_metrics_s"] = round(time.perf_counter() - t, 3)
        result["total_s"] = round(time.perf_counter() - start, 3)
        result["clip_mean"] = float(np.mean(clip))
        result["set_scores_overall"] = sets
        result["renderer"] = type(renderer).__name__
    result["mean_object_s"] = round(float(np.mean(result["per_object_s"])), 4)
    eval_bench.write_result(result, a.out)


if __name__ == "__main__":
    main()
