"""ar3d-r1-compat against a small re-implementation of the released eval.py's steps, written here.

The re-implementation follows eval.py line by line: trimesh.load(force='mesh'), pyrender's
MetallicRoughnessMaterial(baseColorFactor=1), one DirectionalLight(intensity=3.0) at the camera pose, white
background, default render flags; reference PNGs opened and ``convert('RGB')``; ``resize((224, 224))`` then the
DINOv2 processor (shortest edge 256, centre crop 224, ImageNet mean/std, written out with PIL and numpy here);
sklearn's ``rbf_kernel`` mean; ``prompt.split('.')[0]``.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

import tiny_features
from mme3dr.assets import load_asset
from mme3dr.metrics.base import ScoreItem
from mme3dr.metrics.compat import Ar3dCompatKD, rbf_similarity, released_prompt_text
from mme3dr.metrics.features import DinoV2Features
from mme3dr.render.cameras import look_at, read_transforms
from mme3dr.render.presets import get_preset
from mme3dr.render.renderer import get_renderer

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def test_prompt_text_is_cut_at_the_first_period():
    assert released_prompt_text("A deep red rose, with smooth curled petals. On a stem.") == \
        "A deep red rose, with smooth curled petals"
    assert released_prompt_text("Chess pawn 3.5 cm tall. White.") == "Chess pawn 3"  # any '.', as split('.')
    assert released_prompt_text("No period at all") == "No period at all"
    assert released_prompt_text(". Starts with a period") == ". Starts with a period"  # blank -> prompt[:77]
    long = ".. " + "y" * 100
    assert released_prompt_text(long) == long[:77]


def test_rbf_similarity_is_sklearns_rbf_kernel_mean():
    rbf_kernel = pytest.importorskip("sklearn.metrics.pairwise").rbf_kernel
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(24, 40)), rng.normal(size=(24, 40)) + 0.3
    assert rbf_similarity(a, b) == pytest.approx(rbf_kernel(a, b).mean(), rel=1e-12)  # default gamma = 1 / 40


# ---- DINOv2 "KD" --------------------------------------------------------------------------------------------

def eval_py_dinov2(model, images):
    """eval.py: img.convert('RGB').resize((224, 224)), then the DINOv2 processor, then the CLS token."""
    batch = []
    for im in images:
        im = im.convert("RGB").resize((224, 224))  # PIL's default filter (bicubic)
        im = im.resize((256, 256), Image.BICUBIC)  # shortest edge -> 256
        a = np.asarray(im, dtype=np.float64)[16:240, 16:240] / 255.0  # centre crop 224
        batch.append((a - MEAN) / STD)
    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state[:, 0].double().numpy()


def reference_rgba(seed: int) -> Image.Image:
    """An object on a transparent background (stored RGB 0 there), with half-covered edge pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    r = np.hypot(yy - 128 - 20 * rng.random(), xx - 128)
    rgba = np.zeros((256, 256, 4), np.uint8)
    inside = r < 70
    rgba[inside, :3] = rng.integers(40, 220, size=3)
    rgba[..., 3] = np.where(inside, 255, 0)
    edge = (r >= 70) & (r < 72)
    rgba[edge] = [200, 60, 40, 128]
    return Image.fromarray(rgba, "RGBA")


def test_compat_kd_matches_eval_py(tmp_path):
    from transformers import Dinov2Model

    folder = tiny_features.tiny_dinov2(tmp_path / "dino")
    ref_dir, gen_dir = tmp_path / "REF" / "spatial-001", tmp_path / "gen"
    ref_dir.mkdir(parents=True)
    gen_dir.mkdir()
    refs = [reference_rgba(i) for i in range(3)]
    for i, im in enumerate(refs):
        im.save(ref_dir / f"{i:03d}.png")
    rng = np.random.default_rng(5)
    gens = [Image.fromarray(rng.integers(0, 256, (299, 299, 3), dtype=np.uint8)) for _ in range(4)]
    for i, im in enumerate(gens):
        im.save(gen_dir / f"{i:03d}.png")
    item = ScoreItem("spatial-001", "spatial", "A chair.", render_dir=gen_dir)

    res = Ar3dCompatKD(tmp_path / "REF", DinoV2Features(str(folder), device="cpu", preprocessing="ar3d-r1-eval"))
    ours = res.score(item)

    model = Dinov2Model.from_pretrained(folder).eval()
    a, b = eval_py_dinov2(model, refs), eval_py_dinov2(model, gens)
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    expected = np.exp(-d2 / a.shape[1]).mean()  # sklearn rbf_kernel, gamma = 1 / n_features
    assert ours.values["ar3d_compat_kd"] == pytest.approx(expected, rel=1e-5)
    assert ours.details["reference_alpha"] and not ours.details["non_finite_set_to_zero"]


def test_compat_kd_sets_non_finite_to_zero(tmp_path, monkeypatch):
    folder = tiny_features.tiny_dinov2(tmp_path / "dino")
    (tmp_path / "REF" / "p").mkdir(parents=True)
    reference_rgba(0).save(tmp_path / "REF" / "p" / "000.png")
    reference_rgba(1).convert("RGB").save(tmp_path / "000.png")
    metric = Ar3dCompatKD(tmp_path / "REF", DinoV2Features(str(folder), device="cpu", preprocessing="ar3d-r1-eval"))
    monkeypatch.setattr(DinoV2Features, "__call__", lambda self, images: np.full((len(images), 4), np.inf))
    res = metric.score(ScoreItem("p", "spatial", "x", render_dir=tmp_path))
    assert res.values["ar3d_compat_kd"] == 0.0 and res.details["non_finite_set_to_zero"]
    with pytest.raises(ValueError, match="ar3d-r1-eval"):
        Ar3dCompatKD(tmp_path / "REF", DinoV2Features(str(folder), device="cpu"))


# ---- rendering ----------------------------------------------------------------------------------------------

EVAL_PY_RENDER = r"""
import json, sys
import numpy as np
import pyrender, trimesh

def look_at(eye, center, up):
    z = eye - center; z = z / (np.linalg.norm(z) + 1e-8)
    x = np.cross(up, z); x = x / (np.linalg.norm(x) + 1e-8)
    y = np.cross(z, x)
    m = np.eye(4, dtype=np.float32); m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m

mesh_path, transforms_path, out_path = sys.argv[1:4]
frames = json.load(open(transforms_path))["frames"]
tm = trimesh.load(mesh_path, force="mesh")
material = pyrender.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0])
pr_mesh = pyrender.Mesh.from_trimesh(tm, material=material, smooth=True)
r = pyrender.OffscreenRenderer(viewport_width=299, viewport_height=299)
images = []
for frame in frames:
    scene = pyrender.Scene(bg_color=[1.0, 1.0, 1.0, 0.0])
    scene.add(pr_mesh)
    m = np.array(frame["transform_matrix"], dtype=np.float32)
    eye, up = m[:3, 3], m[:3, 1]
    pose = look_at(eye, eye - m[:3, 2], up)
    scene.add(pyrender.PerspectiveCamera(yfov=float(frame["camera_angle_x"])), pose=pose)
    scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=3.0), pose=pose)
    color, _ = r.render(scene)
    images.append(color)
r.delete()
np.save(out_path, np.stack(images))
"""


def test_compat_preset_renders_as_eval_py(renderer_backend, tmp_path):
    # an asymmetric, already normalised mesh (eval.py renders the file's own frame; we normalise: identity here)
    m = trimesh.util.concatenate([trimesh.creation.box(extents=(1.0, 0.4, 0.3)),
                                  trimesh.creation.cone(radius=0.2, height=0.5).apply_translation((0.3, 0.0, 0.1))])
    m.apply_translation(-m.bounds.mean(axis=0))
    m.apply_scale(1.0 / np.max(m.extents))
    m.visual.vertex_colors = np.tile([200, 30, 30, 255], (len(m.vertices), 1))  # dropped by both
    m.export(tmp_path / "gen.glb")
    frames = [{"camera_angle_x": 0.6981317, "transform_matrix": look_at(p).tolist()}
              for p in ((2.0, 0.3, 0.4), (-1.2, 1.4, 0.8), (0.4, -1.9, -0.5), (0.2, 0.5, 1.9))]
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": frames}))

    env = dict(os.environ, PYOPENGL_PLATFORM=renderer_backend, PYGLET_HEADLESS="1")
    res = subprocess.run([sys.executable, "-c", EVAL_PY_RENDER, str(tmp_path / "gen.glb"),
                          str(tmp_path / "transforms.json"), str(tmp_path / "theirs.npy")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    theirs = np.load(tmp_path / "theirs.npy").astype(int)

    preset = get_preset("ar3d-r1-compat")
    ours = get_renderer().render(load_asset(tmp_path / "gen.glb"), preset,
                                 cameras=read_transforms(tmp_path / "transforms.json")).rgba[..., :3].astype(int)
    assert ours.shape == theirs.shape == (4, 299, 299, 3)
    diff = np.abs(ours - theirs)
    assert diff.mean() < 0.1 and np.mean(diff > 8) < 0.001, (diff.mean(), np.mean(diff > 8))  # measured: max 1


@pytest.fixture(scope="module")
def renderer_backend():
    return get_renderer().backend
