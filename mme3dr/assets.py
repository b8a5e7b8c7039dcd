"""Generated assets: load with trimesh, validate, convert to the canonical z-up frame, normalise; read colours.

Loading has a budget (:func:`load_asset`): it runs in a loader process with a time limit and an address-space
limit (:mod:`mme3dr.asset_worker`), after the file and its companions have been checked without parsing
(:mod:`mme3dr.asset_files`: regular files inside the asset's folder, sizes within the budget, headers that do not
lie). Zero-area faces are dropped and counted; a mesh with no other face is ``degenerate``.

Canonical frame (the TRELLIS/Toys4K render protocol): world z-up; the asset's axis-aligned bounding box is
centred at the origin and its largest extent is 1, so it fits in [-0.5, 0.5]^3. Scenes are flattened with
their node transforms baked in; each sub-mesh keeps its own visuals (texture + UVs, or vertex colours).

Colour (:func:`base_colour`): one convention whatever the container, so the same painted colour renders the same
from a GLB texture, GLB vertex colours, PLY vertex or face colours and OBJ + MTL:
  - every stored colour is an sRGB-encoded display colour: texture pixels, vertex colours, face colours and OBJ
    ``Kd``. They are decoded to linear light with the sRGB transfer function (IEC 61966-2-1) before shading.
    This includes glTF ``COLOR_0``, which the glTF spec defines as linear: common writers (trimesh among them)
    store display colours there, and reading it as sRGB keeps a GLB's vertex colours equal to its texture;
  - glTF ``baseColorFactor`` is linear (the glTF spec) and multiplies the texture;
  - an OBJ/PLY texture (``map_Kd``) is the base colour on its own: ``Kd`` does not multiply it (Blender's OBJ
    importer does the same; Blender's exporter writes ``Kd 0.8`` beside every texture). ``Kd`` alone is a colour;
  - a texture needs an image and a UV per vertex. UVs without an image (Toys4K's ``mesh.ply``) are no texture:
    trimesh's grey 2x2 placeholder image is not the file's colour, and such a mesh has no colour ("none");
  - alpha is linear everywhere.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import trimesh
from PIL import Image

from mme3dr.defaults import DEFAULTS
from mme3dr.errors import InputError, Mme3drError

if TYPE_CHECKING:
    from mme3dr.asset_worker import BudgetedWorker

ASSET_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".off", ".stl")

#: Up axes a generator may declare for its assets; each is turned into the canonical z-up frame on load.
UP_AXES = ("+x", "-x", "+y", "-y", "+z", "-z")


def parse_up_axis(axis: str) -> str:
    """Normalise ``"y"``/``"+Y"``/``"-z"`` to one of :data:`UP_AXES`."""
    a = axis.strip().lower()
    a = a if a[:1] in "+-" else "+" + a
    if a not in UP_AXES:
        raise InputError(f"up axis {axis!r} is not one of {', '.join(UP_AXES)} (a bare 'y' means '+y')")
    return a


#: Reason codes of :class:`AssetError`, with what each means, in the order the checks run.
REASONS: dict[str, str] = {
    "missing": "the asset file does not exist",
    "unsupported_format": f"the file extension is not one of {', '.join(ASSET_SUFFIXES)}",
    "not_a_file": "the asset or a companion file is not a regular file (a FIFO, a device, a folder, a symlink loop)",
    "too_large": "a file, a texture or the declared data is past the loading budget, or loading needed more memory "
                 "than the budget",
    "outside_folder": "a companion file (material, texture, buffer) lies outside the asset's folder",
    "unsupported_compression": "glTF geometry compressed with a codec that no installed decoder reads (Draco "
                               "without DracoPy, meshopt)",
    "unreadable": "the file could not be parsed (corrupt, truncated, a header that lies, a companion file missing)",
    "timeout": "loading took longer than the time budget",
    "empty": "the file holds no geometry",
    "no_faces": "the geometry has vertices but no triangles (a point cloud or lines)",
    "invalid_faces": "faces index vertices that do not exist",
    "non_finite": "vertex coordinates contain NaN or Inf",
    "too_many_faces": "more faces than the configured limit",
    "absurd_size": "the bounding box is degenerate (all points coincide) or absurdly large",
    "degenerate": "no face has a positive area (every face is a point or a line segment)",
}


class AssetError(Mme3drError):
    """An asset failed to load or validate. ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, message: str, path: Path | str | None = None) -> None:
        assert reason in REASONS, reason
        self.reason = reason
        self.path = None if path is None else Path(path)
        self.message = message
        super().__init__(f"[{reason}] {path}: {message}" if path else f"[{reason}] {message}")

    def __reduce__(self):  # pickles with its fields (errors travel back from the loader process)
        return AssetError, (self.reason, self.message, self.path)


@dataclass
class Asset:
    """A loaded asset: triangle meshes in one frame, plus how they got there."""

    path: Path
    meshes: list[trimesh.Trimesh]
    up_axis: str  # the up axis declared for the source file
    #: 4x4 transform applied to the file's coordinates (rotation to z-up, then centring and scaling).
    transform: np.ndarray = field(default_factory=lambda: np.eye(4))
    #: Zero-area faces dropped at load (see :func:`drop_zero_area_faces`); not in ``meshes`` nor ``n_faces``.
    zero_area_faces: int = 0

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
        """Some sub-mesh has a usable texture (an image and UVs; see :func:`base_colour`)."""
        return any(base_colour(m).kind == "texture" for m in self.meshes)

    @property
    def has_vertex_colors(self) -> bool:
        """Some sub-mesh has per-vertex or per-face colours."""
        return any(base_colour(m).kind in ("vertex", "face") for m in self.meshes)

    def concatenated(self) -> trimesh.Trimesh:
        """All sub-meshes as one geometry-only mesh (for geometry checks; visuals are dropped)."""
        return trimesh.util.concatenate([trimesh.Trimesh(m.vertices, m.faces, process=False) for m in self.meshes])


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """sRGB decoding (IEC 61966-2-1) of values in [0, 1]: c / 12.92 if c <= 0.04045, else ((c + 0.055) / 1.055)^2.4."""
    c = np.asarray(values, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _decode_rgba8(rgba: np.ndarray) -> np.ndarray:
    """(n, 4) 8-bit sRGB colours with linear alpha -> (n, 4) linear float32."""
    x = np.asarray(rgba, dtype=np.float64).reshape(-1, 4) / 255.0
    return np.column_stack([srgb_to_linear(x[:, :3]), x[:, 3]]).astype(np.float32)


@dataclass(frozen=True)
class BaseColour:
    """The base (albedo) colour of one sub-mesh, in the one convention of the module docstring.

    ``kind``: ``"texture"`` (``image`` sampled at ``uv``, times ``factor``), ``"vertex"`` (``rgba`` per vertex),
    ``"face"`` (``rgba`` per face), ``"uniform"`` (``factor``) or ``"none"`` (the file has no colour).
    ``image`` keeps its sRGB-encoded pixels (decoded when sampled); ``rgba`` and ``factor`` are linear RGBA.
    """

    kind: str
    factor: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    image: Image.Image | None = None
    uv: np.ndarray | None = None
    rgba: np.ndarray | None = None

    @property
    def translucent(self) -> bool:
        """Some alpha below 1 (factor, per-vertex/face alpha or texture alpha)."""
        if self.factor[3] < 1.0 or (self.rgba is not None and bool((self.rgba[:, 3] < 1.0).any())):
            return True
        return self.image is not None and self.image.mode == "RGBA" and np.asarray(self.image)[..., 3].min() < 255


def _is_trimesh_placeholder(image: Image.Image | None) -> bool:
    """trimesh gives texture visuals without an image a 2x2 grey image of its own (``color_image()``)."""
    if image is None or image.size != (2, 2):
        return False
    return np.array_equal(np.asarray(image), np.asarray(trimesh.visual.material.color_image()))


def _texture_mode(image: Image.Image) -> Image.Image:
    has_alpha = "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if has_alpha else "RGB")


def base_colour(mesh: trimesh.Trimesh) -> BaseColour:
    """The base colour of a loaded sub-mesh, whatever its container stored (rules in the module docstring)."""
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.ColorVisuals):
        if visual.kind == "vertex":
            return BaseColour("vertex", rgba=_decode_rgba8(visual.vertex_colors))
        if visual.kind == "face":
            return BaseColour("face", rgba=_decode_rgba8(visual.face_colors))
        return BaseColour("none")
    if not isinstance(visual, trimesh.visual.TextureVisuals):
        return BaseColour("none")
    mat = visual.material
    has_uv = visual.uv is not None and len(visual.uv) == len(mesh.vertices)
    if isinstance(mat, trimesh.visual.material.PBRMaterial):  # glTF: factor linear, multiplies the texture
        f = mat.baseColorFactor
        factor = (1.0, 1.0, 1.0, 1.0) if f is None else tuple(float(v) / 255.0 for v in np.asarray(f, float))
        image = mat.baseColorTexture
        if image is not None and has_uv:
            return BaseColour("texture", factor=factor, image=_texture_mode(image), uv=np.asarray(visual.uv))
        return BaseColour("uniform", factor=factor)
    if isinstance(mat, trimesh.visual.material.SimpleMaterial):  # OBJ / PLY: Kd (sRGB) or the texture alone
        image = getattr(mat, "image", None)
        if _is_trimesh_placeholder(image):
            return BaseColour("none")
        if image is not None and has_uv:
            return BaseColour("texture", image=_texture_mode(image), uv=np.asarray(visual.uv))
        return BaseColour("uniform", factor=tuple(float(v) for v in _decode_rgba8(mat.diffuse)[0]))
    return BaseColour("none")


def read_meshes(path: Path | str, max_faces: int = DEFAULTS.max_faces) -> list[trimesh.Trimesh]:
    """Read a file into triangle meshes with scene transforms baked in (no validation beyond parsing).

    Before parsing, the file and every companion it names are checked (:mod:`mme3dr.asset_files`: regular files
    inside the asset's folder, sizes within the budget, headers that do not lie); companions are read only through
    :class:`~mme3dr.asset_files.GuardedResolver`. This runs in the calling process, without a time or memory
    budget: :func:`load_asset` runs it in the loader process.
    """
    from mme3dr.asset_files import GuardedResolver, check_declared_sizes, check_regular_file

    path = Path(path)
    if not os.path.lexists(path):
        raise AssetError("missing", "no such file", path)
    if path.suffix.lower() not in ASSET_SUFFIXES:
        raise AssetError("unsupported_format", f"extension {path.suffix!r}; expected one of "
                         f"{', '.join(ASSET_SUFFIXES)}", path)
    check_regular_file(path)
    resolver = GuardedResolver(path)
    check_declared_sizes(path, resolver, max_faces)
    try:
        scene = trimesh.load(str(path), resolver=resolver, force="scene", process=False)
        geoms = scene.dump(concatenate=False)
    except MemoryError:
        raise
    except Exception as exc:  # trimesh raises many exception types for corrupt input
        raise resolver.problem or AssetError("unreadable", f"{type(exc).__name__}: {exc}", path) from exc
    if resolver.problem is not None:  # trimesh went on without a companion it was refused
        raise resolver.problem
    return [g for g in geoms if isinstance(g, trimesh.Trimesh)] or _non_mesh_error(geoms, path)


def _non_mesh_error(geoms: list[Any], path: Path) -> list[trimesh.Trimesh]:
    n_points = sum(len(getattr(g, "vertices", ())) for g in geoms)
    if n_points:
        raise AssetError("no_faces", f"{n_points} points/line vertices but no triangles", path)
    raise AssetError("empty", "no geometry in the file", path)


def face_areas(vertices: np.ndarray, faces: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Area of each triangle, |(b - a) x (c - a)| / 2, computed in chunks so that memory stays bounded."""
    out = np.empty(len(faces))
    for s in range(0, len(faces), chunk):
        a = vertices[faces[s:s + chunk, 0]]
        u, v = vertices[faces[s:s + chunk, 1]] - a, vertices[faces[s:s + chunk, 2]] - a
        cross = (u[:, 1] * v[:, 2] - u[:, 2] * v[:, 1], u[:, 2] * v[:, 0] - u[:, 0] * v[:, 2],
                 u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0])
        out[s:s + chunk] = 0.5 * np.sqrt(cross[0] ** 2 + cross[1] ** 2 + cross[2] ** 2)
    return out


def validate_meshes(meshes: list[trimesh.Trimesh], path: Path | str,
                    max_faces: int = DEFAULTS.max_faces, min_extent: float = DEFAULTS.min_extent,
                    max_extent: float = DEFAULTS.max_extent) -> None:
    """Raise :class:`AssetError` for the first problem found, in the order of :data:`REASONS` (``degenerate`` is
    raised by :func:`drop_zero_area_faces`, which computes the face areas once for both)."""
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
    lo, hi = _used_bounds(faced)
    extent = float(np.max(hi - lo))
    if extent < min_extent:
        raise AssetError("absurd_size", f"largest extent {extent:.3g} < {min_extent:g}: every face is "
                         "collapsed to (almost) one point", path)
    if extent > max_extent:
        raise AssetError("absurd_size", f"largest extent {extent:.3g} > {max_extent:g} file units", path)


def drop_zero_area_faces(meshes: list[trimesh.Trimesh], path: Path | str | None = None,
                         degenerate_area: float = DEFAULTS.degenerate_area) -> tuple[list[trimesh.Trimesh], int]:
    """The meshes without their zero-area faces (area at most ``degenerate_area * L**2``, L = the largest extent of
    all meshes), and how many faces were dropped. Such faces render as nothing and cost as much as any other face
    (an asset of millions of them took minutes to render); meshes left with no face are dropped, and vertices no
    face uses any more are removed with their UVs and colours. Raises :class:`AssetError` ``degenerate`` when no
    face is left (every face is a point or a line segment)."""
    faced = [m for m in meshes if len(m.faces)]
    if not faced:
        return [], 0
    lo, hi = _used_bounds(faced)
    bound = degenerate_area * float(np.max(hi - lo)) ** 2
    keeps = [face_areas(m.vertices, m.faces) > bound for m in faced]
    dropped = int(sum((~k).sum() for k in keeps))
    if dropped == sum(len(k) for k in keeps):
        raise AssetError("degenerate", f"none of the {dropped:,} faces has a positive area (each is at most "
                         f"{degenerate_area:g} x the squared extent): the mesh is points or line segments and "
                         "renders as nothing", path)
    out = []
    for m, keep in zip(faced, keeps):
        if not keep.all():
            m.update_faces(keep)
            m.remove_unreferenced_vertices()
        if len(m.faces):
            out.append(m)
    return out, dropped


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
    """(2, 3) bounding box of the vertices that some face uses."""
    boxes = []
    for m in meshes:
        if len(m.faces):
            used = np.zeros(len(m.vertices), dtype=bool)
            used[m.faces.ravel()] = True
            boxes.append((m.vertices[used].min(axis=0), m.vertices[used].max(axis=0)))
    return np.array([np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)])


def load_asset(path: Path | str, up_axis: str = DEFAULTS.up_axis, normalise: bool = True,
               worker: BudgetedWorker | None = None, **limits: Any) -> Asset:
    """Read, validate and (by default) bring an asset into the canonical frame, within the loading budget.

    The work runs in a loader process (:mod:`mme3dr.asset_worker`; ``worker``, or this process's shared one with
    the budget of :data:`~mme3dr.defaults.DEFAULTS`), so a file that would hang or exhaust memory fails with reason
    ``timeout`` or ``too_large`` and the caller goes on. Steps: :func:`load_asset_in_process`.
    Raises :class:`AssetError` with a reason code. ``limits``: ``max_faces``, ``min_extent``, ``max_extent`` (see
    :func:`validate_meshes`) and ``degenerate_area`` (see :func:`drop_zero_area_faces`).
    """
    from mme3dr.asset_worker import shared_worker

    return (worker or shared_worker()).call(load_asset_in_process, str(path), up_axis, normalise, limits,
                                            label=path)


def load_asset_in_process(path: Path | str, up_axis: str = DEFAULTS.up_axis, normalise: bool = True,
                          limits: dict[str, Any] | None = None) -> Asset:
    """:func:`load_asset` in the calling process, with no time or memory budget.

    Steps: read (files checked, scene flattened; :func:`read_meshes`) -> :func:`validate_meshes` -> drop zero-area
    faces (:func:`drop_zero_area_faces`, counted in ``Asset.zero_area_faces``) -> rotate ``up_axis`` to +z -> if
    ``normalise``, centre the bounding box of the remaining faces' vertices and scale its largest extent to 1.
    """
    limits = dict(limits or {})
    degenerate_area = limits.pop("degenerate_area", DEFAULTS.degenerate_area)
    meshes = read_meshes(path, limits.get("max_faces", DEFAULTS.max_faces))
    validate_meshes(meshes, path, **limits)
    meshes, dropped = drop_zero_area_faces(meshes, path, degenerate_area)
    transform = up_axis_rotation(up_axis)
    for m in meshes:
        m.apply_transform(transform)
    if normalise:
        norm = normalisation_transform(_used_bounds(meshes))
        for m in meshes:
            m.apply_transform(norm)
        transform = norm @ transform
    return Asset(path=Path(path), meshes=meshes, up_axis=parse_up_axis(up_axis), transform=transform,
                 zero_area_faces=dropped)


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
    #: Zero-area faces dropped at load (not counted in ``n_faces``).
    zero_area_faces: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_asset(prompt_id: str, path: Path | str, up_axis: str = DEFAULTS.up_axis,
                worker: BudgetedWorker | None = None) -> AssetReport:
    """Load and validate (within the loading budget) without raising: problems become a report with a reason code."""
    try:
        asset = load_asset(path, up_axis=up_axis, normalise=False, worker=worker)
    except AssetError as exc:
        return AssetReport(prompt_id, str(path), ok=False, reason=exc.reason, message=exc.message)
    b = asset.bounds
    return AssetReport(prompt_id, str(path), ok=True, n_meshes=len(asset.meshes), n_vertices=asset.n_vertices,
                       n_faces=asset.n_faces, source_extent=float(np.max(b[1] - b[0])),
                       has_texture=asset.has_texture, has_vertex_colors=asset.has_vertex_colors,
                       zero_area_faces=asset.zero_area_faces)
