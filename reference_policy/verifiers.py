"""Cheap programmatic checks of a coloured voxel grid against a world :class:`Spec` (RL rewards).

Check types and rules (grid frame and palette of :mod:`reference_policy.world.grid`):

- ``count`` (one check per part type): the voxels of the part's colour are split into 26-connected components;
  components smaller than the spec's minimum size (at most 3 voxels) are ignored as specks; the check passes
  when the number of remaining components equals the expected count. Part types have distinct colours in the
  world, so colour identifies the part and touching parts of other colours never merge the pieces.
- ``colour`` (one per spec colour): passes when ``voxels of that colour / occupied voxels >= min fraction``
  (the spec stores half the ground-truth fraction).
- ``relation`` (one per triple ``(a, "above", b)``): passes when ``z̄(a) - z̄(b) >= RELATION_MARGIN`` with z̄ the
  mean z of the part colour's voxels; fails when either part is absent.
- ``stability`` (one, when the spec asks for it): the occupied voxels are split into 26-connected components
  (any colours); every component must be supported, i.e. contain a voxel of the ground layer ``z = 0`` (a part
  resting on another part is connected to it, so a floating blob fails however close it hovers), and the x/y
  centre of mass of each component (unit mass per voxel) must lie inside the convex hull of that component's
  footprint, its occupied cells of layer 0 taken as unit squares (their corners), with a tolerance of 1e-6.

The score of a sample is the mean of its check results. Meshes are scored through
:func:`reference_policy.world.voxelise_mesh`, which maps a coloured mesh back to the palette grid.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from reference_policy.world.grid import index_of
from reference_policy.world.sample import FULL, Spec

RELATION_MARGIN = 0.5
CHECK_TYPES = ("count", "colour", "relation", "stability")
_SQUARE = np.array([(-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5)])


@dataclass(frozen=True)
class Check:
    type: str  # one of CHECK_TYPES
    name: str  # e.g. "leg", "red", "top above leg", "stable"
    passed: bool
    detail: str


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]

    @property
    def score(self) -> float:
        """Fraction of checks passed (1.0 when there are none)."""
        return float(np.mean([c.passed for c in self.checks])) if self.checks else 1.0

    @property
    def all_passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def passed(self, check_type: str) -> bool:
        """All checks of one type passed (True when the type has no checks)."""
        return all(c.passed for c in self.checks if c.type == check_type)


def count_components(mask: np.ndarray, min_size: int = 1) -> int:
    """Number of 26-connected components of ``mask`` with at least ``min_size`` voxels."""
    labels, n = ndimage.label(mask, FULL)
    if n == 0:
        return 0
    return int((np.bincount(labels.ravel())[1:] >= min_size).sum())


def is_stable(grid: np.ndarray) -> tuple[bool, str]:
    """The stability rule of the module docstring; returns (passed, reason)."""
    labels, n = ndimage.label(grid > 0, FULL)
    if n == 0:
        return False, "empty grid"
    grounded = np.unique(labels[:, :, 0])
    floating = np.setdiff1d(np.arange(1, n + 1), grounded)
    if len(floating):
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[floating]
        return False, f"{len(floating)} of {n} parts float (not connected to z=0; {int(sizes.sum())} voxels)"
    occ = np.argwhere(labels)
    lab = labels[tuple(occ.T)]
    counts = np.bincount(lab, minlength=n + 1)[1:]
    com = np.stack([np.bincount(lab, occ[:, a], n + 1)[1:] for a in (0, 1)], axis=1) / counts[:, None]
    for i in range(n):
        feet = np.argwhere(labels[:, :, 0] == i + 1)
        corners = (feet[:, None, :] + _SQUARE[None]).reshape(-1, 2)
        eq = ConvexHull(corners).equations
        if not np.all(eq[:, :2] @ com[i] + eq[:, 2] <= 1e-6):
            return False, (f"part {i + 1} of {n}: centre of mass ({com[i, 0]:.1f}, {com[i, 1]:.1f}) outside its "
                           f"footprint")
    return True, f"{n} grounded part{'s' if n > 1 else ''}, each centre of mass over its footprint"


def verify(grid: np.ndarray, spec: Spec) -> Verdict:
    """Run every check of ``spec`` on ``grid`` (uint8 [GRID]^3 of palette indices)."""
    checks: list[Check] = []
    masks = {c: grid == index_of(c) for c in {*spec.colours, *(v[0] for v in spec.counts.values())}}
    for part, (colour, expected, min_size) in spec.counts.items():
        got = count_components(masks[colour], min_size)
        checks.append(Check("count", part, got == expected, f"{got} of {expected} expected"))
    occupied = max(int((grid > 0).sum()), 1)
    for colour, min_frac in spec.colours.items():
        frac = float(masks[colour].sum()) / occupied
        checks.append(Check("colour", colour, frac >= min_frac, f"fraction {frac:.4f} (min {min_frac:.4f})"))
    z = np.arange(grid.shape[2], dtype=np.float64)
    for upper, rel, lower in spec.relations:
        heights = []
        for part in (upper, lower):
            m = masks[spec.counts[part][0]]
            n = m.sum()
            heights.append(float((m.sum(axis=(0, 1)) * z).sum() / n) if n else None)
        ok = None not in heights and heights[0] - heights[1] >= RELATION_MARGIN
        checks.append(Check("relation", f"{upper} {rel} {lower}", ok, f"mean z {heights[0]} vs {heights[1]}"))
    if spec.stable:
        ok, why = is_stable(grid)
        checks.append(Check("stability", "stable", ok, why))
    return Verdict(tuple(checks))


def accuracy(pairs: Iterable[tuple[np.ndarray, Spec]]) -> dict[str, float]:
    """Per check type, the fraction of checks passed over all (grid, spec) pairs; plus ``score``, the mean
    per-sample score, and ``all``, the fraction of samples passing every check."""
    hits: dict[str, list[bool]] = defaultdict(list)
    scores, alls = [], []
    for grid, spec in pairs:
        v = verify(grid, spec)
        for c in v.checks:
            hits[c.type].append(c.passed)
        scores.append(v.score)
        alls.append(v.all_passed)
    out = {t: float(np.mean(hits[t])) for t in CHECK_TYPES if hits[t]}
    out["score"] = float(np.mean(scores)) if scores else float("nan")
    out["all"] = float(np.mean(alls)) if alls else float("nan")
    return out
