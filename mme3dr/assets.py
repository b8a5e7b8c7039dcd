"""Generated assets: load with trimesh, validate, convert to the canonical z-up frame, normalise.

Canonical frame (the TRELLIS/Toys4K render protocol): world z-up; the asset's axis-aligned bounding box is
centred at the origin and its largest extent is 1, so it fits in [-0.5, 0.5]^3. Scenes are flattened with
their node transforms baked in; each sub-mesh keeps its own visuals (texture + UVs, or vertex colours).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from mme3dr.adapters.base import parse_up_axis
from mme3dr.defaults import DEFAULTS

ASSET_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".off", ".stl")

#: Reason codes of :class:`AssetError`, with what each means.
REASONS: dict[str, str] = {
    "missing": "the asset file does not exist",
    "unsupported_format": f"the file extension is not one of {', '.join(ASSET_SUFFIXES)}",
    "unreadable": "trimesh could not parse the file (corrupt, truncated, or a companion file is missing)",
    "empty": "the file holds no geometry",
    "no_faces": "the geometry has vertices but no triangles (a point cloud or lines)",
    "invalid_faces": "faces index vertices that do not exist",
    "non_finite": "vertex coordinates contain NaN or Inf",
    "absurd_size": "the bounding box is degenerate (all points coincide) or absurdly large",
    "too_many_faces": "more faces than the configured limit",
}


class AssetError(Exception):
    """An asset failed to load or validate. ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, message: str, path: Path | str | None = None) -> None:
        assert reason in REASONS, reason
        self.reason = reason
        self.path = None if path is None else Path(path)
        self.message = message
        super().__init__(f"[{reason}] {path}: {message}" if path else f"[{reason}] {message}")


@dataclass
class Asset:
    """A loaded asset: triangle meshes in one frame, plus how they got there."""

    path: Path
    meshes: list[trimesh.Trimesh]
    up_axis: str  # the up axis declared for the source file
    #: 4x4 transform applied to the file's coordinates (rotation to z-up, then centring and scaling).
    transform: np.ndarray = field(default_factory=lambda: np.eye(4))

    @property
    def bounds(self) -> np.ndarray:
        return np.array([np.min([m.bounds[0] for m in self.meshes], axis=0),
                         np.max([m.bounds[1] for m in self.meshes], axis=0)])

    @property
    def n_faces(self) -> int:
        return int(sum(len(m.faces) for m in self.meshes))

    @property
    def n_vertices(self) -> int:
        return int(sum(len(m.vertices) for m in self.meshes))

    @property
    def has_texture(self) -> bool:
        return any(_texture_image(m) is not None for m in self.meshes)

    @property
    def has_vertex_colors(self) -> bool:
        return any(m.visual.kind == "vertex" for m in self.meshes)

    def concatenated(self) -> trimesh.Trimesh:
        """All sub-meshes as one geometry-only mesh (for geometry checks; visuals are dropped)."""
        return trimesh.util.concatenate([trimesh.Trimesh(m.vertices, m.faces, process=False) for m in self.meshes])


def _texture_image(mesh: trimesh.Trimesh) -> Any:
    if not isinstance(mesh.visual, trimesh.visual.TextureVisuals):
        return None
    mat = mesh.visual.material
    return getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)


def read_meshes(path: Path | str) -> list[trimesh.Trimesh]:
    """Read a file into triangle meshes with scene transforms baked in (no validation beyond parsing)."""
    path = Path(path)
    if not path.is_file():
        raise AssetError("missing", "no such file", path)
    if path.suffix.lower() not in ASSET_SUFFIXES:
        raise AssetError("unsupported_format", f"extension {path.suffix!r}; expected one of "
                         f"{', '.join(ASSET_SUFFIXES)}", path)
    try:
        scene = trimesh.load(path, force="scene", process=False)
        geoms = scene.dump(concatenate=False)
    except Exception as exc:  # trimesh raises many exception types for corrupt input
        raise AssetError("unreadable", f"{type(exc).__name__}: {exc}", path) from exc
    return [g for g in geoms if isinstance(g, trimesh.Trimesh)] or _non_mesh_error(geoms, path)


def _non_mesh_error(geoms: list[Any], path: Path) -> list[trimesh.Trimesh]:
    n_points = sum(len(getattr(g, "vertices", ())) for g in geoms)
    if n_points:
        raise AssetError("no_faces", f"{n_points} points/line vertices but no triangles", path)
    raise AssetError("empty", "no geometry in the file", path)


def validate_meshes(meshes: list[trimesh.Trimesh], path: Path | str,
                    max_faces: int = DEFAULTS.max_faces, min_extent: float = DEFAULTS.min_extent,
                    max_extent: float = DEFAULTS.max_extent) -> None:
    """Raise :class:`AssetError` for the first problem found, in the order of :data:`REASONS`."""
    faced = [m for m in meshes if len(m.faces)]
    n_vertices = sum(len(m.vertices) for m in meshes)
    if not faced:
        if n_vertices:
            raise AssetError("no_faces", f"{n_vertices} vertices but no triangles", path)
        raise AssetError("empty", "no vertices and no faces", path)
    for m in faced:
        if m.faces.min() < 0 or m.faces.max() >= len(m.vertices):
            raise AssetError("invalid_faces", f"a face indexes vertex {int(m.faces.max())} but the mesh has "
                             f"{len(m.vertices)} vertices", path)
    bad = sum(int((~np.isfinite(m.vertices)).any(axis=1).sum()) for m in faced)
    if bad:
        raise AssetError("non_finite", f"{bad} vertices have NaN or Inf coordinates", path)
    n_faces = sum(len(m.faces) for m in faced)
    if n_faces > max_faces:
        raise AssetError("too_many_faces", f"{n_faces:,} faces > limit {max_faces:,}", path)
    lo = np.min([m.vertices[np.unique(m.faces)].min(axis=0) for m in faced], axis=0)
    hi = np.max([m.vertices[np.unique(m.faces)].max(axis=0) for m in faced], axis=0)
    extent = float(np.max(hi - lo))
    if extent < min_extent:
        raise AssetError("absurd_size", f"largest extent {extent:.3g} < {min_extent:g}: every face is "
                         "collapsed to (almost) one point", path)
    if extent > max_extent:
        raise AssetError("absurd_size", f"largest extent {extent:.3g} > {max_extent:g} file units", path)


def up_axis_rotation(up_axis: str) -> np.ndarray:
    """4x4 rotation taking the declared up axis to +z by the shortest rotation.

    ``+y`` -> rotation of +90 deg about x, (x, y, z) -> (x, -z, y): the glTF/TRELLIS y-up to Blender z-up
    convention (glTF's +z front becomes -y). ``-z`` -> 180 deg about x.
    """
    axis = parse_up_axis(up_axis)
    u = np.zeros(3)
    u["xyz".index(axis[1])] = 1.0 if axis[0] == "+" else -1.0
    z = np.array([0.0, 0.0, 1.0])
    if np.allclose(u, z):
        return np.eye(4)
    if np.allclose(u, -z):
        return trimesh.transformations.rotation_matrix(np.pi, [1.0, 0.0, 0.0])
    angle = np.arccos(np.clip(u @ z, -1.0, 1.0))
    return trimesh.transformations.rotation_matrix(angle, np.cross(u, z))


def normalisation_transform(bounds: np.ndarray, half_extent: float = DEFAULTS.normalised_half_extent) -> np.ndarray:
    """4x4 transform x -> s * (x - c), c = bounding-box centre, s = 2 * half_extent / largest extent."""
    centre = (bounds[0] + bounds[1]) / 2.0
    scale = 2.0 * half_extent / float(np.max(bounds[1] - bounds[0]))
    t = np.eye(4)
    t[:3, :3] *= scale
    t[:3, 3] = -scale * centre
    return t


def _used_bounds(meshes: list[trimesh.Trimesh]) -> np.ndarray:
    pts = np.concatenate([m.vertices[np.unique(m.faces)] for m in meshes if len(m.faces)])
    return np.array([pts.min(axis=0), pts.max(axis=0)])


def load_asset(path: Path | str, up_axis: str = DEFAULTS.up_axis, normalise: bool = True, **limits: Any) -> Asset:
    """Read, validate and (by default) bring an asset into the canonical frame.

    Steps: read (scene flattened) -> :func:`validate_meshes` -> rotate ``up_axis`` to +z ->
    if ``normalise``, centre the bounding box of the faces' vertices and scale its largest extent to 1.
    Raises :class:`AssetError` with a reason code. ``limits`` are passed to :func:`validate_meshes`.
    """
    meshes = read_meshes(path)
    validate_meshes(meshes, path, **limits)
    meshes = [m for m in meshes if len(m.faces)]
    transform = up_axis_rotation(up_axis)
    for m in meshes:
        m.apply_transform(transform)
    if normalise:
        norm = normalisation_transform(_used_bounds(meshes))
        for m in meshes:
            m.apply_transform(norm)
        transform = norm @ transform
    return Asset(path=Path(path), meshes=meshes, up_axis=parse_up_axis(up_axis), transform=transform)


@dataclass
class AssetReport:
    """Outcome of checking one asset (one row of ``mme3dr validate``)."""

    prompt_id: str
    path: str | None
    ok: bool
    reason: str | None = None
    message: str | None = None
    n_meshes: int = 0
    n_vertices: int = 0
    n_faces: int = 0
    source_extent: float | None = None
    has_texture: bool = False
    has_vertex_colors: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_asset(prompt_id: str, path: Path | str, up_axis: str = DEFAULTS.up_axis) -> AssetReport:
    """Load and validate without raising: problems become a report with a reason code."""
    try:
        asset = load_asset(path, up_axis=up_axis, normalise=False)
    except AssetError as exc:
        return AssetReport(prompt_id, str(path), ok=False, reason=exc.reason, message=exc.message)
    b = asset.bounds
    return AssetReport(prompt_id, str(path), ok=True, n_meshes=len(asset.meshes), n_vertices=asset.n_vertices,
                       n_faces=asset.n_faces, source_extent=float(np.max(b[1] - b[0])),
                       has_texture=asset.has_texture, has_vertex_colors=asset.has_vertex_colors)
