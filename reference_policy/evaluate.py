"""Verifier accuracy and speed of a policy checkpoint on the procedural splits:
``python -m reference_policy.evaluate --checkpoint DIR [--device cuda] [--n 256] [--out FILE]``.

For each split (``heldout``: the held-out families and (family, colour) combinations; ``train``: fresh samples
of the training split, same distribution as pretraining but unseen seeds) it draws ``n`` world samples with
``generate(n, split, seed)``, gives the policy prompt ``i % 3`` of sample ``i`` (the three paraphrases in turn),
decodes both steps and runs the verifiers on the final grid and on the step-1 (coarse) grid. ``vq_ceiling`` runs
them on the VQ-VAE reconstruction of the ground-truth grid, ``decode(encode(truth))``: the best the policy can
reach through its tokens.

Reported per split and grid: :func:`reference_policy.verifiers.accuracy` (fraction of checks passed per check
type, ``score`` = mean per-sample fraction, ``all`` = samples passing every check), ``empty`` (fraction of empty
grids), and ``seconds_per_prompt`` = generation wall time / n at the given batch size (both steps, VQ-VAE decode
included; model loading excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reference_policy.policy import ReferencePolicy
from reference_policy.trainutil import device_arg
from reference_policy.verifiers import accuracy
from reference_policy.world import Split, generate

#: Sampling settings of the reference adapter and of this evaluation (one source for both).
TEMPERATURE = 0.7
TOP_K = 20


def evaluate_split(policy: ReferencePolicy, split: Split, n: int, seed: int = 1234, batch_size: int = 64,
                   temperature: float = TEMPERATURE, top_k: int = TOP_K) -> dict:
    """The numbers of the module docstring for one split."""
    samples = generate(n, split, seed)
    prompts = [s.prompts[i % len(s.prompts)] for i, s in enumerate(samples)]
    if policy.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    rollouts = policy.generate(prompts, [seed + 2 * i for i in range(n)], temperature, top_k, batch_size)
    seconds = time.perf_counter() - start
    out = {"n": n, "batch_size": batch_size, "temperature": temperature, "top_k": top_k,
           "seconds_per_prompt": seconds / n}
    ceiling = policy.vqvae.reconstruct(np.stack([s.grid for s in samples]))
    for name, grids in (("final", [r.grid for r in rollouts]), ("step1", [r.coarse_grid for r in rollouts]),
                        ("vq_ceiling", list(ceiling))):
        out[name] = accuracy(zip(grids, (s.spec for s in samples)))
        out[name]["empty"] = float(np.mean([not (g > 0).any() for g in grids]))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--device", default="cpu", type=device_arg)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=TEMPERATURE)
    ap.add_argument("--top-k", type=int, default=TOP_K)
    ap.add_argument("--splits", nargs="+", default=["heldout", "train"], choices=["heldout", "train"])
    ap.add_argument("--out", help="write the JSON here too")
    a = ap.parse_args(argv)
    policy = ReferencePolicy.from_pretrained(a.checkpoint, a.device)
    result = {"checkpoint": str(a.checkpoint),
              "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"}
    for split in a.splits:
        print(f"evaluating {split} ({a.n} prompts)", file=sys.stderr, flush=True)
        result[split] = evaluate_split(policy, split, a.n, batch_size=a.batch_size, temperature=a.temperature,
                                       top_k=a.top_k)
    text = json.dumps(result, indent=1)
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
