"""Camera protocols: TRELLIS sphere-Hammersley views, fixed (yaw, elevation) lists, orbits, transforms.json.

Conventions (those of the TRELLIS/Toys4K renders): world z-up, object in [-0.5, 0.5]^3, cameras on a sphere of
radius r looking at the origin. A pose is a 4x4 camera-to-world matrix in the OpenGL convention: the camera looks
along its -z axis, +y is up in the image, +x is right. The image's x axis stays horizontal (no roll).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mme3dr.errors import InputError


def radical_inverse_base2(i: int) -> float:
    """Van der Corput radical inverse of ``i`` in base 2: the bits of i mirrored after the binary point."""
    result, f = 0.0, 0.5
    while i:
        result += f * (i & 1)
        i >>= 1
        f *= 0.5
    return result


def sphere_hammersley(n: int, offset: tuple[float, float] = (0.0, 0.0), remap: bool = True) -> np.ndarray:
    """(yaw, pitch) in radians of the TRELLIS sphere-Hammersley sequence, shape (n, 2).

    View i of n: u = i/n + ox/n, v = radical_inverse_base2(i) + oy; with ``remap``,
    u -> 2u if u < 0.25 else 2u/3 + 1/3 (more views above the equator);
    pitch = arccos(1 - 2u) - pi/2, yaw = 2 pi v.
    """
    ox, oy = offset
    out = np.empty((n, 2))
    for i in range(n):
        u = i / n + ox / n
        v = radical_inverse_base2(i) + oy
        if remap:
            u = 2 * u if u < 0.25 else 2 * u / 3 + 1 / 3
        out[i] = (2 * np.pi * v, np.arccos(1 - 2 * u) - np.pi / 2)
    return out


def positions_from_yaw_pitch(yaw_pitch: np.ndarray, radius: float) -> np.ndarray:
    """position = r (cos yaw cos pitch, sin yaw cos pitch, sin pitch), shape (n, 3)."""
    yaw, pitch = np.asarray(yaw_pitch, dtype=float).T
    return radius * np.stack([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)], axis=-1)


def look_at(position: Sequence[float], target: Sequence[float] = (0.0, 0.0, 0.0),
            world_up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenGL camera-to-world pose at ``position`` looking at ``target`` with no roll.

    back = normalise(position - target); right = normalise(world_up x back); up = back x right.
    Straight above or below the target (world_up parallel to back), +y is used as the image's up.
    """
    position = np.asarray(position, dtype=float)
    back = position - np.asarray(target, dtype=float)
    back /= np.linalg.norm(back)
    right = np.cross(world_up, back)
    if np.linalg.norm(right) < 1e-9:
        right = np.cross((0.0, 1.0, 0.0), back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, back, position
    return pose


def poses_from_positions(positions: np.ndarray) -> np.ndarray:
    return np.stack([look_at(p) for p in positions])


def hammersley_poses(n: int, radius: float, offset: tuple[float, float], remap: bool = True) -> np.ndarray:
    return poses_from_positions(positions_from_yaw_pitch(sphere_hammersley(n, offset, remap), radius))


def yaw_elevation_poses(views_deg: Sequence[tuple[float, float]], radius: float) -> np.ndarray:
    """Poses from (yaw, elevation) pairs in degrees (elevation = pitch above the xy plane)."""
    return poses_from_positions(positions_from_yaw_pitch(np.radians(np.asarray(views_deg, dtype=float)), radius))


def orbit_poses(n: int, radius: float, elevation_deg: float = 20.0, start_yaw_deg: float = 0.0) -> np.ndarray:
    """``n`` views evenly spaced in yaw at one elevation."""
    yaws = start_yaw_deg + 360.0 * np.arange(n) / n
    return yaw_elevation_poses([(y, elevation_deg) for y in yaws], radius)


@dataclass
class CameraSet:
    """Poses (n, 4, 4) plus the horizontal field of view, as in a TRELLIS ``transforms.json``."""

    poses: np.ndarray
    fov_x: float  # radians (``camera_angle_x``)

    def __len__(self) -> int:
        return len(self.poses)


def read_transforms(path: Path | str) -> CameraSet:
    """Read a TRELLIS/NeRF-style ``transforms.json`` (``frames[i].transform_matrix``, ``camera_angle_x``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        frames = data["frames"]
        poses = np.array([f["transform_matrix"] for f in frames], dtype=float)
        fov = float(frames[0].get("camera_angle_x", data.get("camera_angle_x")))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, IndexError, ValueError) as exc:
        raise InputError(f"{path}: not a readable transforms.json with frames[].transform_matrix and "
                         f"camera_angle_x ({type(exc).__name__}: {exc})") from None
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or not np.isfinite(poses).all():
        raise InputError(f"{path}: transform_matrix entries must be finite 4x4 matrices, got shape {poses.shape}")
    return CameraSet(poses, fov)


def transforms_dict(cameras: CameraSet, file_names: Sequence[str], extra: dict | None = None) -> dict:
    """The ``transforms.json`` content for ``cameras`` (frames in the order of ``file_names``)."""
    frames = [{"file_path": name, "camera_angle_x": cameras.fov_x, "transform_matrix": pose.tolist()}
              for name, pose in zip(file_names, cameras.poses)]
    return {**(extra or {}), "camera_angle_x": cameras.fov_x, "frames": frames}
