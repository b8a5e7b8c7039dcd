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
- ``stability`` (one, when the spec asks for it): the lowest occupied layer must be ``z = 0`` and the x/y centre
  of mass of all occupied voxels (unit mass each) must lie inside the convex hull of the footprint, the
  occupied cells of layer 0 taken as unit squares (their corners), with a tolerance of 1e-6.

The score of a sample is the mean of its check results. :func:`voxelise_mesh` maps a coloured mesh (file or
trimesh) back to the palette grid so that generated meshes can be scored the same way.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import trimesh
from scipy import ndimage
from scipy.spatial import ConvexHull

from reference_policy.world.grid import GRID, PALETTE, index_of
from reference_policy.world.sample import FULL, Spec

RELATION_MARGIN = 0.5
CHECK_TYPES = ("count", "colour", "relation", "stability")
_RGB = np.array(list(PALETTE.values()), dtype=np.float32)
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
    occ = np.argwhere(grid > 0)
    if len(occ) == 0:
        return False, "empty grid"
    if occ[:, 2].min() != 0:
        return False, f"floating: lowest layer z={occ[:, 2].min()}"
    com = occ[:, :2].mean(axis=0)
    feet = occ[occ[:, 2] == 0][:, :2]
    corners = (feet[:, None, :] + _SQUARE[None]).reshape(-1, 2)
    eq = ConvexHull(corners).equations
    inside = bool(np.all(eq[:, :2] @ com + eq[:, 2] <= 1e-6))
    return inside, f"centre of mass ({com[0]:.1f}, {com[1]:.1f}) {'inside' if inside else 'outside'} footprint"


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


def voxelise_mesh(mesh: trimesh.Trimesh | str | Path, fit: bool = True, samples: int = 20000,
                   seed: int = 0) -> np.ndarray:
    """A coloured mesh -> palette grid.

    Frame: z up. With ``fit`` the mesh is scaled so its largest extent spans ``GRID`` voxels, centred in x/y,
    base at z = 0; without it the mesh is taken in the frame of :func:`~reference_policy.world.grid.to_mesh`
    (``voxel = position * GRID + (GRID/2, GRID/2, 0)``), which maps that output back onto its own voxels. Surface
    points (each
    triangle's centroid plus ``samples`` area-weighted random points) are pushed a quarter voxel inwards along the
    face normal, coloured with the nearest palette colour of the face's mean vertex colour, and written into their
    voxels; the closed interior (``binary_fill_holes``) takes the colour of the nearest surface voxel.
    """
    if not isinstance(mesh, trimesh.Trimesh):
        mesh = trimesh.load(mesh, force="mesh", process=False)
    lo, hi = mesh.bounds
    scale = GRID / max(float((hi - lo).max()), 1e-9) if fit else float(GRID)
    shift = np.array([GRID / 2 - (lo[0] + hi[0]) / 2 * scale, GRID / 2 - (lo[1] + hi[1]) / 2 * scale,
                      -lo[2] * scale]) if fit else np.array([GRID / 2, GRID / 2, 0.0])
    tri = mesh.triangles * scale + shift
    rgb = mesh.visual.vertex_colors[mesh.faces][:, :, :3].astype(np.float32).mean(axis=1) \
        if mesh.visual.kind == "vertex" else np.asarray(mesh.visual.face_colors, np.float32)[:, :3]
    palette = ((rgb[:, None, :] - _RGB[None]) ** 2).sum(-1).argmin(1).astype(np.uint8) + 1
    rng = np.random.default_rng(seed)
    area = mesh.area_faces
    picks = rng.choice(len(tri), size=samples, p=area / area.sum()) if area.sum() > 0 else np.zeros(0, int)
    uv = rng.random((samples, 2))
    uv = np.where(uv.sum(1, keepdims=True) > 1, 1 - uv, uv)
    t = tri[picks]
    pts = np.concatenate([tri.mean(axis=1), t[:, 0] + uv[:, :1] * (t[:, 1] - t[:, 0]) + uv[:, 1:] * (t[:, 2] - t[:, 0])])
    faces = np.concatenate([np.arange(len(tri)), picks])
    pts -= 0.25 * mesh.face_normals[faces]
    ijk = np.clip(np.floor(pts).astype(int), 0, GRID - 1)
    grid = np.zeros((GRID,) * 3, np.uint8)
    grid[tuple(ijk.T)] = palette[faces]
    solid = ndimage.binary_fill_holes(grid > 0)
    _, nearest = ndimage.distance_transform_edt(grid == 0, return_indices=True)
    return np.where(solid, grid[tuple(nearest)], 0).astype(np.uint8)
