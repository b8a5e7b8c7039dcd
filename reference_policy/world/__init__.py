"""Procedural training world of the reference policy: coloured voxel objects with prompts, plans and specs.

Split rule: a sample is ``"heldout"`` when its family is in :data:`HELDOUT_FAMILIES` (one per category) or
when ``(family, primary colour)`` is in :data:`HELDOUT_COMBOS`, the pairs of a training family and a palette
colour with ``crc32("family/colour") % 6 == 0``; every other sample is ``"train"``. The rule depends only on the
sample, so the splits are disjoint by construction and stable across runs and machines.
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np

from reference_policy.world.families import FAMILIES, Family
from reference_policy.world.grid import CENTRE, COLOURS, GRID, PALETTE, index_of, to_mesh
from reference_policy.world.sample import Part, Spec, WorldSample
from reference_policy.world.voxelise import voxelise_mesh

Split = Literal["train", "heldout"]
HELDOUT_FAMILIES: frozenset[str] = frozenset({"arch_bridge", "helicopter", "bird", "pagoda", "toy_train"})
HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    (f, c) for f in FAMILIES if f not in HELDOUT_FAMILIES for c in COLOURS
    if zlib.crc32(f"{f}/{c}".encode()) % 6 == 0)
MAX_TRIES_PER_SAMPLE = 200


def sample(family: str, seed: int) -> WorldSample:
    """The sample of ``family`` drawn with ``numpy.random.default_rng(seed)``."""
    return FAMILIES[family].fn(np.random.default_rng(seed), seed)


def split_of(s: WorldSample) -> Split:
    """``"heldout"`` or ``"train"`` by the rule of the module docstring."""
    held = s.family in HELDOUT_FAMILIES or (s.family, s.primary_colour) in HELDOUT_COMBOS
    return "heldout" if held else "train"


def generate(n: int, split: Split = "train", seed: int = 0) -> list[WorldSample]:
    """``n`` samples of ``split``, deterministic in ``seed``.

    Each draw picks a family uniformly (training families only for ``"train"``, all families for
    ``"heldout"``) and a per-sample seed from ``default_rng(seed)``; draws whose :func:`split_of` differs are
    rejected (at most ``MAX_TRIES_PER_SAMPLE * n`` draws).
    """
    rng = np.random.default_rng(seed)
    names = sorted(f for f in FAMILIES if split == "heldout" or f not in HELDOUT_FAMILIES)
    out: list[WorldSample] = []
    for _ in range(MAX_TRIES_PER_SAMPLE * n):
        if len(out) == n:
            break
        s = sample(names[int(rng.integers(len(names)))], int(rng.integers(2 ** 31)))
        if split_of(s) == split:
            out.append(s)
    if len(out) < n:
        raise RuntimeError(f"drew only {len(out)} of {n} {split} samples")
    return out


__all__ = ["CENTRE", "COLOURS", "FAMILIES", "GRID", "HELDOUT_COMBOS", "HELDOUT_FAMILIES", "PALETTE", "Family",
           "Part", "Spec", "Split", "WorldSample", "generate", "index_of", "sample", "split_of", "to_mesh",
           "voxelise_mesh"]
