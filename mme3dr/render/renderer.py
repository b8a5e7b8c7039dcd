"""Offscreen rendering of an :class:`~mme3dr.assets.Asset` with pyrender.

Light rig ``studio-v1`` (world z-up, fixed for every preset that names it):
  - ambient light 0.25 (RGB),
  - a headlight: directional, intensity 2.0, shining along the camera's view direction (moves with the camera),
  - a key light: directional, intensity 2.0, from direction (4, 1, 6) (the TRELLIS key light's position),
  - a top light: directional, intensity 1.0, straight down.
Materials: textures and vertex colours are kept (``shading="auto"``); metallic factors missing from the file
count as 0 (dielectric) and missing roughness as 1. ``shading="clay"`` (and any mesh with neither texture nor
colours) uses one matte white-grey (0.8) dielectric. Double-sided presets disable back-face culling.
Output: RGBA uint8; for a transparent background the colour is un-premultiplied, for white/black the colour is
composited on the background and alpha is 255. Depth is the camera-space distance along the view axis (0 where
empty); normals are world-space unit normals (interpolated vertex normals) encoded as (n + 1) / 2 * 255.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass

import numpy as np
import trimesh

from mme3dr.assets import Asset
from mme3dr.render.backend import select_backend
from mme3dr.render.cameras import CameraSet, look_at
from mme3dr.render.presets import BACKGROUNDS, RenderPreset

LIGHT_RIGS = {
    "studio-v1": {"ambient": 0.25, "headlight": 2.0, "key": (2.0, (4.0, 1.0, 6.0)), "top": (1.0, (0.0, 0.0, 1.0))},
}
CLAY_COLOUR = (0.8, 0.8, 0.8, 1.0)


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
        raise RuntimeError(f"this process renders with {_shared.backend}; cannot switch to {backend}")
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
            if preset.shading == "clay" or not m.visual.defined:  # untextured meshes are shaded as clay
                mat = pr.MetallicRoughnessMaterial(baseColorFactor=CLAY_COLOUR, metallicFactor=0.0,
                                                   roughnessFactor=1.0, alphaMode="OPAQUE")
                out.append(pr.Mesh.from_trimesh(trimesh.Trimesh(m.vertices, m.faces, process=False), material=mat))
                continue
            mesh = pr.Mesh.from_trimesh(m, smooth=True)
            src = getattr(m.visual, "material", None)
            for prim in mesh.primitives:
                mat = prim.material
                mat.metallicFactor = _or(getattr(src, "metallicFactor", None), 0.0)
                mat.roughnessFactor = _or(getattr(src, "roughnessFactor", None), 1.0)
                mat.alphaMode = "BLEND" if _translucent(src) else "OPAQUE"
            out.append(mesh)
        return out

    def render(self, asset: Asset, preset: RenderPreset, cameras: CameraSet | None = None,
               depth: bool = False, normals: bool = False) -> RenderOutput:
        """Render every view of ``preset`` (or ``cameras``) of an asset already in the canonical frame."""
        pr = self._pyrender
        self._resize(preset.resolution)
        cams = preset.camera_set(cameras)
        rig = LIGHT_RIGS[preset.light_rig]
        bg = BACKGROUNDS[preset.background]
        transparent = bg[3] == 0.0
        scene = pr.Scene(bg_color=(bg[0], bg[1], bg[2], 0.0), ambient_light=(rig["ambient"],) * 3)
        for mesh in self._meshes(asset, preset):
            scene.add(mesh)
        camera = pr.PerspectiveCamera(yfov=cams.fov_x, znear=0.01, zfar=100.0, aspectRatio=1.0)
        cam_node = scene.add(camera, pose=np.eye(4))
        head = scene.add(pr.DirectionalLight(intensity=rig["headlight"]), pose=np.eye(4))
        for intensity, direction in (rig["key"], rig["top"]):
            scene.add(pr.DirectionalLight(intensity=intensity), pose=look_at(direction))
        flags = pr.RenderFlags.RGBA
        if preset.double_sided:
            flags |= pr.RenderFlags.SKIP_CULL_FACES
        n, res = len(cams), preset.resolution
        rgba = np.empty((n, res, res, 4), np.uint8)
        depths = np.empty((n, res, res), np.float32) if depth else None
        self._want_depth = depth
        for i, pose in enumerate(cams.poses):
            scene.set_pose(cam_node, pose)
            scene.set_pose(head, pose)
            color, z = self._renderer.render(scene, flags=flags)
            _finish(color, transparent, rgba[i])
            if depths is not None:
                depths[i] = z
        normal_maps = self._normals(asset, preset, cams) if normals else None
        return RenderOutput(rgba, cams, preset.hash, self.backend, depths, normal_maps)

    def _normals(self, asset: Asset, preset: RenderPreset, cams: CameraSet) -> np.ndarray:
        pr = self._pyrender
        scene = pr.Scene(bg_color=(0.5, 0.5, 0.5, 0.0))
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


def _or(value, default: float) -> float:
    return float(default if value is None else value)


def _translucent(material) -> bool:
    if material is None:
        return False
    factor = getattr(material, "baseColorFactor", None)
    if factor is not None and len(factor) == 4 and float(factor[3]) < (1.0 if max(factor) <= 1.0 else 255.0):
        return True
    img = getattr(material, "baseColorTexture", None)
    return img is not None and img.mode in ("RGBA", "LA") and np.asarray(img)[..., -1].min() < 255


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
