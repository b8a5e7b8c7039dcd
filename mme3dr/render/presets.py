"""Named render presets. Each is hashed from its full parameters; the hash goes with every image.

- ``canonical``: the TRELLIS dataset protocol, made deterministic. 24 sphere-Hammersley views (remapped),
  radius 2, FoV 40 deg, 512x512, transparent background, textures/vertex colours, double-sided.
  Offset rule: TRELLIS draws (ox, oy) uniformly at random per object; the canonical preset fixes
  (ox, oy) = (0.5, 0.5), the mean of that distribution, for every object. ox = 0.5 puts each view at the middle
  of its latitude stratum, so no view sits on a pole.
- ``reward6``: the 6 reward views of the authors' training code, (yaw, elevation) in degrees
  (0, 14.3) (67, 40.7) (140, 32.6) (214, -1.5) (287, -13.1) (360, 14.3); radius 2, FoV 40, 512x512, black.
- ``ar3d-r1-compat``: how the released AR3D-R1 eval.py renders generated meshes, for side-by-side comparison
  only: 299x299, white background, pyrender's default material (``MetallicRoughnessMaterial`` with base colour
  1 and pyrender's defaults metallic 1, roughness 1; textures and colours dropped), one directional light of 3.0
  along the view direction and no ambient light (light rig ``ar3d-r1-eval``), back-face culling on, the object's
  reference camera poses (a ``transforms.json``; pass ``--cameras``). Not matched: eval.py renders the GLB in the
  frame it was saved in; we render every asset in the canonical frame (up axis converted, normalised).
Main presets use light rig ``trellis`` (:mod:`mme3dr.render.lights`).

The hash covers every field and :data:`RENDERER_VERSION`, so renders and features made by an older renderer are
never reused: their folder name (``<name>-<hash>``) differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from mme3dr.errors import InputError
from mme3dr.registry import Registry
from mme3dr.render.cameras import CameraSet, hammersley_poses, orbit_poses, yaw_elevation_poses
from mme3dr.render.lights import LIGHT_RIGS

#: Version of the pixels the renderer makes from a preset (renderer.py, lights.py, the colour rules of
#: mme3dr.assets). Part of every preset hash: bump it with any change that changes pixels.
#: 1: studio-v1 headlight rig, pyrender's vertex-colour handling. 2: TRELLIS rig, one sRGB colour pipeline.
#: 3: lights summed and meshes drawn in the order they were added (the same pixels in every process).
RENDERER_VERSION = 3
BACKGROUNDS = {"transparent": (0.0, 0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0, 1.0)}
CAMERA_PROTOCOLS = ("hammersley", "yaw-elevation", "orbit", "file")
SHADING = ("auto", "clay", "pyrender-default")


@dataclass(frozen=True)
class RenderPreset:
    """Everything that decides the pixels. ``hash`` covers all fields and :data:`RENDERER_VERSION`."""

    name: str
    resolution: int = 512
    fov_deg: float = 40.0
    radius: float = 2.0
    cameras: str = "hammersley"  # one of CAMERA_PROTOCOLS
    n_views: int = 24
    offset: tuple[float, float] = (0.5, 0.5)  # hammersley (ox, oy)
    remap: bool = True  # hammersley
    views_deg: tuple[tuple[float, float], ...] = ()  # yaw-elevation
    orbit_elevation_deg: float = 20.0  # orbit
    background: str = "transparent"  # one of BACKGROUNDS
    shading: str = "auto"  # "auto": the file's colours; "clay": one grey material; "pyrender-default": eval.py's
    double_sided: bool = True
    light_rig: str = "trellis"  # a key of lights.LIGHT_RIGS

    def __post_init__(self) -> None:
        if self.cameras not in CAMERA_PROTOCOLS:
            raise InputError(f"preset {self.name}: cameras {self.cameras!r} not in {CAMERA_PROTOCOLS}")
        if self.background not in BACKGROUNDS:
            raise InputError(f"preset {self.name}: background {self.background!r} not in {list(BACKGROUNDS)}")
        if self.shading not in SHADING:
            raise InputError(f"preset {self.name}: shading {self.shading!r} not in {SHADING}")
        if self.light_rig not in LIGHT_RIGS:
            raise InputError(f"preset {self.name}: light rig {self.light_rig!r} not in {list(LIGHT_RIGS)}")
        if self.resolution < 8:
            raise InputError(f"preset {self.name}: resolution {self.resolution} too small")

    def params(self) -> dict[str, Any]:
        """Every field, and ``renderer_version`` (:data:`RENDERER_VERSION`)."""
        d = asdict(self)
        d["offset"] = list(self.offset)
        d["views_deg"] = [list(v) for v in self.views_deg]
        d["renderer_version"] = RENDERER_VERSION
        return d

    @property
    def hash(self) -> str:
        """First 12 hex digits of sha256 over the canonical JSON of :meth:`params` (name excluded)."""
        p = self.params()
        p.pop("name")
        return hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def tag(self) -> str:
        """Folder name for renders of this preset: ``<name>-<hash>``."""
        return f"{self.name}-{self.hash}"

    def camera_set(self, cameras: CameraSet | None = None) -> CameraSet:
        """The poses of this preset; ``cameras`` (from a transforms.json) is required for protocol ``file``."""
        fov = np.radians(self.fov_deg)
        if self.cameras == "file":
            if cameras is None:
                raise InputError(f"preset {self.name!r} renders from the object's reference camera poses: pass "
                                 "--cameras transforms.json (or a folder with <prompt_id>/transforms.json)")
            return cameras
        if cameras is not None:
            return cameras
        if self.cameras == "hammersley":
            return CameraSet(hammersley_poses(self.n_views, self.radius, self.offset, self.remap), fov)
        if self.cameras == "yaw-elevation":
            return CameraSet(yaw_elevation_poses(self.views_deg, self.radius), fov)
        return CameraSet(orbit_poses(self.n_views, self.radius, self.orbit_elevation_deg), fov)

    def with_overrides(self, **kw: Any) -> RenderPreset:
        """A copy with some fields changed (the hash changes with them)."""
        kw = {k: v for k, v in kw.items() if v is not None}
        if "offset" in kw:
            kw["offset"] = tuple(kw["offset"])
        return replace(self, **kw) if kw else self


PRESETS: Registry[RenderPreset] = Registry("render preset")
PRESETS.register("canonical", RenderPreset("canonical"), origin="builtin")
PRESETS.register("reward6", RenderPreset(
    "reward6", cameras="yaw-elevation", n_views=6, background="black",
    views_deg=((0, 14.3), (67, 40.7), (140, 32.6), (214, -1.5), (287, -13.1), (360, 14.3))), origin="builtin")
PRESETS.register("ar3d-r1-compat", RenderPreset(
    "ar3d-r1-compat", resolution=299, cameras="file", background="white", shading="pyrender-default",
    double_sided=False, light_rig="ar3d-r1-eval"), origin="builtin")
PRESETS.register("orbit8", RenderPreset("orbit8", cameras="orbit", n_views=8, background="white"), origin="builtin")


def get_preset(name: str) -> RenderPreset:
    return PRESETS.get(name)
