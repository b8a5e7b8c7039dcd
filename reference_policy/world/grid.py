"""The voxel canvas of the training world: a fixed ``GRID**3`` array of palette indices.

Frame: ``grid[x, y, z]``, z up, the object rests on ``z = 0`` and is centred in x/y around ``CENTRE``.
Index 0 is empty; index ``i >= 1`` is ``PALETTE[i - 1]``. Primitives test voxel centres (integer coordinates)
against an analytic shape and return a boolean mask; :meth:`Canvas.paint` writes a colour into a mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh

GRID = 32
CENTRE = (GRID - 1) / 2.0  # 15.5: the x/y centre line between voxels 15 and 16

#: Named palette; a colour's grid value is its position + 1.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30), "orange": (240, 130, 20), "yellow": (240, 210, 40), "green": (50, 160, 60),
    "teal": (20, 150, 150), "blue": (40, 80, 200), "purple": (120, 50, 160), "pink": (240, 130, 180),
    "brown": (120, 70, 30), "black": (20, 20, 20), "white": (240, 240, 240), "grey": (130, 130, 130),
    "beige": (220, 200, 160), "gold": (200, 160, 40),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
_RGB = np.array([(0, 0, 0), *PALETTE.values()], dtype=np.uint8)

_X, _Y, _Z = np.meshgrid(*(np.arange(GRID, dtype=np.float32),) * 3, indexing="ij")


def index_of(colour: str) -> int:
    """Grid value of a palette colour name."""
    return COLOURS.index(colour) + 1


def box(x0: float, x1: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray:
    """Voxels i with x0 - 0.5 <= i < x1 + 0.5 per axis: integer bounds are inclusive, and a half-integer range
    such as ``CENTRE ± k`` gives exactly 2k + 1 voxels (a thin ``box(a, a, ...)`` is always one voxel thick)."""
    return ((_X >= x0 - 0.5) & (_X < x1 + 0.5) & (_Y >= y0 - 0.5) & (_Y < y1 + 0.5)
            & (_Z >= z0 - 0.5) & (_Z < z1 + 0.5))


def _axes(axis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, w) coordinate arrays where w runs along ``axis``."""
    return {"x": (_Y, _Z, _X), "y": (_X, _Z, _Y), "z": (_X, _Y, _Z)}[axis]


def cylinder(u: float, v: float, radius: float, lo: float, hi: float, axis: str = "z") -> np.ndarray:
    """Voxels with (U-u)^2 + (V-v)^2 <= radius^2 and lo <= W <= hi, W the coordinate along ``axis``."""
    uu, vv, ww = _axes(axis)
    return ((uu - u) ** 2 + (vv - v) ** 2 <= radius ** 2) & (ww >= lo) & (ww <= hi)


def ellipsoid(cx: float, cy: float, cz: float, rx: float, ry: float, rz: float) -> np.ndarray:
    """Voxels with ((X-cx)/rx)^2 + ((Y-cy)/ry)^2 + ((Z-cz)/rz)^2 <= 1."""
    return ((_X - cx) / rx) ** 2 + ((_Y - cy) / ry) ** 2 + ((_Z - cz) / rz) ** 2 <= 1.0


def cone(cx: float, cy: float, z0: float, radius: float, height: float) -> np.ndarray:
    """Cone along z with base disc (radius) at z0 and apex at z0 + height (height < 0 points down)."""
    t = (_Z - z0) / height
    return (t >= 0) & (t <= 1) & ((_X - cx) ** 2 + (_Y - cy) ** 2 <= (radius * (1 - t)) ** 2)


def ring(cx: float, cy: float, cz: float, major: float, minor: float, axis: str = "z") -> np.ndarray:
    """Torus around ``axis`` through (cx, cy, cz): (sqrt(du^2 + dv^2) - major)^2 + dw^2 <= minor^2."""
    d = {"x": (_Y - cy, _Z - cz, _X - cx), "y": (_X - cx, _Z - cz, _Y - cy), "z": (_X - cx, _Y - cy, _Z - cz)}[axis]
    return (np.sqrt(d[0] ** 2 + d[1] ** 2) - major) ** 2 + d[2] ** 2 <= minor ** 2


def segment(p0: tuple[float, float, float], p1: tuple[float, float, float], radius: float) -> np.ndarray:
    """Capsule: voxels within ``radius`` of the segment p0-p1 (distance to the clamped projection)."""
    a, b = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    ab = b - a
    px, py, pz = _X - a[0], _Y - a[1], _Z - a[2]
    t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
    return (px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2 <= radius ** 2


@dataclass
class Canvas:
    """A mutable grid with a paint operation; later paint overwrites earlier paint unless ``only_empty``."""

    grid: np.ndarray = field(default_factory=lambda: np.zeros((GRID,) * 3, np.uint8))

    def paint(self, mask: np.ndarray, colour: str, only_empty: bool = False) -> np.ndarray:
        """Write ``colour`` into ``mask`` (restricted to empty voxels if ``only_empty``); return the written mask."""
        if only_empty:
            mask = mask & (self.grid == 0)
        self.grid[mask] = index_of(colour)
        return mask


_FACES = (  # (axis, direction, 4 corner offsets of the face in counter-clockwise order seen from outside)
    (0, 1, ((1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1))), (0, -1, ((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0))),
    (1, 1, ((0, 1, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0))), (1, -1, ((0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1))),
    (2, 1, ((0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))), (2, -1, ((0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0))),
)


def to_mesh(grid: np.ndarray) -> trimesh.Trimesh:
    """Voxels as cubes with hidden faces culled: one quad (two triangles, 4 unshared vertices) per exposed face.

    Vertex coordinates are ``(i - GRID/2, j - GRID/2, k) / GRID`` so x, y lie in [-0.5, 0.5] and the base at z = 0;
    each vertex carries its voxel's palette RGB (alpha 255).
    """
    padded = np.pad(grid, 1)
    quads, colours = [], []
    for axis, step, corners in _FACES:
        neighbour = np.roll(padded, -step, axis=axis)[1:-1, 1:-1, 1:-1]
        idx = np.argwhere((grid > 0) & (neighbour == 0))
        quads.append(idx[:, None, :] + np.asarray(corners)[None])
        colours.append(grid[tuple(idx.T)])
    q = np.concatenate(quads).astype(np.float64)
    c = np.concatenate(colours)
    vertices = (q.reshape(-1, 3) - [GRID / 2, GRID / 2, 0]) / GRID
    base = np.arange(len(q))[:, None] * 4
    faces = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]])
    rgba = np.concatenate([np.repeat(_RGB[c], 4, axis=0), np.full((len(q) * 4, 1), 255, np.uint8)], axis=1)
    return trimesh.Trimesh(vertices, faces, vertex_colors=rgba, process=False)
