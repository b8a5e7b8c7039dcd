"""Rendering with pyrender (EGL or OSMesa, headless). Small resolutions keep it quick on a CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy import ndimage

import make_assets as M
from mme3dr.assets import Asset, load_asset
from mme3dr.render.cameras import read_transforms
from mme3dr.render.lights import LIGHT_RIGS
from mme3dr.render.presets import RenderPreset, get_preset
from mme3dr.render.renderer import get_renderer
from test_cameras import ROSE, needs_fixture


@pytest.fixture(scope="module")
def renderer():
    return get_renderer()


def small(name="canonical", **kw):
    return get_preset(name).with_overrides(resolution=kw.pop("resolution", 128), **kw)


def red_box(tmp_path):
    m = trimesh.creation.box(extents=(1, 1, 1))
    m.visual.vertex_colors = np.tile([230, 20, 20, 255], (len(m.vertices), 1))
    return load_asset(m.export(tmp_path / "red.ply") and tmp_path / "red.ply")


@pytest.fixture(scope="module")
def rose(renderer):
    """Our canonical 512x512 renders of the rose from its 24 official poses, and the 24 official RGBA renders."""
    cams = read_transforms(ROSE / "transforms.json")
    ours = renderer.render(load_asset(ROSE / "mesh.ply"), get_preset("canonical"), cameras=cams).rgba
    official = np.stack([np.asarray(Image.open(ROSE / f"{i:03d}.png").convert("RGBA")) for i in range(24)])
    return ours, official


@needs_fixture
def test_silhouettes_match_the_official_renders(renderer, rose):
    """Every official alpha silhouette is >= 98% covered by ours and ours >= 98% inside it, 2 px tolerance."""
    ours_all, official = rose
    tol = np.ones((5, 5), bool)  # 2 pixels each way
    for i in range(24):
        ours = ours_all[i, ..., 3] > 127
        theirs = official[i, ..., 3] > 127
        covered = (theirs & ndimage.binary_dilation(ours, tol)).sum() / theirs.sum()
        inside = (ours & ndimage.binary_dilation(theirs, tol)).sum() / ours.sum()
        assert covered >= 0.98 and inside >= 0.98, (i, covered, inside)
    # the check has teeth: with back-face culling the single-sided petals vanish from some views
    cams = read_transforms(ROSE / "transforms.json")
    culled = renderer.render(load_asset(ROSE / "mesh.ply"), get_preset("canonical").with_overrides(double_sided=False),
                             cameras=cams)
    cover_culled = [((official[i, ..., 3] > 127) & ndimage.binary_dilation(culled.rgba[i, ..., 3] > 127, tol)).sum()
                    / (official[i, ..., 3] > 127).sum() for i in range(24)]
    assert min(cover_culled) < 0.9


def interior_luminance(rgba: np.ndarray) -> float:
    """Mean luminance (PIL "L": 0.299 R + 0.587 G + 0.114 B) of the fully covered pixels (alpha = 255)."""
    luma = np.asarray(Image.fromarray(np.ascontiguousarray(rgba[..., :3])).convert("L"), dtype=float)
    return float(luma[rgba[..., 3] == 255].mean())


@needs_fixture
def test_lighting_follows_the_official_renders_from_view_to_view(rose):
    """Per-view mean luminance, ours vs official, correlates across the 24 views with r > 0.92.

    The mesh has no colour, so this compares lighting only as far as the official albedo (a red flower, a green
    stem) allows. Measured on llvmpipe: r = 0.947 with the TRELLIS rig. The threshold 0.92 rejects a rig with a
    camera headlight: the previous rig (headlight 2.0, key and top lights 2.0 and 1.0, ambient 0.25) gives 0.89
    even with this renderer's colour and two-sided fixes (0.15 as it shipped), a lone headlight -0.13. Renderer
    noise moves per-view means by well under one grey level, r by less than 0.01.
    """
    ours, official = rose
    r = np.corrcoef([interior_luminance(v) for v in ours], [interior_luminance(v) for v in official])[0, 1]
    assert r > 0.92, r


def test_views_from_above_are_brighter_than_views_from_below(renderer):
    """The TRELLIS rig lights from above (no headlight): a grey sphere seen from 60 deg above is over twice as
    bright as from 60 deg below (measured 2.8x; the old headlight rig gave 1.24x)."""
    ball = Asset(path=None, meshes=[trimesh.creation.icosphere(subdivisions=3, radius=0.5)], up_axis="+z")
    views = RenderPreset("t", resolution=64, cameras="yaw-elevation",
                         views_deg=((30.0, 60.0), (30.0, -60.0), (210.0, 60.0), (210.0, -60.0)))
    lum = [interior_luminance(v) for v in renderer.render(ball, views).rgba]
    assert lum[0] > 2 * lum[1] and lum[2] > 2 * lum[3], lum


def test_trellis_rig_is_the_blender_rig_in_pyrender_units():
    """The rig's numbers, rederived here from the Blender script and Cycles' light conventions.

    Key: point light 1000 W at (4, 1, 6) -> intensity P / (4 pi). Sky: a one-sided 25 m square area light of
    10,000 W at height 10 (radiance 0.25 P / A), integrated numerically over the square for random surface
    normals; the rig's directional lights plus the uniform part of its ambient must give that irradiance to 6% rms.
    """
    rig = LIGHT_RIGS["trellis"]
    assert rig.headlight == 0.0
    (intensity, position), = rig.point
    assert position == (4.0, 1.0, 6.0) and intensity == pytest.approx(1000.0 / (4.0 * np.pi))
    side, height, power = 0.25 * 100.0, 10.0, 10_000.0
    radiance = 0.25 * power / side ** 2
    g = (np.arange(200) + 0.5) / 200 * side - side / 2
    x, y = np.meshgrid(g, g)
    pts = np.stack([x.ravel(), y.ravel(), np.full(x.size, height)], axis=1)
    dist = np.linalg.norm(pts, axis=1)
    towards = pts / dist[:, None]
    solid_angle = (side / 200) ** 2 * (height / dist) / dist ** 2  # dA cos(theta_emitter) / d^2
    normals = np.vstack([[0.0, 0.0, 1.0], np.random.default_rng(0).normal(size=(300, 3))])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    truth = radiance * np.maximum(normals @ towards.T, 0.0) @ solid_angle
    assert truth[0] == pytest.approx(8.29, abs=0.05)  # facing straight up
    uniform = (rig.ambient - 0.0509) * np.pi  # ambient = Blender's world radiance + the sky's uniform part / pi
    dirs = np.array([d for _, d in rig.directional])
    ours = np.maximum(normals @ dirs.T, 0.0) @ np.array([w for w, _ in rig.directional]) + uniform
    assert np.sqrt(np.mean((ours - truth) ** 2)) / truth.mean() < 0.06


def test_render_twice_gives_identical_pixels(renderer, tmp_path):
    asset = load_asset(M.textured_glb(tmp_path / "t.glb"))
    a = renderer.render(asset, small(), depth=True)
    b = renderer.render(asset, small(), depth=True)
    np.testing.assert_array_equal(a.rgba, b.rgba)
    np.testing.assert_array_equal(a.depth, b.depth)


@pytest.mark.slow
def test_two_processes_render_identical_pixels(tmp_path):
    """The same mesh rendered by two fresh processes (different hash seeds, so pyrender's node sets would iterate in
    different orders): every PNG of the full canonical preset has byte-identical pixels."""
    mesh = trimesh.creation.icosphere(subdivisions=3)
    mesh.visual.vertex_colors = np.tile([200, 120, 40, 255], (len(mesh.vertices), 1))
    mesh.export(tmp_path / "ico.glb")
    repo = Path(__file__).resolve().parents[1]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.pathsep.join(
            [str(repo), os.environ.get("PYTHONPATH", "")])}
        res = subprocess.run([sys.executable, "-m", "mme3dr.cli", "render", str(tmp_path / "ico.glb"), "--out",
                              str(tmp_path / seed), "--no-progress"], env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in (tmp_path / "1").glob("[0-9][0-9][0-9].png"))
    assert len(names) == 24
    differing = [n for n in names if not np.array_equal(np.asarray(Image.open(tmp_path / "1" / n)),
                                                        np.asarray(Image.open(tmp_path / "2" / n)))]
    assert differing == []


def test_backgrounds(renderer, tmp_path):
    asset = red_box(tmp_path)
    for bg, corner in (("transparent", [0, 0, 0, 0]), ("white", [255, 255, 255, 255]), ("black", [0, 0, 0, 255])):
        out = renderer.render(asset, small(background=bg, n_views=2))
        assert out.rgba[0, 0, 0].tolist() == corner, bg
        centre = out.rgba[0, 64, 64]
        assert centre[3] == 255 and centre[0] > 2 * max(centre[1], centre[2]), (bg, centre)  # red survives shading


def test_clay_removes_colour_and_textures_are_sampled(renderer, tmp_path):
    clay = renderer.render(red_box(tmp_path), small(shading="clay", n_views=1)).rgba[0, 64, 64, :3].astype(int)
    assert np.ptp(clay) <= 2 and clay.mean() > 60  # grey
    tex = renderer.render(load_asset(M.textured_glb(tmp_path / "t.glb")), small(n_views=4)).rgba
    fg = tex[..., 3] == 255
    assert np.std(tex[fg][:, :3].astype(float), axis=0).mean() > 20  # checker texture varies across the surface


def test_double_sided_shows_the_back_of_a_single_sided_sheet(renderer):
    # a square in the z=0 plane facing +z, seen from below
    sheet = trimesh.Trimesh([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    asset = Asset(path=None, meshes=[sheet], up_axis="+z")
    below = RenderPreset("t", resolution=64, cameras="yaw-elevation", views_deg=((0.0, -60.0),))
    seen = renderer.render(asset, below).rgba[0, ..., 3]
    culled = renderer.render(asset, below.with_overrides(double_sided=False)).rgba[0, ..., 3]
    assert (seen > 0).mean() > 0.2 and (culled > 0).sum() == 0


def test_depth_and_normals_against_geometry(renderer, tmp_path):
    asset = red_box(tmp_path)  # normalised: the cube [-0.5, 0.5]^3
    head_on = RenderPreset("t", resolution=128, cameras="yaw-elevation", views_deg=((0.0, 0.0),))
    out = renderer.render(asset, head_on, depth=True, normals=True)
    # camera at (2, 0, 0) looking at the origin: the face x = 0.5 is 1.5 away along the view axis
    assert out.depth[0, 64, 64] == pytest.approx(1.5, abs=1e-3)
    assert out.depth[0, 0, 0] == 0.0
    n = out.normals[0, 64, 64].astype(float) / 127.5 - 1.0
    assert n @ [1.0, 0.0, 0.0] > 0.5  # the visible face's normal points at the camera (+x)


def test_render_asset_cli_and_files(tmp_path):
    from typer.testing import CliRunner

    from mme3dr.cli import app

    mesh = M.textured_glb(tmp_path / "t.glb")
    res = CliRunner().invoke(app, ["render", str(mesh), "--out", str(tmp_path / "a"), "--resolution", "64",
                                   "--background", "transparent", "--depth"])
    assert res.exit_code == 0, res.output
    res2 = CliRunner().invoke(app, ["render", str(mesh), "--out", str(tmp_path / "b"), "--resolution", "64"])
    assert res2.exit_code == 0
    a, b = tmp_path / "a", tmp_path / "b"
    names = sorted(p.name for p in a.glob("[0-9][0-9][0-9].png"))
    assert len(names) == 24
    for n in names:  # the same command twice gives the same pixels
        np.testing.assert_array_equal(np.asarray(Image.open(a / n)), np.asarray(Image.open(b / n)))
    img = Image.open(a / "000.png")
    assert img.mode == "RGBA" and img.size == (64, 64)
    rec = json.loads((a / "render.json").read_text())
    tag = f"{rec['preset']}-{rec['preset_hash']}"
    assert img.text["mme3dr_preset"] == tag
    assert json.loads((a / "transforms.json").read_text())["preset_hash"] == rec["preset_hash"]
    assert np.load(a / "depth.npz")["depth"].shape == (24, 64, 64)
    assert Image.open(a / "contact_sheet.png").size == (6 * 256, 4 * 256)
    assert len(read_transforms(a / "transforms.json")) == 24


def test_backend_selection_errors(monkeypatch):
    from mme3dr.render import backend

    with pytest.raises(ValueError, match="unknown GL backend 'vulkan'"):
        backend.select_backend("vulkan")
    chosen = backend.select_backend()  # this process already renders with one backend
    other = "osmesa" if chosen == "egl" else "egl"
    with pytest.raises(RuntimeError, match="cannot switch"):
        backend.select_backend(other)


def test_scoring_libraries_can_be_imported_after_rendering():
    """Regression: importing triton (via torchvision/open_clip) after a Mesa GL context segfaulted the process."""
    import subprocess
    import sys

    code = ("from mme3dr.render.renderer import get_renderer\nget_renderer()\n"
            "import torchvision, open_clip\nprint('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


@pytest.mark.parametrize("channels", [3, 4])
def test_encode_png_is_lossless_and_carries_its_text(channels):
    """Pillow, an independent decoder that checks every chunk's CRC, reads back the exact pixels and the text."""
    import io

    from mme3dr.render.output import encode_png

    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)[..., :channels]  # not contiguous for 3 channels
    pixels[:10] = 0  # a transparent band, as around a rendered object
    text = {"mme3dr_preset": "main-0123abcd", "k": "Größe", "name": "ваза-0123"}  # the last is not Latin-1
    img = Image.open(io.BytesIO(encode_png(pixels, text)))
    img.load()
    assert img.mode == ("RGBA" if channels == 4 else "RGB")
    np.testing.assert_array_equal(np.asarray(img), pixels)
    assert img.text == text
    assert Image.open(io.BytesIO(encode_png(pixels))).text == {}
