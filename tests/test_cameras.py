import json
import os
from pathlib import Path

import numpy as np
import pytest

from mme3dr.render.cameras import (CameraSet, hammersley_poses, look_at, orbit_poses, radical_inverse_base2,
                                   read_transforms, sphere_hammersley, transforms_dict, yaw_elevation_poses)
from mme3dr.render.presets import PRESETS, get_preset

SHARED = Path(os.environ.get("MME3DR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ROSE = SHARED / "fixtures" / "toys4k_rose"
ROSE_OFFSET = (0.69447543, 0.6020485)
needs_fixture = pytest.mark.skipif(not (ROSE / "transforms.json").exists(), reason="../shared fixtures absent")


def test_radical_inverse():
    assert [radical_inverse_base2(i) for i in range(6)] == [0.0, 0.5, 0.25, 0.75, 0.125, 0.625]


def test_hammersley_formula_by_hand():
    # view 3 of 24, offset (0.2, 0.1): u = 3/24 + 0.2/24, v = 0.75 + 0.1; u < 0.25 -> 2u
    (yaw, pitch), = sphere_hammersley(24, (0.2, 0.1))[3:4]
    u = 2 * (3 / 24 + 0.2 / 24)
    assert yaw == pytest.approx(2 * np.pi * 0.85)
    assert pitch == pytest.approx(np.arccos(1 - 2 * u) - np.pi / 2)


@needs_fixture
def test_protocol_reproduces_the_fixture_cameras():
    ref = read_transforms(ROSE / "transforms.json")
    mine = hammersley_poses(24, 2.0, ROSE_OFFSET)
    np.testing.assert_allclose(mine[:, :3, 3], ref.poses[:, :3, 3], atol=1e-5)  # positions
    np.testing.assert_allclose(mine, ref.poses, atol=1e-5)  # full poses: same look-at convention, no roll
    assert ref.fov_x == pytest.approx(np.radians(40.0))


def test_look_at_is_a_rigid_camera_looking_at_the_origin():
    for pos in [(2, 0, 0), (0.3, -1.2, 1.5), (0, 0, 2), (0, 0, -2)]:
        pose = look_at(pos)
        r = pose[:3, :3]
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        forward = -r[:, 2]
        np.testing.assert_allclose(forward, -np.asarray(pos) / np.linalg.norm(pos), atol=1e-12)
        if abs(pos[2]) < 2:
            assert abs(r[2, 0]) < 1e-12  # image x axis horizontal


def test_reward6_and_orbit_positions():
    poses = yaw_elevation_poses([(67, 40.7)], 2.0)
    yaw, el = np.radians(67), np.radians(40.7)
    np.testing.assert_allclose(poses[0, :3, 3], 2 * np.array([np.cos(yaw) * np.cos(el), np.sin(yaw) * np.cos(el), np.sin(el)]))
    cams = get_preset("reward6").camera_set()
    assert len(cams) == 6 and np.allclose(np.linalg.norm(cams.poses[:, :3, 3], axis=1), 2.0)
    orb = orbit_poses(8, 2.0, 30.0)
    np.testing.assert_allclose(orb[:, 2, 3], 2 * np.sin(np.radians(30.0)))


def test_canonical_preset_is_deterministic_and_avoids_the_poles():
    a, b = get_preset("canonical").camera_set(), get_preset("canonical").camera_set()
    np.testing.assert_array_equal(a.poses, b.poses)
    np.testing.assert_allclose(a.poses, hammersley_poses(24, 2.0, (0.5, 0.5)))
    elevations = np.degrees(np.arcsin(a.poses[:, 2, 3] / 2.0))
    assert np.abs(elevations).max() < 85


def test_transforms_roundtrip_and_errors(tmp_path):
    cams = CameraSet(hammersley_poses(5, 2.0, (0.1, 0.2)), 0.7)
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(transforms_dict(cams, [f"{i:03d}.png" for i in range(5)])))
    back = read_transforms(path)
    np.testing.assert_allclose(back.poses, cams.poses)
    assert back.fov_x == 0.7
    path.write_text('{"frames": [{"transform_matrix": [[1, 0], [0, 1]], "camera_angle_x": 1}]}')
    with pytest.raises(ValueError, match="4x4"):
        read_transforms(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a readable transforms.json"):
        read_transforms(path)


def test_preset_hash_covers_every_parameter():
    base = get_preset("canonical")
    assert base.tag == f"canonical-{base.hash}" and len(base.hash) == 12
    variants = [base.with_overrides(resolution=256), base.with_overrides(background="white"),
                base.with_overrides(offset=(0.1, 0.5)), base.with_overrides(double_sided=False),
                base.with_overrides(shading="clay"), base.with_overrides(fov_deg=30.0), base.with_overrides(n_views=6),
                base.with_overrides(light_rig="ar3d-r1-eval")]
    hashes = {v.hash for v in variants} | {base.hash}
    assert len(hashes) == len(variants) + 1
    assert base.with_overrides(background=None).hash == base.hash
    assert set(PRESETS.names()) >= {"canonical", "reward6", "ar3d-r1-compat"}
    compat = get_preset("ar3d-r1-compat")
    assert (compat.resolution, compat.background, compat.shading, compat.double_sided, compat.light_rig) == (
        299, "white", "pyrender-default", False, "ar3d-r1-eval")
    with pytest.raises(ValueError, match="--cameras"):
        compat.camera_set()
    with pytest.raises(ValueError, match="light rig 'studio'"):
        base.with_overrides(light_rig="studio")


def test_readme_preset_table_has_the_current_hashes():
    """The README's Rendering table lists each built-in preset with its current hash (a renderer change updates it)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in ("canonical", "reward6", "ar3d-r1-compat", "orbit8"):
        assert f"| `{name}` | `{get_preset(name).hash}` |" in readme, name


def test_renderer_version_is_in_every_preset_hash(monkeypatch):
    """A renderer change (a new RENDERER_VERSION) gives every preset a new hash, so a new render folder."""
    from mme3dr.render import presets

    before = {name: PRESETS.get(name).tag for name in PRESETS.names()}
    assert PRESETS.get("canonical").params()["renderer_version"] == presets.RENDERER_VERSION
    monkeypatch.setattr(presets, "RENDERER_VERSION", presets.RENDERER_VERSION + 1)
    after = {name: PRESETS.get(name).tag for name in PRESETS.names()}
    assert all(before[n] != after[n] for n in before), (before, after)
