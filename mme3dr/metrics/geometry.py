"""Geometry checks of a generated mesh: closedness, parts, floating parts, stability, degenerate faces, shape.

The asset is loaded with :func:`mme3dr.assets.load_asset` into the canonical frame (the adapter's declared up axis
turned to +z, bounding box centred, largest extent 1; normalisation never rotates), so every length below is in
*normalised units* (a fraction of the object's largest extent); the loader has dropped its zero-area faces
(see ``degenerate_faces``). All sub-meshes are concatenated, then vertices
whose coordinates agree after rounding to ``merge_digits`` decimals (default 6: about 1e-6 normalised units) are
merged, and faces that then use one vertex twice (collapsed to a point or a segment) are dropped: this is the
*merged mesh*. ``tol`` below is ``contact_tol`` (default 0.01).

**Resting pose.** Support and floating parts are judged with the object standing as generated, up to a small
tilt. The canonical frame is where the generator says the object stands upright, so a large tilt is the asset's
own fault, while a slight mis-levelling (a box generated 2 deg off) should not topple it. Rule: among the faces
of the convex hull of the merged mesh (for a flat mesh, whose hull has no volume, its plane seen from below),
take the one whose outward normal is closest to straight down; its angle to -z is the *tilt*. If the tilt is at
most ``max_tilt_deg`` (default 10 deg) the object is turned by that angle so that this face lies flat (it settles
onto it, as it would when put down); otherwise it is left as it is, standing on whatever reaches the ground (an
edge or a corner). The *resting pose* is the result, and the *ground* is its lowest z.

Values, with [direction; unit] (all are floats):

``watertight`` [higher; 0 or 1]
    1.0 if every edge of the merged mesh is shared by exactly two faces (trimesh ``is_watertight``), else 0.0.
``components`` [lower, 1 is ideal; a count]
    Number of connected components of the merged mesh, where faces are connected when they share a vertex
    (and hence when they share an edge).
``floating_area`` [lower, 0 is ideal; a fraction in [0, 1]]
    Share of the merged mesh's surface area that lies in *floating* components, so that a few specks of dust
    weigh what their area weighs (200 specks of side 0.002 on a unit box: about 0.001), while a detached seat
    hovering over its legs weighs a lot. A component floats when it is not connected to the ground (in the
    resting pose) through a chain of touching components. A component touches the ground when its lowest vertex
    is at most ``tol`` above the ground. Two components touch when some point of one lies within ``tol`` of some
    point of the other, the points of each component being its vertices plus its share of ``contact_samples``
    area-weighted random surface samples (seeded by ``seed``), thinned to one point per component and cube of
    side ``tol / 4`` so that the KD-tree work stays bounded for dense meshes. Every point lies on the surface,
    so a gap wider than ``tol`` is never taken for contact; a contact is missed only if no pair of points lands
    within ``tol`` of each other, which the sample density makes unlikely for touching faces. Support is
    transitive: a part resting on a part that stands on the ground is supported, while parts that touch only
    each other and hover together all float. The number of floating components is kept in ``details``.
``stable`` [higher; 0 or 1]
    1.0 if the object stands on a support polygon of positive area with its centre of mass inside it by at least
    ``min_margin`` (default 0.01 normalised units): ``support == "polygon"`` and ``stability_margin >=
    min_margin`` (which implies a polygon area of at least pi min_margin^2), else 0.0. In the resting pose, the
    *support points* are the vertices at most ``tol`` above the ground, and the support polygon is the 2D convex
    hull of their (x, y). With fewer than three non-collinear support points the support is a segment or a
    point, with no area: a cone on its apex, a needle on its tip, a zero-thickness sheet standing on its edge
    and a box balanced on an edge are unstable, however exactly the centre of mass sits above the support.
    The centre of mass is the volume centroid (trimesh ``center_mass``) when the merged mesh is a volume
    (watertight, consistently wound, positive volume; trimesh ``is_volume``), else the area-weighted centroid
    of the surface (trimesh ``centroid``).
``stability_margin`` [higher; normalised units]
    Signed distance, in the resting pose, from the centre of mass projected on the ground to the boundary of the
    support polygon: the distance to the nearest boundary edge, positive when inside, negative when outside.
    For a segment or point support it is minus the distance to that segment or point (never positive).
``degenerate_faces`` [lower; a fraction in [0, 1]]
    Fraction of the faces of the file whose area is at most ``degenerate_area`` (default
    ``DEFAULTS.degenerate_area``, 1e-10 squared normalised units): faces with a repeated vertex, collinear vertices
    or slivers. The loader drops the faces at or below that bound (relative to the file's extent) and counts them
    (``Asset.zero_area_faces``); they count here, with any face of the loaded mesh at or below ``degenerate_area``,
    out of all the file's faces.
``aspect_ratio`` [direction "none": neither larger nor smaller is better; a ratio >= 1]
    Largest / smallest extent of the axis-aligned bounding box of the merged mesh in the canonical frame, the
    smallest extent being clamped below at ``min_extent`` (default 1e-3), so a flat sheet reports
    ``1 / min_extent`` (1000) rather than infinity.

``details`` holds ``extents`` ([x, y, z] of the bounding box), ``n_faces`` (the file's faces, zero-area ones
included), ``com``
([x, y, z] of the centre of mass used, canonical frame), ``com_kind`` ("volume" or "surface"), ``tilt_deg`` (the
angle of the most nearly horizontal hull face below the object), ``settled`` (whether the object was turned onto
that face), ``support`` ("polygon", "segment" or "point"), ``support_area`` (area of the support polygon, 0 for a
segment or point) and ``floating_parts`` (the number of floating components).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import ConvexHull, QhullError, cKDTree

from mme3dr.assets import AssetError, load_asset
from mme3dr.defaults import DEFAULTS
from mme3dr.errors import InputError
from mme3dr.metrics.base import HIGHER, LOWER, NONE, MetricResult, PromptMetric, ScoreItem

DOWN = np.array([0.0, 0.0, -1.0])


class GeometryMetric(PromptMetric):
    """Mesh sanity and physical plausibility checks; see the module docstring for every definition."""

    name = "geometry"
    needs = "asset"
    in_processes = True
    directions: ClassVar[dict[str, str]] = {
        "watertight": HIGHER,
        "components": LOWER,
        "floating_area": LOWER,
        "stable": HIGHER,
        "stability_margin": HIGHER,
        "degenerate_faces": LOWER,
        "aspect_ratio": NONE,
    }

    def __init__(self, contact_tol: float = 0.01, min_margin: float = 0.01, max_tilt_deg: float = 10.0,
                 merge_digits: int = 6, contact_samples: int = 100_000,
                 degenerate_area: float = DEFAULTS.degenerate_area,
                 min_extent: float = 1e-3, seed: int = 0) -> None:
        if contact_tol <= 0 or min_extent <= 0 or min_margin <= 0:
            raise InputError(f"contact_tol ({contact_tol}), min_margin ({min_margin}) and min_extent "
                             f"({min_extent}) must be positive")
        if not 0 <= max_tilt_deg < 90:
            raise InputError(f"max_tilt_deg must be in [0, 90), got {max_tilt_deg}")
        self.contact_tol = contact_tol
        self.min_margin = min_margin
        self.max_tilt_deg = max_tilt_deg
        self.merge_digits = merge_digits
        self.contact_samples = contact_samples
        self.degenerate_area = degenerate_area
        self.min_extent = min_extent
        self.seed = seed

    def config(self) -> dict[str, Any]:
        return {"contact_tol": self.contact_tol, "min_margin": self.min_margin, "max_tilt_deg": self.max_tilt_deg,
                "merge_digits": self.merge_digits, "contact_samples": self.contact_samples,
                "degenerate_area": self.degenerate_area, "min_extent": self.min_extent, "seed": self.seed}

    def score(self, item: ScoreItem) -> MetricResult:
        if item.asset_path is None:
            raise ValueError(f"{item.prompt_id}: no asset to score")
        asset = load_asset(item.asset_path, up_axis=item.up_axis)
        raw, dropped = asset.concatenated(), asset.zero_area_faces
        mesh = merged_mesh(raw, self.merge_digits)
        if not mesh.area > 0:
            raise AssetError("no_faces", "every face has zero area: the mesh is points or lines", item.asset_path)
        labels = component_labels(mesh)
        com, com_kind = centre_of_mass(mesh)
        turn, tilt = resting_rotation(mesh.vertices, self.max_tilt_deg)
        resting = mesh.copy()
        resting.apply_transform(turn)
        margin, support, support_area = stability_margin(resting.vertices, turn[:3, :3] @ com, self.contact_tol)
        floating = floating_components(resting, labels, self.contact_tol, self.contact_samples, self.seed)
        area = np.bincount(labels[mesh.faces[:, 0]], weights=mesh.area_faces, minlength=len(floating))
        extents = np.ptp(mesh.vertices, axis=0)
        values = {
            "watertight": float(mesh.is_watertight),
            "components": float(len(floating)),
            "floating_area": float(area[floating].sum() / area.sum()),
            "stable": float(support == "polygon" and margin >= self.min_margin),
            "stability_margin": margin,
            "degenerate_faces": float((dropped + np.sum(raw.area_faces <= self.degenerate_area))
                                      / (dropped + len(raw.faces))),
            "aspect_ratio": float(extents.max() / max(extents.min(), self.min_extent)),
        }
        details = {"extents": extents.tolist(), "n_faces": dropped + len(raw.faces), "com": com.tolist(),
                   "com_kind": com_kind, "tilt_deg": tilt, "settled": tilt <= self.max_tilt_deg,
                   "support": support, "support_area": support_area, "floating_parts": int(floating.sum())}
        return MetricResult(values=values, details=details)


def merged_mesh(mesh: trimesh.Trimesh, digits: int) -> trimesh.Trimesh:
    """Copy of ``mesh`` with vertices equal after rounding to ``digits`` decimals merged, faces that then repeat
    a vertex dropped, and unreferenced vertices removed."""
    out = mesh.copy()
    out.merge_vertices(merge_tex=True, merge_norm=True, digits_vertex=digits)
    f = out.faces
    out.update_faces((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2]))
    out.remove_unreferenced_vertices()
    return out


def component_labels(mesh: trimesh.Trimesh) -> np.ndarray:
    """Per-vertex component index 0..n-1 of the graph of mesh edges (every vertex is referenced by a face)."""
    return trimesh.graph.connected_component_labels(mesh.edges_unique, node_count=len(mesh.vertices))


def resting_rotation(vertices: np.ndarray, max_tilt_deg: float) -> tuple[np.ndarray, float]:
    """The 4x4 rotation into the resting pose and the tilt in degrees; see "Resting pose" in the module docstring.

    Candidate faces: the facets of the 3D convex hull (outward unit normals ``n``), or, when Qhull finds no 3D
    hull (a flat mesh), the mesh's plane with both normals (the last right singular vector of the centred
    vertices). tilt = arccos(max n . (0, 0, -1)). The rotation turns that normal onto -z (trimesh
    ``align_vectors``) when tilt <= ``max_tilt_deg``, else it is the identity.
    """
    try:
        normals = ConvexHull(vertices).equations[:, :3]
    except QhullError:  # coplanar (or collinear) vertices: a flat object
        plane = np.linalg.svd(vertices - vertices.mean(axis=0), full_matrices=False)[2][-1]
        normals = np.stack([plane, -plane])
    cosines = normals @ DOWN
    best = int(np.argmax(cosines))
    tilt = float(np.degrees(np.arccos(np.clip(cosines[best], -1.0, 1.0))))
    if tilt > max_tilt_deg:
        return np.eye(4), tilt
    return trimesh.geometry.align_vectors(normals[best], DOWN), tilt


def floating_components(mesh: trimesh.Trimesh, labels: np.ndarray, tol: float, n_samples: int,
                        seed: int) -> np.ndarray:
    """Per component: True when it is not connected to the ground through a chain of contacts; see
    ``floating_area`` in the module docstring. Contacts are graph edges; a component floats when its connected
    group holds no grounded one."""
    n = int(labels.max()) + 1
    z = mesh.vertices[:, 2]
    lowest = np.full(n, np.inf)
    np.minimum.at(lowest, labels, z)
    candidates = lowest > z.min() + tol
    if not candidates.any():
        return candidates
    samples, face_index = trimesh.sample.sample_surface(mesh, n_samples, seed=seed)
    points = np.vstack([mesh.vertices, samples])
    owner = np.concatenate([labels, labels[mesh.faces[face_index, 0]]])
    cell = _cell_index(points, tol / 4)
    keep = np.unique(owner * (cell.max() + 1) + cell, return_index=True)[1]  # one point per (component, cell)
    points, owner, cell = points[keep], owner[keep], cell[keep]
    order = np.lexsort((owner, cell))  # owners sharing a cell (at most sqrt(3) tol / 4 apart) touch
    same_cell = cell[order][1:] == cell[order][:-1]
    edges = [np.stack([owner[order][:-1][same_cell], owner[order][1:][same_cell]])]
    asked = candidates[owner]
    pairs = cKDTree(points[asked]).sparse_distance_matrix(cKDTree(points), tol, output_type="ndarray")
    edges.append(np.stack([owner[asked][pairs["i"]], owner[pairs["j"]]]))
    e = np.concatenate(edges, axis=1)
    graph = coo_matrix((np.ones(e.shape[1]), (e[0], e[1])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    return ~np.isin(group, np.unique(group[~candidates]))


def _cell_index(points: np.ndarray, side: float) -> np.ndarray:
    """Index 0..m-1 of the occupied cube of side ``side`` (of a grid through the origin) holding each point."""
    grid = np.floor(points / side).astype(np.int64)
    grid -= grid.min(axis=0)
    return np.unique(np.ravel_multi_index(grid.T, grid.max(axis=0) + 1), return_inverse=True)[1].reshape(-1)


def centre_of_mass(mesh: trimesh.Trimesh) -> tuple[np.ndarray, str]:
    """Volume centroid if ``mesh.is_volume``, else the area-weighted surface centroid; with its kind."""
    if mesh.is_volume:
        return np.asarray(mesh.center_mass, dtype=float), "volume"
    return np.asarray(mesh.centroid, dtype=float), "surface"


def stability_margin(vertices: np.ndarray, com: np.ndarray, tol: float) -> tuple[float, str, float]:
    """Signed distance from ``com[:2]`` to the boundary of the support (positive inside), the support kind and
    the support polygon's area (0 for a segment or a point).

    Support points: (x, y) of the vertices with z <= lowest z + ``tol``. Their convex hull is the polygon; when
    Qhull finds no 2D hull (fewer than 3 non-collinear points) the support is the segment between the two
    extreme points along their common line, or a single point, and the margin is minus the distance to it.
    """
    z = vertices[:, 2]
    xy = np.unique(vertices[z <= z.min() + tol, :2], axis=0)
    p = com[:2]
    try:
        hull = ConvexHull(xy)
    except QhullError:  # fewer than 3 points, or all collinear
        a, b = _extreme_pair(xy)
        return -_distance_to_segments(p, a[None], b[None]), "point" if np.array_equal(a, b) else "segment", 0.0
    ring = xy[hull.vertices]  # counter-clockwise
    distance = _distance_to_segments(p, ring, np.roll(ring, -1, axis=0))
    inside = bool(np.all(hull.equations[:, :2] @ p + hull.equations[:, 2] <= 0))
    return (distance if inside else -distance), "polygon", float(hull.volume)  # a 2D hull's volume is its area


def _extreme_pair(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two points of a collinear set farthest apart (the same point twice for a single point)."""
    far = xy[np.argmax(np.linalg.norm(xy - xy[0], axis=1))]
    return xy[np.argmax(np.linalg.norm(xy - far, axis=1))], far


def _distance_to_segments(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Smallest Euclidean distance from point ``p`` to the segments ``a[i]``-``b[i]``: with t = clip(
    (p - a)·(b - a) / |b - a|^2, 0, 1), the distance to segment i is |a + t (b - a) - p|."""
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-300), 0.0, 1.0)
    return float(np.min(np.linalg.norm(a + t[:, None] * ab - p, axis=1)))
