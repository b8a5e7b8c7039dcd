"""Reward statistics: do real objects score high, degenerate ones low, and policy groups have spread?
``python -m reference_policy.rl.reward_report [--n 128] [--rollouts 64] [--groups 32] [--out FILE]``.

Grid families scored against the spec of each of ``n`` training-split samples (``generate(n, "train", seed)``):

- real: ``truth`` (the ground-truth grid), ``vq`` (its VQ-VAE reconstruction ``decode(encode(truth))``, the best
  the policy's tokens can hold), ``coarse`` (the coarse codes alone decoded, what step 1 sees of the truth),
  ``other_seed`` (the ground truth of another sample of the same family, its parts recoloured to this prompt's
  colours: a different but plausible answer, whose counts may differ);
- degenerate (:data:`DEGENERATES`): built from the prompt's parts and, to make them as strong as possible, the
  truth's facts (volume, extent, part fractions, height order).

``--rollouts N``: the bundled checkpoint's rollouts (temperature 0.7, top-k 20, the adapter's settings) on the
first N samples, step 1 rewards on the coarse grid and step 2 on the final grid. ``--groups G``: G prompts with
8 rollouts each at temperature 1.0, top-k 0 (GRPO sampling): the spread of the rewards within groups and the
fraction of groups with none (all 8 rewards equal), which GRPO cannot learn from. ``--device`` runs the policy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from reference_policy import bundled
from reference_policy.rl.rewards import RewardEnsemble, step1_rewards, step2_rewards
from reference_policy.trainutil import device_arg
from reference_policy.world import GRID, WorldSample, generate, index_of, sample
from reference_policy.world.grid import CENTRE

Degenerate = Callable[[WorldSample, np.random.Generator], np.ndarray]


def _footprint(s: WorldSample) -> tuple[slice, slice]:
    """x/y slices of the truth's footprint size, centred."""
    long, short = int(s.spec.extent[0]), int(s.spec.extent[1])
    x0, y0 = int(CENTRE - long / 2 + 0.5), int(CENTRE - short / 2 + 0.5)
    return slice(x0, x0 + long), slice(y0, y0 + short)


def _by_height(s: WorldSample) -> list:
    return sorted(s.parts, key=lambda p: s.spec.shapes[p.type].mean_z)


def empty(s: WorldSample, rng: np.random.Generator) -> np.ndarray:
    return np.zeros((GRID,) * 3, np.uint8)


def full_block(s: WorldSample, rng: np.random.Generator) -> np.ndarray:
    return np.full((GRID,) * 3, index_of(s.parts[0].colour), np.uint8)


def slabs(s: WorldSample, rng: np.random.Generator, split: bool = False) -> np.ndarray:
    """One slab per part over the truth's footprint, lowest part first, each as thick as its share of the truth's
    volume; ``split``: each slab cut into the part's count of strips one voxel apart (the counts come out right)."""
    grid = np.zeros((GRID,) * 3, np.uint8)
    xs, ys = _footprint(s)
    area = (xs.stop - xs.start) * (ys.stop - ys.start)
    z = 0
    for p in _by_height(s):
        t = max(1, round(s.spec.shapes[p.type].fraction * s.spec.volume / area))
        layer = np.zeros((GRID, GRID), bool)
        layer[xs, ys] = True
        if split and p.count > 1:
            cuts = np.linspace(xs.start, xs.stop, p.count + 1).round().astype(int)
            for c in cuts[1:-1]:
                layer[c - 1:c, :] = False  # a one-voxel gap between strips: not 26-connected
        grid[:, :, z:min(z + t, GRID)][layer] = index_of(p.colour)
        z = min(z + t, GRID - 1)
    return grid


def strips(s: WorldSample, rng: np.random.Generator) -> np.ndarray:
    return slabs(s, rng, split=True)


def random_voxels(s: WorldSample, rng: np.random.Generator) -> np.ndarray:
    """Voxels of the truth's bounding-box size, occupied at random with the truth's density, in the prompt's
    colours with the truth's fractions."""
    grid = np.zeros((GRID,) * 3, np.uint8)
    xs, ys = _footprint(s)
    h = int(s.spec.extent[2])
    box = grid[xs, ys, :h]
    occupied = rng.random(box.shape) < s.spec.volume / box.size
    fractions = np.array([s.spec.shapes[p.type].fraction for p in s.parts])
    colours = np.array([index_of(p.colour) for p in s.parts], np.uint8)
    box[occupied] = rng.choice(colours, size=int(occupied.sum()), p=fractions / fractions.sum())
    return grid


def one_voxel_per_part(s: WorldSample, rng: np.random.Generator) -> np.ndarray:
    grid = np.zeros((GRID,) * 3, np.uint8)
    for z, p in enumerate(_by_height(s)):
        grid[GRID // 2, GRID // 2, z] = index_of(p.colour)
    return grid


def huge_part(s: WorldSample, rng: np.random.Generator) -> np.ndarray:
    """The main part as a 28 x 28 x 20 block, every other part one voxel stacked on it."""
    grid = np.zeros((GRID,) * 3, np.uint8)
    grid[2:30, 2:30, 0:20] = index_of(s.parts[0].colour)
    for z, p in enumerate(s.parts[1:]):
        grid[GRID // 2, GRID // 2, 20 + z] = index_of(p.colour)
    return grid


def colour_swap(s: WorldSample, rng: np.random.Generator) -> np.ndarray:
    """The ground-truth shape with its part colours cyclically exchanged (right shape, colours on wrong parts)."""
    colours = [index_of(p.colour) for p in s.parts]
    lut = np.arange(256, dtype=np.uint8)
    for a, b in zip(colours, colours[1:] + colours[:1]):
        lut[a] = b
    return lut[s.grid]


DEGENERATES: dict[str, Degenerate] = {
    "empty": empty, "full_block": full_block, "slabs": slabs, "strips": strips, "random_voxels": random_voxels,
    "one_voxel_per_part": one_voxel_per_part, "huge_part": huge_part, "colour_swap": colour_swap}


def other_seed(s: WorldSample, rng: np.random.Generator) -> np.ndarray:
    """The ground truth of the same family at another seed, its parts recoloured to this sample's colours."""
    other = sample(s.family, int(rng.integers(2 ** 31)))
    lut = np.zeros(256, np.uint8)
    mine = {p.type: p.colour for p in s.parts}
    for p in other.parts:
        lut[index_of(p.colour)] = index_of(mine.get(p.type, p.colour))
    return lut[other.grid]


def table(grids: dict[str, list[np.ndarray]], samples: list[WorldSample], ensemble: RewardEnsemble
          ) -> dict[str, dict[str, float]]:
    """Per grid family: the mean of every component and of the total."""
    out = {}
    for name, gs in grids.items():
        batch = ensemble(gs, samples[:len(gs)])
        out[name] = {**{c: float(v.mean()) for c, v in batch.components.items()}, "total": float(batch.total.mean()),
                     "total_std": float(batch.total.std())}
    return out


def markdown(rows: dict[str, dict[str, float]], title: str) -> str:
    cols = list(next(iter(rows.values())))
    lines = [f"### {title}", "", "| grids | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |" for name, row in rows.items()]
    return "\n".join(lines)


def static_grids(samples: list[WorldSample], vqvae, seed: int = 0) -> dict[str, dict[str, list[np.ndarray]]]:
    """``{"step1": {family: grids}, "step2": {...}}`` for the real and degenerate families."""
    rng = np.random.default_rng(seed)
    truth = np.stack([s.grid for s in samples])
    coarse_ids, fine_ids = vqvae.encode(truth)
    real2 = {"truth": list(truth), "vq": list(vqvae.decode(coarse_ids, fine_ids)),
             "other_seed": [other_seed(s, rng) for s in samples]}
    real1 = {"truth": list(truth), "coarse": list(vqvae.decode_coarse(coarse_ids)),
             "other_seed": real2["other_seed"]}
    bad = {name: [fn(s, rng) for s in samples] for name, fn in DEGENERATES.items()}
    return {"step1": {**real1, **bad}, "step2": {**real2, **bad}}


def rollout_stats(policy, samples: list[WorldSample], groups: int, seed: int = 0) -> dict:
    """Rewards of the policy's rollouts (module docstring)."""
    from reference_policy.evaluate import TEMPERATURE, TOP_K

    out: dict = {}
    r1, r2 = step1_rewards(), step2_rewards()
    if samples:
        start = time.perf_counter()
        rolls = policy.generate([s.prompts[i % 3] for i, s in enumerate(samples)],
                                [seed + i for i in range(len(samples))], TEMPERATURE, TOP_K)
        out["generate_seconds"] = time.perf_counter() - start
        out["step1"] = table({"policy (T 0.7, top-k 20)": [r.coarse_grid for r in rolls]}, samples, r1)
        out["step2"] = table({"policy (T 0.7, top-k 20)": [r.grid for r in rolls]}, samples, r2)
    if groups:
        group_samples = generate(groups, "train", seed + 1)
        prompts = [s.prompts[g % 3] for g, s in enumerate(group_samples) for _ in range(8)]
        expanded = [s for s in group_samples for _ in range(8)]
        rolls = policy.generate(prompts, [seed + 1000 + i for i in range(len(prompts))], 1.0, 0)
        for step, ens, grids in ((1, r1, [r.coarse_grid for r in rolls]), (2, r2, [r.grid for r in rolls])):
            total = ens(grids, expanded).total.reshape(groups, 8)
            spread = total.std(axis=1)
            out[f"groups_step{step}"] = {"groups": groups, "mean": float(total.mean()),
                                         "mean_within_group_std": float(spread.mean()),
                                         "zero_spread_fraction": float(np.mean(spread < 1e-9)),
                                         "mean_within_group_range": float(np.ptp(total, axis=1).mean())}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="hi-grpo",
                    help=f"a bundled checkpoint ({', '.join(bundled.CHECKPOINTS)}) or a folder")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--rollouts", type=int, default=0)
    ap.add_argument("--groups", type=int, default=0)
    ap.add_argument("--device", default="cpu", type=device_arg)
    ap.add_argument("--out", help="write the JSON here too")
    a = ap.parse_args(argv)
    from reference_policy.policy import ReferencePolicy

    policy = ReferencePolicy.from_pretrained(bundled.resolve(a.checkpoint), a.device)
    samples = generate(a.n, "train", a.seed)
    grids = static_grids(samples, policy.vqvae, a.seed)
    start = time.perf_counter()
    result = {"n": a.n, "seed": a.seed,
              "step1": table(grids["step1"], samples, step1_rewards()),
              "step2": table(grids["step2"], samples, step2_rewards())}
    n_grids = sum(len(g) for g in grids["step1"].values()) + sum(len(g) for g in grids["step2"].values())
    result["ms_per_grid_and_step"] = 1000 * (time.perf_counter() - start) / n_grids
    if a.rollouts or a.groups:
        result["policy"] = rollout_stats(policy, samples[:a.rollouts], a.groups)
    text = json.dumps(result, indent=1)
    if a.out:
        Path(a.out).write_text(text)
    print(markdown(result["step1"], "step 1 (coarse grid)"), "\n", file=sys.stderr)
    print(markdown(result["step2"], "step 2 (final grid)"), "\n", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
