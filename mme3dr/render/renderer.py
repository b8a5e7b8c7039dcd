"""Offscreen rendering of an :class:`~mme3dr.assets.Asset` with pyrender.

Lights: the preset's light rig (:mod:`mme3dr.render.lights`): ``trellis`` for the main presets, the TRELLIS Blender
rig (key point light at (4, 1, 6), an overhead sky, Blender's grey world; no headlight).
Colour: one pipeline (:func:`mme3dr.assets.base_colour`): textures, vertex colours, face colours and OBJ ``Kd``
are sRGB-encoded and decoded to linear before shading, so one colour renders the same from any container.
Every colour multiplies the base colour before lighting, as glTF 2.0 defines ``COLOR_0``; pyrender's own shader
multiplies vertex colours into the *lit* colour (so the specular highlight takes the vertex colour but not a
texture's), so the renderer compiles pyrender's shader with that one line moved (:func:`_gltf_shader_dir`).
Materials (``shading="auto"``): metallic factors missing from the file count as 0 (dielectric) and missing
roughness as 1. ``shading="clay"`` (and any mesh without colour) uses one matte grey (linear 0.8) dielectric;
``shading="pyrender-default"`` is pyrender's ``MetallicRoughnessMaterial(baseColorFactor=1)`` with its defaults
(metallic 1, roughness 1), the material of the released AR3D-R1 eval.py. Back faces are always culled;
double-sided presets give every triangle a back-facing twin instead (see :meth:`Renderer._primitive`).
Output: RGBA uint8; for a transparent background the colour is un-premultiplied, for white/black the colour is
composited on the background and alpha is 255. Depth is the camera-space distance along the view axis (0 where
empty); normals are world-space unit normals (interpolated vertex normals) encoded as (n + 1) / 2 * 255.
Determinism: the same asset and preset give the same pixels in every process on one backend (and driver). pyrender
keeps a scene's meshes and lights in sets of objects hashed by address, so the order in which the shader sums the
lights (and draws the meshes) changed from process to process, and with it the rounding of one or two pixels of
some views (by one level); :func:`_ordered_scene` makes both follow the order they were added in.
Any change here that changes pixels must bump :data:`mme3dr.render.presets.RENDERER_VERSION`.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Hashable, Iterable, Iterator, MutableSet
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from mme3dr.assets import Asset, BaseColour, base_colour
from mme3dr.errors import SetupError
from mme3dr.render.backend import select_backend
from mme3dr.render.cameras import CameraSet, look_at
from mme3dr.render.lights import LIGHT_RIGS
from mme3dr.render.presets import BACKGROUNDS, RenderPreset

CLAY_COLOUR = (0.8, 0.8, 0.8, 1.0)  # linear, as Blender's default surface
PBR_MAPS = ("metallicRoughnessTexture", "normalTexture", "occlusionTexture", "emissiveTexture", "emissiveFactor")


@dataclass
class RenderOutput:
    rgba: np.ndarray  # (V, H, W, 4) uint8
    cameras: CameraSet
    preset_hash: str
    backend: str
    depth: np.ndarray | None = None  # (V, H, W) float32
    normals: np.ndarray | None = None  # (V, H, W, 3) uint8


_shared: Renderer | None = None


def _load_llvm_users_first() -> None:
    """Import triton (installed with CUDA builds of torch) before any GL context exists.

    Mesa's llvmpipe and triton each load their own LLVM; when triton is imported after a Mesa context is made
    (e.g. torchvision or open_clip imported to score renders in the same process), the process segfaults.
    Loaded in the other order, both work.
    """
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


def get_renderer(backend: str | None = None) -> Renderer:
    """The process's renderer, created on first use.

    One GL context per process: pyrender's EGL teardown terminates the display that every context of the process
    shares, so contexts are never closed mid-process; the one context is reused (and resized) for every render.
    """
    global _shared
    if _shared is None:
        _shared = Renderer(backend)
        atexit.register(_release_shared)  # before interpreter teardown, when pyrender's __del__ would fail noisily
    elif backend is not None and select_backend(backend) != _shared.backend:
        raise SetupError(f"this process renders with {_shared.backend}; cannot switch to {backend}")
    return _shared


def _release_shared() -> None:
    global _shared
    if _shared is not None:
        _shared._renderer.delete()
        _shared = None


class Renderer:
    """An offscreen GL context. Use :func:`get_renderer` rather than creating several in one process."""

    def __init__(self, backend: str | None = None) -> None:
        self.backend = select_backend(backend)
        _load_llvm_users_first()
        import pyrender  # after select_backend: the GL platform is fixed at import

        self._pyrender = pyrender
        self.resolution = 512
        self._renderer = pyrender.OffscreenRenderer(self.resolution, self.resolution)
        self._want_depth = True
        self._hook_colour_only_readback()
        self._shader_dir = _gltf_shader_dir(Path(pyrender.__file__).parent / "shaders")
        atexit.register(shutil.rmtree, self._shader_dir, True)
        from pyrender.shader_program import ShaderProgramCache

        self._renderer._renderer._program_cache = ShaderProgramCache(shader_dir=str(self._shader_dir))

    def _hook_colour_only_readback(self) -> None:
        """Skip pyrender's depth read-back and linearisation when no depth is asked for.

        pyrender always reads depth after a frame; for colour-only renders that is about a third of the
        per-view time on a GPU. The hook reads the colour buffer alone, with the same GL calls pyrender uses,
        and falls back to pyrender's own method for depth or if its internals differ from what it expects.
        """
        inner = getattr(self._renderer, "_renderer", None)
        original = getattr(inner, "_read_main_framebuffer", None)
        if original is None:
            return
        from OpenGL import GL

        def read(scene, flags):
            if self._want_depth or not (hasattr(inner, "_main_fb_dims") and hasattr(inner, "_main_fb_ms")):
                return original(scene, flags)
            w, h = inner._main_fb_dims[0], inner._main_fb_dims[1]
            GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, inner._main_fb_ms)
            GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, inner._main_fb)
            GL.glBlitFramebuffer(0, 0, w, h, 0, 0, w, h, GL.GL_COLOR_BUFFER_BIT, GL.GL_LINEAR)
            GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, inner._main_fb)
            buf = GL.glReadPixels(0, 0, w, h, GL.GL_RGBA, GL.GL_UNSIGNED_BYTE)
            return np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 4)[::-1], None

        inner._read_main_framebuffer = read

    def _resize(self, resolution: int) -> None:
        if resolution != self.resolution:
            self._renderer.viewport_width = self._renderer.viewport_height = resolution
            self.resolution = resolution

    def _meshes(self, asset: Asset, preset: RenderPreset, normals_pass: bool = False) -> list:
        pr = self._pyrender
        out = []
        for m in asset.meshes:
            if normals_pass:
                tm = trimesh.Trimesh(m.vertices, m.faces, process=False)
                tm.visual.vertex_colors = np.round((tm.vertex_normals + 1.0) * 127.5).astype(np.uint8)
                out.append(pr.Mesh.from_trimesh(tm, smooth=True))
                continue
            out.append(pr.Mesh(primitives=[self._primitive(m, preset.shading, preset.double_sided)]))
        return out

    def _primitive(self, m: trimesh.Trimesh, shading: str, double_sided: bool):
        """One pyrender primitive: smooth vertex normals, and the colour of :func:`base_colour` (or the shading's).

        Double-sided: every triangle gets a back-facing twin (reversed winding, negated normals) and back faces are
        culled, so the back of a single-sided sheet is lit as a surface facing the viewer, as Blender shades it
        (drawing one face from both sides would light the back with the front's normal).
        """
        pr = self._pyrender
        positions, normals, faces = m.vertices, m.vertex_normals, m.faces
        colour = base_colour(m) if shading == "auto" else BaseColour("none")
        extra: dict = {}
        if shading == "pyrender-default":
            material = pr.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0])
        elif colour.kind == "none":
            material = pr.MetallicRoughnessMaterial(baseColorFactor=CLAY_COLOUR, metallicFactor=0.0,
                                                   roughnessFactor=1.0, alphaMode="OPAQUE")
        else:
            src = getattr(m.visual, "material", None)
            params = {"baseColorFactor": colour.factor, "alphaMode": "BLEND" if colour.translucent else "OPAQUE",
                      "metallicFactor": _or(getattr(src, "metallicFactor", None), 0.0),
                      "roughnessFactor": _or(getattr(src, "roughnessFactor", None), 1.0)}
            if colour.kind == "texture":
                extra["texcoord_0"] = colour.uv
                params["baseColorTexture"] = colour.image
                for name in PBR_MAPS:  # glTF maps that share the UVs
                    if getattr(src, name, None) is not None:
                        params[name] = getattr(src, name)
            elif colour.kind == "vertex":
                extra["color_0"] = colour.rgba
            elif colour.kind == "face":  # one colour per face: give each face its own three vertices
                positions, normals = m.vertices[faces].reshape(-1, 3), m.vertex_normals[faces].reshape(-1, 3)
                faces = np.arange(3 * len(faces)).reshape(-1, 3)
                extra["color_0"] = np.repeat(colour.rgba, 3, axis=0)
            material = pr.MetallicRoughnessMaterial(**params)
        if double_sided:
            n = len(positions)
            positions, normals = np.vstack([positions, positions]), np.vstack([normals, -normals])
            faces = np.vstack([faces, faces[:, ::-1] + n])
            extra = {k: np.concatenate([v, v]) for k, v in extra.items()}
        return pr.Primitive(positions=positions, normals=normals, indices=faces, material=material,
                            mode=pr.GLTF.TRIANGLES, **extra)

    def render(self, asset: Asset, preset: RenderPreset, cameras: CameraSet | None = None,
               depth: bool = False, normals: bool = False) -> RenderOutput:
        """Render every view of ``preset`` (or ``cameras``) of an asset already in the canonical frame."""
        pr = self._pyrender
        self._resize(preset.resolution)
        cams = preset.camera_set(cameras)
        rig = LIGHT_RIGS[preset.light_rig]
        bg = BACKGROUNDS[preset.background]
        transparent = bg[3] == 0.0
        scene = _ordered_scene(pr.Scene(bg_color=(bg[0], bg[1], bg[2], 0.0), ambient_light=(rig.ambient,) * 3))
        for mesh in self._meshes(asset, preset):
            scene.add(mesh)
        camera = pr.PerspectiveCamera(yfov=cams.fov_x, znear=0.01, zfar=100.0, aspectRatio=1.0)
        cam_node = scene.add(camera, pose=np.eye(4))
        for irradiance, direction in rig.directional:
            scene.add(pr.DirectionalLight(intensity=irradiance), pose=look_at(direction))
        for intensity, position in rig.point:
            pose = np.eye(4)
            pose[:3, 3] = position
            scene.add(pr.PointLight(intensity=intensity), pose=pose)
        head = scene.add(pr.DirectionalLight(intensity=rig.headlight), pose=np.eye(4)) if rig.headlight else None
        flags = pr.RenderFlags.RGBA  # back faces culled; double-sided meshes carry back-facing twins
        n, res = len(cams), preset.resolution
        rgba = np.empty((n, res, res, 4), np.uint8)
        depths = np.empty((n, res, res), np.float32) if depth else None
        self._want_depth = depth
        for i, pose in enumerate(cams.poses):
            scene.set_pose(cam_node, pose)
            if head is not None:
                scene.set_pose(head, pose)
            color, z = self._renderer.render(scene, flags=flags)
            _finish(color, transparent, rgba[i])
            if depths is not None:
                depths[i] = z
        normal_maps = self._normals(asset, preset, cams) if normals else None
        return RenderOutput(rgba, cams, preset.hash, self.backend, depths, normal_maps)

    def _normals(self, asset: Asset, preset: RenderPreset, cams: CameraSet) -> np.ndarray:
        pr = self._pyrender
        scene = _ordered_scene(pr.Scene(bg_color=(0.5, 0.5, 0.5, 0.0)))
        for mesh in self._meshes(asset, preset, normals_pass=True):
            scene.add(mesh)
        cam_node = scene.add(pr.PerspectiveCamera(yfov=cams.fov_x, znear=0.01, zfar=100.0, aspectRatio=1.0))
        flags = pr.RenderFlags.FLAT | pr.RenderFlags.SKIP_CULL_FACES
        self._want_depth = False
        out = np.empty((len(cams), preset.resolution, preset.resolution, 3), np.uint8)
        for i, pose in enumerate(cams.poses):
            scene.set_pose(cam_node, pose)
            out[i] = self._renderer.render(scene, flags=flags)[0][..., :3]
        return out


class _InsertionOrdered(MutableSet):
    """A set that iterates in the order its items were added (a ``dict`` underneath)."""

    def __init__(self, items: Iterable[Hashable] = ()) -> None:
        self._items = dict.fromkeys(items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Hashable) -> None:
        self._items[item] = None

    def discard(self, item: Hashable) -> None:
        self._items.pop(item, None)


#: The node sets of a pyrender ``Scene`` whose iteration order reaches the pixels: lights are summed in this order
#: by the shader, and meshes at equal distance from the camera are drawn in it.
_ORDERED_NODE_SETS = ("_mesh_nodes", "_point_light_nodes", "_spot_light_nodes", "_directional_light_nodes")


def _ordered_scene(scene):
    """``scene`` (new and empty) with its mesh and light node sets iterating in insertion order (see the module
    docstring: a plain ``set`` of nodes iterates in an order set by memory addresses)."""
    for name in _ORDERED_NODE_SETS:
        current = getattr(scene, name, None)
        if not isinstance(current, set) or current:
            raise RuntimeError(f"pyrender.Scene.{name} is not the empty set this renderer expects (pyrender-maintained "
                               "1.0's); adapt mme3dr.render.renderer._ordered_scene")
        setattr(scene, name, _InsertionOrdered())
    return scene


def _or(value, default: float) -> float:
    return float(default if value is None else value)


def _gltf_shader_dir(pyrender_shaders: Path) -> Path:
    """A copy of pyrender's shaders in which ``COLOR_0`` multiplies the base colour, as glTF 2.0 defines it.

    pyrender's ``mesh.frag`` ends with ``color *= color_multiplier`` (the lit colour, specular included); here the
    vertex colour multiplies ``base_color`` before the BRDF instead, exactly where a texture does. Nothing else
    changes. Raises ``RuntimeError`` when the installed pyrender's shader no longer has the expected lines.
    """
    frag = (pyrender_shaders / "mesh.frag").read_text()
    lit, before_brdf = "    color *= color_multiplier;\n", "    vec3 dialectric_spec"
    if frag.count(lit) != 1 or frag.count(before_brdf) != 1:
        raise RuntimeError(f"{pyrender_shaders / 'mesh.frag'} is not the shader this renderer was written for "
                           "(pyrender-maintained 1.0's); adapt mme3dr.render.renderer._gltf_shader_dir")
    frag = frag.replace(lit, "").replace(
        before_brdf, "#ifdef COLOR_0_LOC\n    base_color *= color_multiplier;\n#endif\n" + before_brdf)
    folder = Path(tempfile.mkdtemp(prefix="mme3dr-shaders-"))
    for f in pyrender_shaders.iterdir():
        if f.is_file():
            shutil.copy(f, folder / f.name)
    (folder / "mesh.frag").write_text(frag)
    return folder


def _finish(color: np.ndarray, transparent: bool, out: np.ndarray) -> None:
    """Write RGBA uint8 into ``out`` from pyrender's RGBA output.

    The clear colour is the background's RGB with alpha 0, so multisampled edges come out as
    a * colour + (1 - a) * background. Transparent (background 0): un-premultiply the edge pixels,
    colour = rgb / a (interior pixels have a = 1, empty ones are already 0). Opaque: the RGB is already
    composited on the background; alpha is set to 255.
    """
    out[...] = color
    if not transparent:
        out[..., 3] = 255
        return
    alpha = color[..., 3]
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(alpha.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1  # edges lie inside the object's bounding box
    sub_a = alpha[r0:r1, c0:c1]
    edge = np.nonzero((sub_a - 1) < 254)  # 0 < alpha < 255, in one uint8 comparison
    a = sub_a[edge].astype(np.float32)[:, None] * (1.0 / 255.0)
    src = color[r0:r1, c0:c1]
    out[r0:r1, c0:c1][edge[0], edge[1], :3] = np.minimum(np.rint(src[edge[0], edge[1], :3] / a), 255).astype(np.uint8)
