"""Light rigs: named, fixed sets of lights in world coordinates (z-up). A preset names its rig; the name is hashed.

``trellis``: the light rig of TRELLIS's Blender dataset script, which made the official reference renders
(Blender CYCLES), converted to what pyrender can draw. The Blender rig is:
  - a point light of power P = 1000 W at (4, 1, 6);
  - an area light of power 10,000 W at (0, 0, 10), unrotated, scaled by 100. ``bpy.data.lights.new`` gives an
    area light Blender's default size, 0.25 m, so it is a 25 m x 25 m square. A Blender area light emits along
    its local -z only, so it shines down on the object like an overcast sky;
  - an area light of 1000 W at (0, 0, -10), also unrotated: it too emits along -z, away from the object, so it
    lights nothing (there is no floor to bounce from). It is left out here;
  - Blender's default world, a uniform grey background of radiance 0.0509, which lights the object from all
    sides (the script changes neither the world nor the exposure; view transform "Standard").
Conversion (Cycles' conventions: a point light of power P has radiant intensity P / (4 pi); an area light of
power P and area A has radiance 0.25 P / A; a Lambertian surface of albedo rho under irradiance E leaves
radiance rho E / pi, and pyrender's metallic-roughness shader uses the same rho / pi):
  - key: a pyrender point light of intensity 1000 / (4 pi) = 79.58 at (4, 1, 6) (irradiance I / d^2);
  - sky: the area light has radiance 0.25 x 10,000 / 625 = 4.0 and, seen from the object, covers the sky down to
    about 39 deg above the horizon (29 deg at its corners). Its irradiance E(n) on a surface with normal n (8.29
    facing up, 1.93 facing sideways, 0 facing down; the key light gives at most 1.50) is approximated by four
    directional lights of irradiance 2.515 each, at elevation 55 deg and azimuths 45, 135, 225, 315 deg (the
    square's diagonals), plus a uniform 0.111: fitted by least squares over normals, 4% rms error
    (``tests/test_render.py`` integrates the square and checks this);
  - ambient: pyrender adds base colour x ambient; a uniform radiance L lit Lambertian surface leaves rho L, so
    ambient = 0.0509 (world) + 0.111 / pi (the sky's uniform part) = 0.0862.
  With this much light, surfaces of albedo above about 0.3 facing up saturate, in Blender and here alike.
  No headlight: the light does not move with the camera, so views from above are brighter than views from
  below, as in the official renders. Not reproduced: shadows, Cycles' one diffuse bounce, the light's soft size,
  and the exact sRGB curve (pyrender encodes with gamma 1/2.2).
``ar3d-r1-eval``: what the released AR3D-R1 eval.py renders with: one directional light of intensity 3.0 along
each camera's view direction (a headlight), and no ambient light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class LightRig:
    """Lights in world coordinates. Directions point from the object towards the light."""

    ambient: float = 0.0  # pyrender's ambient term: base colour x ambient is added to every fragment
    directional: tuple[tuple[float, Vec3], ...] = ()  # (irradiance, direction towards the light)
    point: tuple[tuple[float, Vec3], ...] = ()  # (radiant intensity, W/sr; position)
    headlight: float = 0.0  # intensity of a directional light along each camera's view direction (0: none)


def _direction(elevation_deg: float, azimuth_deg: float) -> Vec3:
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    return (math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e))


#: Blender's default world colour (linear radiance), lighting the TRELLIS renders from every side.
BLENDER_WORLD = 0.0509
#: The overhead area light as four directional lights (elevation, irradiance each) plus a uniform irradiance.
SKY_ELEVATION_DEG, SKY_IRRADIANCE, SKY_UNIFORM = 55.0, 2.515, 0.111

LIGHT_RIGS: dict[str, LightRig] = {
    "trellis": LightRig(
        ambient=BLENDER_WORLD + SKY_UNIFORM / math.pi,
        directional=tuple((SKY_IRRADIANCE, _direction(SKY_ELEVATION_DEG, az)) for az in (45.0, 135.0, 225.0, 315.0)),
        point=((1000.0 / (4.0 * math.pi), (4.0, 1.0, 6.0)),),
    ),
    "ar3d-r1-eval": LightRig(headlight=3.0),
}
