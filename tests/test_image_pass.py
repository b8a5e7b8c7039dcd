"""The image pass of `mme3dr score`: views decoded once, batches spanning prompts, the same numbers as computing each
metric on its own from PIL-loaded views (open_clip's preprocess, torch-fidelity's extractor, DINOv2 directly)."""

import json
import shutil
import threading
from collections import Counter

import numpy as np
import open_clip
import pytest
import torch
import trimesh
from PIL import Image

import tiny_clip
import tiny_features
from mme3dr.adapters import Generator, ModelSpec
from mme3dr.data import load_benchmark
from mme3dr.errors import InputError
from mme3dr.generation import generate_run
from mme3dr.metrics.base import composite
from mme3dr.metrics.clip import square_resize
from mme3dr.metrics.features import IMAGENET_MEAN, IMAGENET_STD, normalise
from mme3dr.metrics.fidelity import fid_by_object, kid_by_object
from mme3dr.metrics.specs import ScoreOptions
from mme3dr.metrics import views as views_module
from mme3dr.render.presets import get_preset
from mme3dr.render.references import build_references
from mme3dr.render.runs import render_run
from mme3dr.scoring import score_run

PRESET = get_preset("canonical").with_overrides(resolution=48, n_views=4)
METRICS = ["clip", "kid", "fid", "kid_dinov2"]


class Shapes(Generator):
    def generate_one(self, request):
        i = int(request.prompt_id[-3:])
        path = request.output_dir / "mesh.ply"
        m = trimesh.creation.box(extents=(1, 0.3 * i, 0.6)) if i % 2 else trimesh.creation.icosphere(1)
        m.export(path)
        return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pass")
    prompts = load_benchmark(categories=["spatial", "mechanical"], limit=5)
    generate_run(Shapes(), prompts, tmp / "RUN", model_spec=ModelSpec("shapes"), progress=False)
    render_run(tmp / "RUN", PRESET, progress=False)
    (tmp / "meshes" / "spatial").mkdir(parents=True)
    for i in range(3):
        trimesh.creation.icosphere(subdivisions=1).apply_scale((1, 0.5 + i * 0.3, 0.7)).export(
            tmp / "meshes" / "spatial" / f"s{i}.ply")
    build_references(tmp / "REF", PRESET, meshes=tmp / "meshes", progress=False)
    opts = ScoreOptions(device="cpu", clip_model=tiny_clip.TINY_CLIP,
                        clip_pretrained=str(tiny_clip.tiny_clip_checkpoint(tmp)),
                        inception_weights=str(tiny_features.random_inception_weights(tmp / "inc.pth")),
                        dinov2_model=str(tiny_features.tiny_dinov2(tmp / "dino")))
    return tmp, prompts, opts


def fresh(setup, name):
    """A copy of the run and the reference set with no scores and no cached features."""
    tmp, _, _ = setup
    out = tmp / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(tmp / "RUN", out / "RUN", ignore=shutil.ignore_patterns("features", "scores.jsonl"))
    shutil.copytree(tmp / "REF", out / "REF", ignore=shutil.ignore_patterns("features"))
    return out / "RUN", out / "REF"


def clip_records(run):
    rows = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows if r["metric"] == "clip"]


def set_values(run):
    sets = json.loads((run / "set_scores.json").read_text())
    return {m: {g: (e["value"], e["paper_value"]) for g, e in [("overall", r["overall"]), *r["per_category"].items()]}
            for m, r in sets.items()}


def view_files(folder):
    return sorted(folder.glob("*/[0-9][0-9][0-9].png"))


def test_the_shared_resize_is_open_clips_preprocess_and_the_dinov2_path():
    rng = np.random.default_rng(0)
    rgba = (rng.random((300, 300, 4)) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(rng.random((300, 300)) > 0.4, 255, 0)
    view = views_module.prepare(composite(Image.fromarray(rgba, "RGBA")), (224,))
    # open_clip's ViT-B/32 eval transform: Resize(224, bicubic) + CenterCrop(224) + RGB + ToTensor + Normalize
    pre = open_clip.image_transform(224, is_train=False)
    size, mean, std = square_resize(pre)
    assert size == 224
    expected = pre(composite(Image.fromarray(rgba, "RGBA")))
    got = normalise(view.resized[224][None], mean, std)[0]
    assert torch.equal(got, expected)  # the same values to the last bit
    # DINOv2 resize224 as it was computed before: PIL resize to 224 bicubic, /255, ImageNet mean/std on the CPU
    small = composite(Image.fromarray(rgba, "RGBA")).resize((224, 224), Image.BICUBIC)
    old = torch.from_numpy(np.array(small)).permute(2, 0, 1)[None].float() / 255.0
    old = (old - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.equal(normalise(view.resized[224][None], IMAGENET_MEAN, IMAGENET_STD), old)
    # a transform that is not the plain square resize is not taken for one
    assert square_resize(open_clip.image_transform(224, is_train=False, resize_mode="squash")) is None
    assert square_resize(open_clip.image_transform(224, is_train=False, interpolation="bilinear")) is None


def test_scores_equal_each_metric_computed_on_its_own(setup):
    tmp, prompts, opts = setup
    run, ref = fresh(setup, "equal")
    s = score_run(run, METRICS, PRESET, ref, opts, progress=False)
    assert s.scored["clip"] == len(prompts) and not s.errors["clip"]
    # CLIP: open_clip's own preprocess and model, one prompt at a time
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip.TINY_CLIP, pretrained=opts.clip_pretrained)
    model.eval()
    tok = open_clip.get_tokenizer(tiny_clip.TINY_CLIP)
    records = {r["prompt_id"]: r for r in clip_records(run)}
    with torch.no_grad():
        for p in prompts:
            paths = sorted((run / "renders" / PRESET.tag / p.id).glob("[0-9][0-9][0-9].png"))
            img = model.encode_image(torch.stack([preprocess(composite(Image.open(q))) for q in paths]))
            txt = model.encode_text(tok([p.prompt]))
            cos = 100 * (img / img.norm(dim=-1, keepdim=True) @ (txt / txt.norm(dim=-1, keepdim=True)).T)[:, 0]
            np.testing.assert_allclose(records[p.id]["per_view"]["clip"], cos.numpy(), atol=1e-4)
            assert records[p.id]["values"]["clip"] == pytest.approx(float(cos.mean()), abs=1e-4)
    # Inception: torch-fidelity's extractor on PIL-loaded views; DINOv2: the model on the 224 bicubic resize
    from torch_fidelity.utils import create_feature_extractor
    from transformers import Dinov2Model

    inception = create_feature_extractor("inception-v3-compat", ["2048"], cuda=False,
                                         feature_extractor_weights_path=opts.inception_weights)
    dino = Dinov2Model.from_pretrained(opts.dinov2_model).eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def features(folder):
        paths = view_files(folder)
        ims = [composite(Image.open(q)) for q in paths]
        with torch.no_grad():
            inc = inception(torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in ims]))[0]
            x = torch.stack([torch.from_numpy(np.array(im.resize((224, 224), Image.BICUBIC))).permute(2, 0, 1)
                             for im in ims]).float() / 255.0
            din = dino(pixel_values=(x - mean) / std).last_hidden_state[:, 0]
        return inc.double().numpy(), din.double().numpy(), np.array([q.parent.name for q in paths])

    gi, gd, gl = features(run / "renders" / PRESET.tag)
    ri, rd, rl = features(ref / PRESET.tag)
    stored = set_values(run)
    assert stored["kid"]["overall"][0] == pytest.approx(kid_by_object(gi, ri, gl, rl).value, rel=1e-4, abs=1e-8)
    assert stored["fid"]["overall"][0] == pytest.approx(fid_by_object(gi, ri, gl, rl).value, rel=1e-4)
    assert stored["kid_dinov2"]["overall"][0] == pytest.approx(kid_by_object(gd, rd, gl, rl).value, rel=1e-4,
                                                              abs=1e-8)
    [cache] = (run / "renders" / PRESET.tag / "features").glob("inception-*.npz")
    with np.load(cache) as data:
        assert data["features"].dtype == np.float32
        by_file = {k.rsplit("@", 1)[0]: f for k, f in zip(data["keys"].tolist(), data["features"])}
    cached = np.stack([by_file[str(q)] for q in view_files(run / "renders" / PRESET.tag)])
    np.testing.assert_allclose(cached, gi, rtol=1e-4, atol=1e-5)


def test_batch_size_and_decode_workers_change_nothing(setup):
    _, _, opts = setup
    out = {}
    for batch, workers in ((1, 0), (7, 2), (32, 1), (32, 2)):
        run, ref = fresh(setup, f"b{batch}w{workers}")
        o = ScoreOptions(**{**opts.__dict__, "batch_size": batch, "decode_workers": workers})
        score_run(run, ["clip", "kid_dinov2"], PRESET, ref, o, progress=False)
        recs = clip_records(run)
        for r in recs:  # the run folder differs; the rest of every record must not
            r.pop("asset_sha256")
        out[batch, workers] = recs, set_values(run)
    assert out[32, 1] == out[32, 2]
    base_recs, base_sets = out[32, 1]
    for recs, sets in out.values():
        for a, b in zip(recs, base_recs):
            np.testing.assert_allclose(a["per_view"]["clip"], b["per_view"]["clip"], atol=1e-5)
            assert {k: v for k, v in a.items() if k not in ("values", "per_view")} == \
                   {k: v for k, v in b.items() if k not in ("values", "per_view")}
        assert sets["kid_dinov2"]["overall"][0] == pytest.approx(base_sets["kid_dinov2"]["overall"][0], rel=1e-5)


def count_opens(monkeypatch):
    """Counts PIL.Image.open calls by file (thread-safe), the decode of every path that reads a view."""
    opened, lock, real = Counter(), threading.Lock(), Image.open

    def counting(fp, *a, **k):
        with lock:
            opened[str(fp)] += 1
        return real(fp, *a, **k)

    monkeypatch.setattr(Image, "open", counting)
    return opened


def test_each_view_is_decoded_once_per_score_call(setup, monkeypatch):
    _, prompts, opts = setup
    opts = ScoreOptions(**{**opts.__dict__, "decode_workers": 0})  # decoded in this process, where opens are counted
    run, ref = fresh(setup, "once")
    opened = count_opens(monkeypatch)
    score_run(run, ["clip", "kid", "kid_dinov2"], PRESET, ref, opts, progress=False)
    views = [str(p) for p in view_files(run / "renders" / PRESET.tag) + view_files(ref / PRESET.tag)]
    assert len(views) == (len(prompts) + 3) * PRESET.n_views
    assert {p: opened[p] for p in views} == {p: 1 for p in views}
    # resume: everything up to date, nothing decoded; one record dropped: only that prompt's views
    opened.clear()
    again = score_run(run, ["clip", "kid", "kid_dinov2"], PRESET, ref, opts, progress=False)
    assert again.skipped["clip"] == len(prompts) and again.scored["clip"] == 0
    assert not any(opened[p] for p in views)
    lines = (run / "scores.jsonl").read_text().splitlines()
    (run / "scores.jsonl").write_text("\n".join(l for l in lines if json.loads(l)["prompt_id"] != prompts[2].id) + "\n")
    third = score_run(run, ["clip", "kid"], PRESET, ref, opts, progress=False)
    assert third.scored["clip"] == 1 and third.skipped["clip"] == len(prompts) - 1
    assert {p for p in views if opened[p]} == {str(p) for p in
                                                 sorted((run / "renders" / PRESET.tag / prompts[2].id).glob("*.png"))
                                                 if p.name[:3].isdigit()}


def test_a_broken_view_fails_its_prompt_and_the_others_are_scored(setup):
    _, prompts, opts = setup
    run, ref = fresh(setup, "broken")
    bad = run / "renders" / PRESET.tag / prompts[1].id / "002.png"
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG
    s = score_run(run, ["clip"], PRESET, ref, opts, progress=False)
    assert s.scored["clip"] == len(prompts) - 1 and [pid for pid, _ in s.errors["clip"]] == [prompts[1].id]
    recs = clip_records(run)
    assert [r["prompt_id"] for r in recs] == [p.id for p in prompts]  # records in prompt order
    assert recs[1]["error"] and all(r["error"] is None for i, r in enumerate(recs) if i != 1)
    with pytest.raises(InputError, match=f"{prompts[1].id}.*cannot be read"):
        score_run(run, ["kid"], PRESET, ref, opts, progress=False)


def _view_groups(tmp_path, n_groups=30, n_views=3, size=(20, 20)):
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    groups = []
    for g in range(n_groups):
        paths = []
        for v in range(n_views):
            p = tmp_path / f"g{g:02d}_{v}.png"
            Image.fromarray((rng.random((*size, 4)) * 255).astype(np.uint8), "RGBA").save(p)
            paths.append(p)
        groups.append(paths)
    return groups


@pytest.mark.parametrize("workers,processes", [(0, False), (2, False), (2, True)])
def test_views_stream_in_order_decoded_as_pil_does(tmp_path, workers, processes):
    groups = _view_groups(tmp_path)
    (tmp_path / "g07_1.png").write_bytes(b"not a png")  # fails group 7 only
    consumed = 0
    for i, group in enumerate(views_module.stream_views(groups, (8,), workers=workers, prefetch=2,
                                                        processes=processes)):
        assert group.index == i
        if i == 7:
            assert group.views == [] and "g07_1.png" in str(group.error)
            continue
        assert group.error is None
        consumed += len(group.views)
        for path, view in zip(groups[i], group.views):
            with Image.open(path) as im:
                rgb = composite(im)
                assert np.array_equal(view.rgb.numpy(), np.asarray(rgb))
                assert np.array_equal(view.resized[8].numpy(), np.asarray(rgb.resize((8, 8), Image.BICUBIC)))
    assert consumed == 29 * 3


@pytest.mark.parametrize("workers", [0, 2])
def test_views_are_decoded_only_as_far_ahead_as_asked(tmp_path, monkeypatch, workers):
    """In this process (0 workers) a group is decoded when it is asked for; in threads, at most the next group is
    decoded ahead: memory stays flat."""
    groups = _view_groups(tmp_path, n_groups=6)
    decoded, lock, real = [0], threading.Lock(), views_module.decode_view

    def counting(*a, **k):
        out = real(*a, **k)
        with lock:
            decoded[0] += 1
        return out

    monkeypatch.setattr(views_module, "decode_view", counting)
    for i, group in enumerate(views_module.stream_views(groups, (8,), workers=workers, processes=False)):
        assert 3 * (i + 1) <= decoded[0] <= 3 * (i + 1 + (workers > 0)) and len(group.views) == 3


def test_views_of_different_sizes_in_one_group_keep_their_sizes(tmp_path):
    groups = _view_groups(tmp_path, n_groups=2, n_views=2) + [_view_groups(tmp_path / "big", 1, 1, (12, 16))[0]]
    groups[1] = groups[1] + groups[2]
    for processes in (False, True):
        out = list(views_module.stream_views(groups[:2], (8,), workers=2, processes=processes))
        assert [tuple(v.rgb.shape) for v in out[1].views] == [(20, 20, 3), (20, 20, 3), (12, 16, 3)]
        assert all(tuple(v.resized[8].shape) == (8, 8, 3) for g in out for v in g.views)


def test_non_square_views_take_the_models_own_transform(setup, tmp_path):
    """A non-square view is not the shared square resize for CLIP: it goes through open_clip's transform (resize of
    the short side, centre crop), image by image, and scores what open_clip itself gives."""
    from mme3dr.metrics.base import ScoreItem
    from mme3dr.metrics.clip import ClipScore

    _, _, opts = setup
    rng = np.random.default_rng(2)
    for i in range(3):
        rgba = (rng.random((40, 64, 4)) * 255).astype(np.uint8)
        rgba[..., 3] = np.where(rng.random((40, 64)) > 0.3, 255, 0)
        Image.fromarray(rgba, "RGBA").save(tmp_path / f"{i:03d}.png")
    item = ScoreItem("x", "spatial", "A wide wooden bench.", render_dir=tmp_path)
    res = ClipScore(tiny_clip.TINY_CLIP, opts.clip_pretrained, device="cpu").score(item)
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip.TINY_CLIP, pretrained=opts.clip_pretrained)
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(v) for v in item.views()]))
        txt = model.encode_text(open_clip.get_tokenizer(tiny_clip.TINY_CLIP)([item.prompt]))
    expected = 100 * (img / img.norm(dim=-1, keepdim=True) @ (txt / txt.norm(dim=-1, keepdim=True)).T)[:, 0]
    np.testing.assert_allclose(res.per_view["clip"], expected.numpy(), atol=1e-4)


def test_a_model_failing_on_one_object_fails_that_object_for_that_model_only(tmp_path):
    from mme3dr.metrics.image_pass import ViewJob, run_image_pass

    jobs = []
    for g in range(4):
        paths = []
        for v in range(3):
            p = tmp_path / f"g{g}_{v}.png"
            Image.new("RGB", (8, 8), (60 * g, 10, 10)).save(p)
            paths.append(p)
        jobs.append(ViewJob(tuple(paths), ("mean", "picky")))

    class Mean:  # the mean colour of each view
        sizes = ()

        def embed(self, views):
            return np.stack([v.rgb.reshape(-1, 3).double().mean(0).numpy() for v in views]).astype(np.float32)

    class Picky(Mean):  # fails on any batch holding a view of object 2 (red 120)
        def embed(self, views):
            if any(v.rgb[0, 0, 0] == 120 for v in views):
                raise RuntimeError("cannot embed this object")
            return super().embed(views)

    out = list(run_image_pass(jobs, {"mean": Mean(), "picky": Picky()}, batch_size=5, workers=2))
    assert [r.index for r in out] == [0, 1, 2, 3] and all(r.error is None for r in out)
    assert list(out[2].failed) == ["picky"] and "picky" not in out[2].embeddings
    np.testing.assert_array_equal(out[2].embeddings["mean"][:, 0], [120, 120, 120])
    for r in (out[0], out[1], out[3]):  # objects batched with object 2 are embedded again on their own
        assert not r.failed and r.embeddings["picky"].shape == (3, 3)
        np.testing.assert_array_equal(r.embeddings["picky"], r.embeddings["mean"])
