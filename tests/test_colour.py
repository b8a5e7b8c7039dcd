"""One colour pipeline: the same painted colour renders the same whatever container stores it."""

import numpy as np
import pytest
import trimesh

import make_assets as M
from mme3dr.assets import Asset, load_asset
from mme3dr.render.presets import get_preset
from mme3dr.render.renderer import get_renderer

CONTAINERS = ("glb_texture", "glb_vertex", "ply_vertex", "ply_face", "obj_kd", "obj_texture")


@pytest.fixture(scope="module")
def renderer():
    return get_renderer()


def preset():
    return get_preset("canonical").with_overrides(resolution=64, n_views=3)


def foreground_mean(rgba: np.ndarray) -> np.ndarray:
    """Mean RGB over the pixels fully covered by the object, all views together."""
    fg = rgba[..., 3] == 255
    return rgba[fg][:, :3].astype(float).mean(axis=0)


@pytest.mark.parametrize("rgb", [(200, 30, 30), (204, 204, 204)])
def test_one_colour_renders_the_same_from_every_container(renderer, tmp_path, rgb):
    files = M.one_colour_sphere(tmp_path, rgb)
    means = {k: foreground_mean(renderer.render(load_asset(files[k]), preset()).rgba) for k in CONTAINERS}
    ref = means["glb_texture"]
    worst = {k: float(np.abs(m - ref).max()) for k, m in means.items()}
    assert max(worst.values()) <= 1.0, {k: np.round(m, 1).tolist() for k, m in means.items()}


def test_uvs_without_an_image_are_not_a_texture(renderer, tmp_path):
    """trimesh gives a PLY with UVs and no image a grey 2x2 placeholder texture; that is not the file's colour."""
    asset = load_asset(M.one_colour_sphere(tmp_path, (0, 0, 0))["ply_uv_no_image"])
    assert not asset.has_texture and not asset.has_vertex_colors
    m = asset.meshes[0]
    bare = Asset(path=asset.path, meshes=[trimesh.Trimesh(m.vertices, m.faces, process=False)], up_axis="+z")
    np.testing.assert_array_equal(renderer.render(asset, preset()).rgba, renderer.render(bare, preset()).rgba)
