import re
from pathlib import Path

import numpy as np
import pytest
import trimesh

import hostile_corpus as H
import make_assets as M
from mme3dr.assets import REASONS, AssetError, check_asset, load_asset, up_axis_rotation


def _assert_normalised(asset):
    lo, hi = asset.bounds
    np.testing.assert_allclose(np.max(hi - lo), 1.0, atol=1e-9)
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-9)
    assert lo.min() >= -0.5 - 1e-9 and hi.max() <= 0.5 + 1e-9


def test_vertex_coloured_glb(tmp_path):
    a = load_asset(M.vertex_coloured_glb(tmp_path / "a.glb"))
    assert a.has_vertex_colors and not a.has_texture
    np.testing.assert_array_equal(a.meshes[0].visual.vertex_colors[0], [255, 0, 0, 255])
    _assert_normalised(a)
    # a 1 x 2 x 3 box: relative proportions kept (uniform scale)
    np.testing.assert_allclose(a.bounds[1] - a.bounds[0], [1 / 3, 2 / 3, 1.0], atol=1e-9)


def test_textured_glb_keeps_uv_and_image(tmp_path):
    a = load_asset(M.textured_glb(tmp_path / "t.glb"))
    assert a.has_texture and a.meshes[0].visual.uv is not None
    assert a.meshes[0].visual.material.baseColorTexture.size == (16, 16)


def test_obj_with_mtl_texture(tmp_path):
    a = load_asset(M.obj_with_mtl(tmp_path / "obj"))
    assert a.has_texture and a.n_faces == 2
    img = a.meshes[0].visual.material.image
    assert np.asarray(img.convert("RGB"))[0, 0].tolist() == np.asarray(M.checker_image())[0, 0].tolist()
    _assert_normalised(a)


def test_ply_with_vertex_colours(tmp_path):
    path = M.ascii_ply(tmp_path / "c.ply", M.TETRA_V, M.TETRA_F, colours=[(0, 255, 0)] * 4)
    a = load_asset(path)
    assert a.has_vertex_colors and a.n_faces == 4
    assert a.meshes[0].visual.vertex_colors[0, :3].tolist() == [0, 255, 0]


@pytest.mark.parametrize("suffix", [".off", ".stl"])
def test_other_formats(tmp_path, suffix):
    path = tmp_path / f"box{suffix}"
    M.box().export(path)
    assert load_asset(path).n_faces == 12


def test_multi_mesh_scene_is_flattened_with_transforms(tmp_path):
    a = load_asset(M.scene_glb(tmp_path / "s.glb"), normalise=False)
    assert len(a.meshes) == 2 and a.n_faces == 24
    centres = sorted(float(m.bounds.mean(axis=0)[0]) for m in a.meshes)
    np.testing.assert_allclose(centres, [-2.0, 2.0], atol=1e-9)  # node transforms baked in
    _assert_normalised(load_asset(tmp_path / "s.glb"))


def test_y_up_asset_is_rotated_to_z_up(tmp_path):
    path = M.y_up_cone(tmp_path / "cone.glb")
    as_z = load_asset(path, up_axis="+z")
    as_y = load_asset(path, up_axis="y")
    assert np.argmax(as_z.bounds[1] - as_z.bounds[0]) == 1  # declared wrong: tall along y
    assert np.argmax(as_y.bounds[1] - as_y.bounds[0]) == 2  # canonical: tall along z
    apex = as_y.meshes[0].vertices[np.argmax(as_y.meshes[0].vertices[:, 2])]
    np.testing.assert_allclose(apex[2], 0.5, atol=1e-9)  # the apex (was +y) now points up


@pytest.mark.parametrize("axis", ["+x", "-x", "+y", "-y", "+z", "-z"])
def test_up_axis_rotation_maps_axis_to_plus_z(axis):
    r = up_axis_rotation(axis)
    u = np.zeros(4)
    u["xyz".index(axis[1])] = 1 if axis[0] == "+" else -1
    np.testing.assert_allclose((r @ u)[:3], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(r[:3, :3] @ r[:3, :3].T, np.eye(3), atol=1e-12)  # a proper rotation
    assert np.isclose(np.linalg.det(r[:3, :3]), 1.0)


def test_y_up_matches_the_gltf_to_blender_convention():
    # glTF (x, y, z) -> Blender (x, -z, y)
    np.testing.assert_allclose(up_axis_rotation("+y")[:3, :3] @ [1, 2, 3], [1, -3, 2], atol=1e-12)


def _bad_assets(tmp_path):
    (tmp_path / "x.fbx").write_text("x")
    (tmp_path / "g.glb").write_bytes(b"\x00garbage" * 10)
    (tmp_path / "e.obj").write_text("")
    return {
        "missing": tmp_path / "nope.glb",
        "unsupported_format": tmp_path / "x.fbx",
        "unreadable": tmp_path / "g.glb",
        "empty": tmp_path / "e.obj",
        "no_faces": M.ascii_ply(tmp_path / "points.ply", M.TETRA_V),
        "invalid_faces": M.ascii_ply(tmp_path / "bf.ply", M.TETRA_V, [(0, 1, 9)]),
        "non_finite": M.ascii_ply(tmp_path / "nan.ply", [(0, 0, 0), (1, 0, 0), (float("nan"), 1, 0)], [(0, 1, 2)]),
        "absurd_size": M.ascii_ply(tmp_path / "huge.ply", [(0, 0, 0), (1e7, 0, 0), (0, 1, 0)], [(0, 1, 2)]),
    }


def test_each_validation_error_has_its_reason(tmp_path):
    cases = _bad_assets(tmp_path)
    for reason, path in cases.items():
        with pytest.raises(AssetError) as info:
            load_asset(path)
        assert info.value.reason == reason, (path, info.value)
        report = check_asset("p", path)
        assert not report.ok and report.reason == reason and report.message
    collapsed = M.ascii_ply(tmp_path / "pt.ply", [(1, 1, 1)] * 3, [(0, 1, 2)])
    assert check_asset("p", collapsed).reason == "absurd_size"
    inf = M.ascii_ply(tmp_path / "inf.ply", [(0, 0, 0), (1, 0, 0), (float("inf"), 1, 0)], [(0, 1, 2)])
    assert check_asset("p", inf).reason == "non_finite"
    with pytest.raises(AssetError) as info:
        load_asset(M.vertex_coloured_glb(tmp_path / "ok.glb"), max_faces=5)
    assert info.value.reason == "too_many_faces"
    # every reason code has a case: here, in the hostile corpus, or (timeout) in test_asset_safety.py
    corpus = {c.reason for c in H.CASES} - {None, "generation_failed"}
    assert set(cases) | {"too_many_faces"} | corpus | {"timeout"} == set(REASONS)


def test_readme_documents_every_reason_code():
    table = (Path(__file__).resolve().parents[1] / "README.md").read_text().split("Validation reason codes")[1]
    documented = set(re.findall(r"^\| `(\w+)` \|", table.split("\n\n")[1], flags=re.M))
    assert documented == set(REASONS) | {"generation_failed"}


def test_gltf_missing_buffer_is_unreadable(tmp_path):
    trimesh.creation.box().export(tmp_path / "t.gltf")
    for f in tmp_path.glob("*.bin"):
        f.unlink()
    assert check_asset("p", tmp_path / "t.gltf").reason == "unreadable"


def test_check_asset_reports_stats(tmp_path):
    r = check_asset("p", M.textured_glb(tmp_path / "t.glb"))
    assert r.ok and r.n_faces == 12 and r.n_meshes == 1 and r.has_texture
    assert r.source_extent == pytest.approx(3.0)
