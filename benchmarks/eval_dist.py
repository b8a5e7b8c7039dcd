"""`mme3dr evaluate` through torchrun on 1 and on N GPUs: wall time per stage, speed-up, and whether the scores agree.

Builds what ``eval_bench.py`` builds (synthetic meshes served by the ``folder`` adapter, a synthetic reference set,
full-size models with random weights saved where the real loaders read them), warms the reference features with a
2-prompt run (so every timed run finds them cached), then for each ``--nproc`` runs

    torchrun --standalone --nproc_per_node N -m mme3dr evaluate --model folder -a root=MESHES --metrics METRICS
        --reference REF --clip-model ViT-B-32 --clip-pretrained FILE --inception-weights FILE --dinov2-model DIR
        --limit PROMPTS -j WORKERS --out RUN_N --no-report

and reads the stage timings from each run's ``run.json``. Scores: per-prompt values of the N-process runs against the
1-process run (largest absolute difference) and the set metrics. Prints one JSON object; ``--out FILE`` writes it.

    python benchmarks/eval_dist.py --prompts 249 --nproc 1 2 -j 8 --out benchmarks/results/eval_dist_h200x2.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from eval_bench import machine, make_meshes, random_full_size_models, reference_set  # noqa: E402


def evaluate_cmd(nproc: int, run: Path, meshes: Path, ref: Path, models: dict, a, limit: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "mme3dr",
            "evaluate", "--model", "folder", "--model-arg", f"root={meshes}", "--metrics", a.metrics, "--reference",
            str(ref), "--clip-model", models["clip_model"], "--clip-pretrained", models["clip_pretrained"],
            "--inception-weights", models["inception_weights"], "--dinov2-model", models["dinov2_model"],
            "--limit", str(limit), "-j", str(a.workers), "--out", str(run), "--no-report", "--no-progress"]


def values(run: Path) -> dict[tuple[str, str, str], float]:
    out = {}
    for line in (run / "scores.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k, v in (r.get("values") or {}).items():
            if isinstance(v, (int, float)):
                out[(r["prompt_id"], r["metric"], k)] = float(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=249)
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--workers", "-j", type=int, default=8, help="render / geometry processes of each rank")
    ap.add_argument("--metrics", default="clip,kid,fid,kid_dinov2,geometry")
    ap.add_argument("--ref-objects", type=int, default=40)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    from mme3dr.data import load_benchmark
    from mme3dr.defaults import DEFAULTS
    from mme3dr.render.presets import get_preset

    result: dict = {"machine": machine(), "prompts": a.prompts, "metrics": a.metrics, "workers_per_rank": a.workers,
                    "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ids = [r.id for r in load_benchmark(limit=a.prompts)]
        make_meshes(tmp / "meshes", ids)
        models = random_full_size_models(tmp / "models")
        ref = reference_set(tmp, get_preset(DEFAULTS.preset), a.ref_objects, a.workers)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        warm = subprocess.run(evaluate_cmd(1, tmp / "warm", tmp / "meshes", ref, models, a, 2), env=env,
                              capture_output=True, text=True)
        if warm.returncode:
            raise SystemExit(warm.stderr[-4000:])
        for n in a.nproc:
            run = tmp / f"run{n}"
            start = time.perf_counter()
            res = subprocess.run(evaluate_cmd(n, run, tmp / "meshes", ref, models, a, a.prompts), env=env,
                                 capture_output=True, text=True)
            wall = time.perf_counter() - start
            if res.returncode:
                result["runs"][str(n)] = {"error": res.stderr[-4000:]}
                continue
            timings = json.loads((run / "run.json").read_text()).get("timings", {})
            result["runs"][str(n)] = {"wall_s": round(wall, 2), "timings_s": timings,
                                      "render_score_s": round(timings.get("render", 0) + timings.get("score", 0), 2)}
        base = tmp / f"run{a.nproc[0]}"
        for n in a.nproc[1:]:
            entry = result["runs"][str(n)]
            if "error" in entry or "error" in result["runs"][str(a.nproc[0])]:
                continue
            v0, v1 = values(base), values(tmp / f"run{n}")
            entry["same_records"] = sorted(v0) == sorted(v1)
            entry["max_abs_score_diff"] = max((abs(v0[k] - v1[k]) for k in v0 if k in v1), default=None)
            s0, s1 = (json.loads((r / "set_scores.json").read_text()) for r in (base, tmp / f"run{n}"))
            entry["set_scores_equal"] = {m: s0[m]["overall"] == s1[m]["overall"] for m in s0}
            entry["set_values"] = {m: [s0[m]["overall"]["value"], s1[m]["overall"]["value"]] for m in s0}
            first = result["runs"][str(a.nproc[0])]
            entry["speedup_render_score"] = round(first["render_score_s"] / entry["render_score_s"], 3)
            entry["speedup_render"] = round(first["timings_s"]["render"] / entry["timings_s"]["render"], 3)
            entry["speedup_score"] = round(first["timings_s"]["score"] / entry["timings_s"]["score"], 3)
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
