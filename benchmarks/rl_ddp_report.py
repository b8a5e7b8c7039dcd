"""Tabulate ``bash benchmarks/rl_gpu.sh ddp OUT``: data-parallel Hi-GRPO, 1 GPU vs 2 GPUs, global batch fixed.

Reads ``OUT/p<P>-gpu<N>-s<S>/log.jsonl`` (one row per step, ``seconds`` cumulative) and writes
``OUT/ddp.json``, ``OUT/ddp.md`` and ``OUT/ddp_curves.csv`` (and ``OUT/ddp_curves.png`` when matplotlib is there).

- Throughput (prompts/s) = sum over steps 1..T of ``rounds * P`` (prompts drawn, dynamic sampling included) divided
  by ``seconds[T] - seconds[0]``: step 0 (CUDA warm-up, allocator growth) is left out of both, and only the steps
  that every compared run completed count. Speed-up = 2-GPU throughput / 1-GPU throughput of the same seed.
- Reward curves: ``r2`` (step-2 reward, the trained objective) and ``r1`` per step. Seed spread at a step = the
  standard deviation (ddof 1) over the 1-GPU seeds; the 2-GPU run agrees when the root mean square over steps of
  its difference from the 1-GPU run of the same seed is at most the root mean square of that spread.

    python benchmarks/rl_ddp_report.py OUT
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

RUN = re.compile(r"p(?P<p>\d+)-gpu(?P<gpus>\d+)-s(?P<seed>\d+)$")
CURVES = ("r2", "r1")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def throughput(rows: list[dict], p: int, steps: int) -> dict:
    """Prompts/s and tokens/s over steps 1..steps-1 (step 0 left out)."""
    rows = rows[:steps]
    seconds = rows[-1]["seconds"] - rows[0]["seconds"]
    prompts = sum(r["rounds"] * p for r in rows[1:])
    return {"steps_timed": len(rows) - 1, "seconds": round(seconds, 2), "prompts": prompts,
            "prompts_per_s": round(prompts / seconds, 4),
            "tokens_per_s": round(sum(r["tokens"] for r in rows[1:]) / seconds, 1),
            "seconds_per_step": round(seconds / (len(rows) - 1), 3),
            "rollout_s_per_step": round(float(np.mean([r["t_rollout"] for r in rows[1:]])), 3),
            "update_s_per_step": round(float(np.mean([r["t_update"] for r in rows[1:]])), 3)}


def report(out: Path) -> dict:
    runs: dict[tuple[int, int, int], list[dict]] = {}
    for log in sorted(out.glob("p*-gpu*-s*/log.jsonl")):
        m = RUN.match(log.parent.name)
        if m:
            runs[(int(m["p"]), int(m["gpus"]), int(m["seed"]))] = read_log(log)
    result: dict = {"out": str(out), "batches": {}}
    lines = ["| prompts a step (P x G samples) | GPUs | steps timed | s/step | rollout s | update s | prompts/s | "
             "speed-up |", "|---|---|---|---|---|---|---|---|"]
    csv = ["P,gpus,seed,step," + ",".join(CURVES)]
    for p in sorted({k[0] for k in runs}):
        one, two = runs.get((p, 1, 0)), runs.get((p, 2, 0))
        seeds = {s: runs[(p, 1, s)] for (pp, g, s) in runs if pp == p and g == 1}
        entry: dict = {"prompts_per_step": p}
        if one and two:
            steps = min(len(one), len(two))
            t1, t2 = throughput(one, p, steps), throughput(two, p, steps)
            entry.update(gpu1=t1, gpu2=t2, speedup=round(t2["prompts_per_s"] / t1["prompts_per_s"], 3))
            for g, t in ((1, t1), (2, t2)):
                lines.append(f"| {p} | {g} | {t['steps_timed']} | {t['seconds_per_step']} | "
                             f"{t['rollout_s_per_step']} | {t['update_s_per_step']} | {t['prompts_per_s']} | "
                             + (f"{entry['speedup']}x |" if g == 2 else "1 |"))
        if two and len(seeds) >= 2:
            n = min(len(two), *(len(r) for r in seeds.values()))
            agree = {}
            for key in CURVES:
                by_seed = np.array([[r[key] for r in rows[:n]] for rows in seeds.values()])
                spread = by_seed.std(axis=0, ddof=1)
                diff = np.array([r[key] for r in two[:n]]) - np.array([r[key] for r in seeds[0][:n]])
                rms_diff, rms_spread = float(np.sqrt(np.mean(diff ** 2))), float(np.sqrt(np.mean(spread ** 2)))
                agree[key] = {"steps": n, "rms_diff_gpu2_vs_gpu1_same_seed": round(rms_diff, 5),
                              "rms_seed_std_gpu1": round(rms_spread, 5), "agrees": rms_diff <= rms_spread,
                              "max_abs_diff": round(float(np.abs(diff).max()), 5)}
            entry["curves"] = agree
        for (pp, g, s), rows in sorted(runs.items()):
            if pp == p:
                csv += [f"{p},{g},{s},{r['step']}," + ",".join(f"{r[k]:.6f}" for k in CURVES) for r in rows]
        result["batches"][str(p)] = entry
    (out / "ddp.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "ddp_curves.csv").write_text("\n".join(csv) + "\n")
    md = ["# Hi-GRPO data-parallel: 1 GPU vs 2 GPUs, global batch fixed", "", *lines, ""]
    for p, entry in result["batches"].items():
        for key, a in entry.get("curves", {}).items():
            md.append(f"- P={p} `{key}` over {a['steps']} steps: RMS difference 2 GPUs vs 1 GPU (seed 0) "
                      f"{a['rms_diff_gpu2_vs_gpu1_same_seed']}, RMS seed std on 1 GPU {a['rms_seed_std_gpu1']} "
                      f"-> {'agrees' if a['agrees'] else 'does NOT agree'} (max |diff| {a['max_abs_diff']})")
    (out / "ddp.md").write_text("\n".join(md) + "\n")
    _plot(out, runs)
    return result


def _plot(out: Path, runs: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ps = sorted({k[0] for k in runs})
    fig, axes = plt.subplots(1, len(ps), figsize=(5 * len(ps), 3.5), squeeze=False)
    for ax, p in zip(axes[0], ps):
        for (pp, g, s), rows in sorted(runs.items()):
            if pp == p:
                ax.plot([r["step"] for r in rows], [r["r2"] for r in rows], "-" if g == 1 else "--o",
                        label=f"{g} GPU{'s' if g > 1 else ''}, seed {s}", lw=1.5 if g == 2 else 1)
        ax.set(title=f"P={p}: step-2 reward", xlabel="step", ylabel="r2")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ddp_curves.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    print(json.dumps(report(ap.parse_args().out), indent=1))


if __name__ == "__main__":
    main()
