"""A coloured mesh back to the palette grid of :mod:`~reference_policy.world.grid` (:func:`voxelise_mesh`), so that
meshes (the world's :func:`~reference_policy.world.grid.to_mesh`, the reference adapter's marching-cubes
``surface_mesh``, any generator's output) are scored by the same verifiers as grids.

Frame (voxel units, z up; voxel ``(i, j, k)`` is the cube ``[i, i+1) x [j, j+1) x [k, k+1)``):

- ``fit=False``: the frame of ``to_mesh``, ``voxel = position * GRID + (GRID/2, GRID/2, 0)``.
- ``fit=True``: ``scale`` voxels per mesh unit, then the bounding box is put on ``z = 0`` and centred in x/y at
  the integer offset ``floor((GRID - width) / 2)``. A *voxel mesh* keeps its own lattice: when every vertex
  coordinate, measured from the bounding-box minimum, is a multiple of ``pitch`` (faces all axis-aligned: cube
  faces, as ``to_mesh`` writes) or of ``pitch / 2`` (otherwise: marching cubes puts vertices on the midpoints
  between voxel centres) for ``pitch = extent / n`` with ``n <= GRID`` (the smallest such ``n``; tolerance
  ``LATTICE_TOL`` of the step), one lattice cell becomes one voxel (``scale = n / extent``). Any other mesh is
  scaled so its largest extent spans ``GRID`` voxels (``scale = GRID / extent``). Scaling a voxel object by a
  non-integer factor resamples it, which closes one-voxel gaps between pieces and breaks thin parts: that is
  what made ground-truth meshes fail their own count checks before the lattice was kept.

Occupancy: for a closed mesh (every edge, vertices merged by position, is shared by an even number of faces) a
voxel is occupied when its centre is inside the surface: the parity of the crossings of a vertical ray through
the centre (the ray is shifted by ``RAY_OFFSET`` so it misses edges and vertices). This is exact for both voxel
meshes (the marching-cubes surface passes between occupied and empty centres; its chamfers cut through empty
voxels at concave corners, so "a voxel the surface passes through" would be wrong there). An open mesh has no
inside: its surface voxels (the voxels of the colour samples below) are filled with ``binary_fill_holes``.

Colour: surface samples are each vertex (its own colour), each face centroid (the most common colour of its
vertices) and ``samples`` area-weighted random points (the colour of their nearest vertex by barycentric weight;
face colours where the mesh has no vertex colours); each is pushed ``INSET`` voxel inwards along its normal and
mapped to the nearest palette colour. Every visible voxel (occupied, with an empty 6-neighbour) takes the colour of
the sample nearest to its centre; colours are never averaged across a boundary, so a small part (an eye) keeps
its own colour. Hidden voxels cannot be seen on any surface: each takes the colour of the nearest visible voxel of
its own layer ``z`` (of any layer when its layer has none), so stacked parts (a tower's floors and the slabs
between them) stay apart. The world is built so that no part is joined or split only through hidden voxels
(:mod:`~reference_policy.world.families`); on it, a ground-truth mesh comes back as its grid up to a translation,
occupancy and visible colours exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree

from reference_policy.world.grid import GRID, PALETTE

LATTICE_TOL = 1e-3
RAY_OFFSET = (3.1e-4, 7.3e-4)
INSET = 0.25
_RGB = np.array(list(PALETTE.values()), dtype=np.float32)


def lattice_cells(vertices: np.ndarray, axis_aligned: bool, max_cells: int = GRID) -> int | None:
    """Cells ``n <= max_cells`` along the largest extent when the vertices lie on a lattice (module docstring)."""
    rel = vertices - vertices.min(axis=0)
    extent = float(rel.max())
    if extent <= 0:
        return None
    values = np.unique(np.round(rel.ravel() / extent, 9))
    sub = 1 if axis_aligned else 2
    for n in range(1, max_cells + 1):
        q = values * (sub * n)
        if np.abs(q - np.round(q)).max() < LATTICE_TOL:
            return n
    return None


def fit_frame(mesh: trimesh.Trimesh, fit: bool = True) -> tuple[float, np.ndarray]:
    """``(scale, shift)`` with ``voxel position = vertex * scale + shift`` (module docstring)."""
    if not fit:
        return float(GRID), np.array([GRID / 2, GRID / 2, 0.0])
    lo, hi = mesh.bounds
    extent = max(float((hi - lo).max()), 1e-9)
    normals = np.abs(mesh.face_normals[mesh.area_faces > 0])
    axis_aligned = bool(len(normals)) and bool(np.all(normals.max(axis=1) > 1 - 1e-6))
    n = lattice_cells(np.asarray(mesh.vertices, np.float64), axis_aligned)
    scale = (n if n is not None else GRID) / extent
    offset = np.floor((GRID - (hi[:2] - lo[:2]) * scale) / 2 + LATTICE_TOL)
    return scale, np.array([*(offset - lo[:2] * scale), -lo[2] * scale])


def is_closed(mesh: trimesh.Trimesh) -> bool:
    """Every edge, vertices merged by position, is shared by an even number of faces (a closed surface mod 2)."""
    _, inverse = np.unique(np.round(np.asarray(mesh.vertices, np.float64), 6), axis=0, return_inverse=True)
    faces = inverse.reshape(-1)[mesh.faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return len(faces) > 0 and bool(np.all(counts % 2 == 0))


def inside_centres(triangles: np.ndarray) -> np.ndarray:
    """bool ``[GRID]^3``: voxel centres inside the closed surface ``triangles`` (voxel units), by the parity of
    the crossings of vertical rays at ``(i + 0.5, j + 0.5) + RAY_OFFSET`` below each centre ``k + 0.5``."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    keep = np.abs(det) > 1e-12  # vertical faces are parallel to the rays
    a, b, c, det = a[keep], b[keep], c[keep], det[keep]
    xy = np.stack([a[:, :2], b[:, :2], c[:, :2]], axis=1)
    off = np.asarray(RAY_OFFSET)
    i0 = np.clip(np.ceil(xy.min(axis=1) - 0.5 - off), 0, GRID).astype(int)
    i1 = np.clip(np.floor(xy.max(axis=1) - 0.5 - off), -1, GRID - 1).astype(int)
    nx, ny = np.maximum(i1[:, 0] - i0[:, 0] + 1, 0), np.maximum(i1[:, 1] - i0[:, 1] + 1, 0)
    per = nx * ny
    tri = np.repeat(np.arange(len(a)), per)
    if len(tri) == 0:
        return np.zeros((GRID,) * 3, bool)
    local = np.arange(len(tri)) - np.repeat(np.cumsum(per) - per, per)
    ci = i0[tri, 0] + local // ny[tri]
    cj = i0[tri, 1] + local % ny[tri]
    px, py = ci + 0.5 + off[0], cj + 0.5 + off[1]
    at, bt, ct, dt = a[tri], b[tri], c[tri], det[tri]
    u = ((px - at[:, 0]) * (ct[:, 1] - at[:, 1]) - (ct[:, 0] - at[:, 0]) * (py - at[:, 1])) / dt
    v = ((bt[:, 0] - at[:, 0]) * (py - at[:, 1]) - (px - at[:, 0]) * (bt[:, 1] - at[:, 1])) / dt
    hit = (u >= 0) & (v >= 0) & (u + v <= 1)
    z = at[hit, 2] + u[hit] * (bt[hit, 2] - at[hit, 2]) + v[hit] * (ct[hit, 2] - at[hit, 2])
    first_above = np.clip(np.ceil(z - 0.5), 0, GRID).astype(int)  # first voxel centre above the crossing
    counts = np.zeros((GRID, GRID, GRID + 1), np.int32)
    np.add.at(counts, (ci[hit], cj[hit], first_above), 1)
    return (np.cumsum(counts, axis=2)[:, :, :GRID] % 2).astype(bool)


def _palette(rgb: np.ndarray) -> np.ndarray:
    """Nearest palette index (1-based grid value) of each RGB row."""
    return ((rgb[:, None, :] - _RGB[None]) ** 2).sum(-1).argmin(1).astype(np.uint8) + 1


def _colour_samples(mesh: trimesh.Trimesh, scale: float, shift: np.ndarray, samples: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Surface points (voxel units, pushed ``INSET`` inwards) and their palette values (module docstring)."""
    tri = mesh.triangles * scale + shift
    n_faces = len(tri)
    if mesh.visual.kind == "vertex":
        vertex_pal = _palette(np.asarray(mesh.visual.vertex_colors, np.float32)[:, :3])
        corner_pal = vertex_pal[mesh.faces]
        same01 = corner_pal[:, 1] == corner_pal[:, 2]
        centroid_pal = np.where(same01, corner_pal[:, 1], corner_pal[:, 0])  # the mode of three (ties: first)
    else:
        face_pal = _palette(np.asarray(mesh.visual.face_colors, np.float32)[:, :3])
        corner_pal, centroid_pal, vertex_pal = np.repeat(face_pal[:, None], 3, axis=1), face_pal, None
    rng = np.random.default_rng(seed)
    area = mesh.area_faces
    picks = rng.choice(n_faces, size=samples, p=area / area.sum()) if area.sum() > 0 else np.zeros(0, int)
    uv = rng.random((len(picks), 2))
    uv = np.where(uv.sum(1, keepdims=True) > 1, 1 - uv, uv)
    bary = np.concatenate([1 - uv.sum(1, keepdims=True), uv], axis=1)
    t = tri[picks]
    points = [tri.mean(axis=1) - INSET * mesh.face_normals,
              (bary[:, :, None] * t).sum(1) - INSET * mesh.face_normals[picks]]
    colours = [centroid_pal, corner_pal[picks, bary.argmax(1)]]
    if vertex_pal is not None:
        points.append(mesh.vertices * scale + shift - INSET * mesh.vertex_normals)
        colours.append(vertex_pal)
    return np.concatenate(points), np.concatenate(colours)


def voxelise_mesh(mesh: trimesh.Trimesh | str | Path, fit: bool = True, samples: int = 20000,
                  seed: int = 0) -> np.ndarray:
    """A coloured mesh (file or trimesh; z up) -> uint8 ``[GRID]^3`` palette grid, by the rules of the module
    docstring."""
    if not isinstance(mesh, trimesh.Trimesh):
        mesh = trimesh.load(mesh, force="mesh", process=False)
    scale, shift = fit_frame(mesh, fit)
    points, colours = _colour_samples(mesh, scale, shift, samples, seed)
    if is_closed(mesh):
        occupied = inside_centres(mesh.triangles * scale + shift)
    else:
        surface = np.zeros((GRID,) * 3, bool)
        surface[tuple(np.clip(np.floor(points).astype(int), 0, GRID - 1).T)] = True
        occupied = ndimage.binary_fill_holes(surface)
    grid = np.zeros((GRID,) * 3, np.uint8)
    visible = occupied & ~ndimage.binary_erosion(occupied, border_value=0)
    centres = np.argwhere(visible)
    if len(centres) == 0 or len(points) == 0:
        return grid
    _, nearest = cKDTree(points).query(centres + 0.5)
    grid[tuple(centres.T)] = colours[nearest]
    _, src = ndimage.distance_transform_edt(~visible, sampling=(1.0, 1.0, 4.0 * GRID), return_indices=True)
    hidden = occupied & ~visible
    grid[hidden] = grid[tuple(s[hidden] for s in src)]
    return grid
