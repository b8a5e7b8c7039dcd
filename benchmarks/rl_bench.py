"""Speed of Hi-GRPO on a checkpoint (default: the bundled one): rollouts alone, and whole RL steps split into
rollout / reward / update. Prints one JSON object.

    python benchmarks/rl_bench.py rollout [--batch 64 128] [--device cpu]
    python benchmarks/rl_bench.py step [--prompts 8] [--generations 8] [--steps 2] [--device cpu]

``rollout``: both policy steps for ``batch`` training prompts at temperature 1 without top-k (the RL setting),
one batch, seconds per batch and per decoded position. ``step``: :class:`reference_policy.rl.train.Trainer` for
``steps`` steps (dynamic sampling off, so every step is one round of ``prompts x generations`` rollouts), the
log rows' ``t_rollout``, ``t_reward``, ``t_update`` and ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from reference_policy.policy import ReferencePolicy
from reference_policy.bundled import SFT
from reference_policy.rl.train import HiGRPOConfig, Trainer
from reference_policy.world import generate


def bench_rollout(checkpoint: Path, batches: list[int], device: str) -> list[dict]:
    policy = ReferencePolicy.from_pretrained(checkpoint, device)
    out = []
    for b in batches:
        samples = generate(b, "train", 7)
        prompts = [s.prompts[i % 3] for i, s in enumerate(samples)]
        seeds = [11 * i + 3 for i in range(b)]
        start = time.perf_counter()
        s1 = policy.generate_step1(prompts, seeds)
        mid = time.perf_counter()
        s2 = policy.generate_step2(s1, [s + 1 for s in seeds])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        end = time.perf_counter()
        positions = max(len(s.ids) for s in s1) + max(len(s.ids) for s in s2)
        out.append({"batch": b, "seconds": round(end - start, 2), "step1_s": round(mid - start, 2),
                    "step2_s": round(end - mid, 2), "ms_per_position": round(1000 * (end - start) / positions, 2)})
    return out


def bench_step(checkpoint: Path, prompts: int, generations: int, steps: int, device: str) -> dict:
    cfg = replace(HiGRPOConfig(), prompts_per_step=prompts, num_generations=generations, steps=steps,
                  dynamic_sampling=False, save_every=10_000)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(Path(tmp), cfg, checkpoint, device)
        trainer.run()
        rows = trainer.log.rows
    keys = ("t_rollout", "t_reward", "t_update", "tokens", "tokens_per_s")
    per_step = [{k: round(r[k], 2) for k in keys} for r in rows]
    total = [rows[0]["seconds"]] + [b["seconds"] - a["seconds"] for a, b in zip(rows, rows[1:])]
    for row, s in zip(per_step, total):
        row["step_s"] = round(s, 2)
    return {"prompts": prompts, "generations": generations, "steps": per_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["rollout", "step"])
    ap.add_argument("--checkpoint", default=str(SFT))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args()
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "device": torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else "cpu"}
    if a.what == "rollout":
        result["rollout"] = bench_rollout(Path(a.checkpoint), a.batch, a.device)
    else:
        result["step"] = bench_step(Path(a.checkpoint), a.prompts, a.generations, a.steps, a.device)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
