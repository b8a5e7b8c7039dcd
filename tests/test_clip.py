import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import tiny_clip
from mme3dr.metrics.base import ScoreItem
from mme3dr.metrics.clip import ClipScore
from mme3dr.metrics.compat import Ar3dCompatClip, released_prompt_text
from mme3dr.weights import MissingWeightsError

PROMPT = "Dark brown wooden rocking chair with curved armrests and spindle backrest."


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_clip.tiny_clip_checkpoint(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def item(tmp_path_factory):
    folder = tmp_path_factory.mktemp("views")
    rng = np.random.default_rng(0)
    for i in range(7):
        rgba = (rng.random((48, 48, 4)) * 255).astype(np.uint8)
        rgba[..., 3] = np.where(rng.random((48, 48)) > 0.3, 255, 0)
        Image.fromarray(rgba, "RGBA").save(folder / f"{i:03d}.png")
    return ScoreItem("spatial-002", "spatial", PROMPT, render_dir=folder)


def test_clip_equals_100_cosine_of_the_same_open_clip_model(ckpt, item):
    res = ClipScore(tiny_clip.TINY_CLIP, str(ckpt), device="cpu").score(item)
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip.TINY_CLIP, pretrained=str(ckpt))
    model.eval()
    tok = open_clip.get_tokenizer(tiny_clip.TINY_CLIP)
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(v) for v in item.views()]))
        txt = model.encode_text(tok([PROMPT]))
    expected = 100 * (img / img.norm(dim=-1, keepdim=True) @ (txt / txt.norm(dim=-1, keepdim=True)).T).squeeze(1)
    np.testing.assert_allclose(res.per_view["clip"], expected.numpy(), atol=1e-4)
    assert res.values["clip"] == pytest.approx(float(expected.mean()), abs=1e-4)
    assert res.values["clip_worst"] == pytest.approx(float(expected.min()), abs=1e-4)


def test_batch_size_does_not_change_scores_and_runs_repeat(ckpt, item):
    a = ClipScore(tiny_clip.TINY_CLIP, str(ckpt), device="cpu", batch_size=1).score(item)
    b = ClipScore(tiny_clip.TINY_CLIP, str(ckpt), device="cpu", batch_size=5).score(item)
    c = ClipScore(tiny_clip.TINY_CLIP, str(ckpt), device="cpu", batch_size=5).score(item)
    np.testing.assert_allclose(a.per_view["clip"], b.per_view["clip"], atol=1e-4)
    assert b.per_view == c.per_view


def test_weights_are_really_loaded_from_files_and_the_weights_folder(tmp_path, ckpt, item, monkeypatch):
    other = tiny_clip.tiny_clip_checkpoint(tmp_path, seed=1)
    a = ClipScore(tiny_clip.TINY_CLIP, str(ckpt), device="cpu").score(item).values["clip"]
    b = ClipScore(tiny_clip.TINY_CLIP, str(other), device="cpu").score(item).values["clip"]
    assert a != pytest.approx(b, abs=1e-3)
    (tmp_path / "w").mkdir()
    other.rename(tmp_path / "w" / f"{tiny_clip.TINY_CLIP}-mytag.pt")
    monkeypatch.setenv("MME3DR_WEIGHTS", str(tmp_path / "w"))
    via_env = ClipScore(tiny_clip.TINY_CLIP, "mytag", device="cpu")
    assert via_env.score(item).values["clip"] == pytest.approx(b, abs=1e-6)
    assert "mytag.pt" in via_env.config()["weights"]


def test_missing_weights_say_how_to_provide_them(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match=r"MME3DR_WEIGHTS.*--clip-weights"):
        ClipScore("ViT-B-32", "openai", device="cpu")
    with pytest.raises(ValueError, match="no model 'ViT-B-33'"):
        ClipScore("ViT-B-33", "openai")


def test_long_prompts_are_truncated_with_a_warning(ckpt, item):
    long = ScoreItem("x", "spatial", " ".join(["wooden chair with many carved spindles"] * 20), render_dir=item.render_dir)
    with pytest.warns(UserWarning, match="truncated"):
        res = ClipScore(tiny_clip.TINY_CLIP, str(ckpt), device="cpu").score(long)
    assert res.details["truncated"] and np.isfinite(res.values["clip"])


def test_compat_clip_is_the_raw_cosine_of_the_text_before_the_first_period(ckpt, item):
    assert released_prompt_text(PROMPT) == PROMPT[:-1]
    two = ScoreItem("x", "spatial", PROMPT + " Second sentence here.", render_dir=item.render_dir)
    score = ClipScore(tiny_clip.TINY_CLIP, str(ckpt), device="cpu")
    compat = Ar3dCompatClip(score.clip).score(two)
    assert compat.details["text"] == PROMPT[:-1]
    no_period = ScoreItem("x", "spatial", PROMPT[:-1], render_dir=item.render_dir)
    np.testing.assert_allclose(np.array(compat.per_view["ar3d_compat_clip"]) * 100,
                               score.score(no_period).per_view["clip"], atol=1e-4)
