"""`mme3dr score` end to end on a small run, with tiny local weights for every model."""

import json

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

import make_assets as M
import tiny_clip
import tiny_features
from mme3dr.adapters import Generator, ModelSpec
from mme3dr.cli import app
from mme3dr.data import load_benchmark
from mme3dr.generation import generate_run
from mme3dr.metrics.specs import ScoreOptions
from mme3dr.render.presets import get_preset
from mme3dr.render.references import build_references
from mme3dr.render.runs import render_run
from mme3dr.scoring import score_run

PRESET = get_preset("canonical").with_overrides(resolution=48, n_views=4)


class Boxes(Generator):
    def generate_one(self, request):
        i = int(request.prompt_id[-3:])
        path = request.output_dir / "mesh.ply"
        trimesh.creation.box(extents=(1, 0.3 * i, 0.6)).export(path)
        return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("score")
    prompts = load_benchmark(categories=["spatial", "mechanical"], limit=4)
    run = tmp / "RUN"
    generate_run(Boxes(), prompts, run, model_spec=ModelSpec("boxes"), progress=False)
    render_run(run, PRESET, progress=False)
    meshes = tmp / "ref_meshes"
    for cat in ("spatial", "mechanical"):
        (meshes / cat).mkdir(parents=True)
        for i in range(2):
            trimesh.creation.icosphere(subdivisions=1).apply_scale((1, 0.5 + i * 0.3, 0.7)).export(meshes / cat / f"s{i}.ply")
    build_references(tmp / "REF", PRESET, meshes=meshes, progress=False)
    opts = ScoreOptions(device="cpu", clip_model=tiny_clip.TINY_CLIP,
                        clip_pretrained=str(tiny_clip.tiny_clip_checkpoint(tmp)),
                        inception_weights=str(tiny_features.random_inception_weights(tmp / "inc.pth")),
                        dinov2_model=str(tiny_features.tiny_dinov2(tmp / "dino")))
    return run, tmp / "REF", opts, prompts


def test_score_run_writes_records_and_set_scores(setup):
    run, ref, opts, prompts = setup
    s = score_run(run, ["clip", "geometry", "kid", "fid", "kid_dinov2"], PRESET, ref, opts, progress=False)
    assert s.scored["clip"] == 4 and not s.errors["clip"] and s.scored["geometry"] == 4
    recs = [json.loads(l) for l in (run / "scores.jsonl").read_text().splitlines()]
    assert len(recs) == 8 and {r["prompt_id"] for r in recs} == {p.id for p in prompts}
    geo = [r for r in recs if r["metric"] == "geometry"]
    assert all(r["values"]["watertight"] == 1.0 and r["values"]["stable"] == 1.0 for r in geo)  # boxes
    assert geo[0]["preset_hash"] is None  # geometry reads the mesh, not the renders
    recs = [r for r in recs if r["metric"] == "clip"]
    r0 = recs[0]
    assert len(r0["per_view"]["clip"]) == 4 and r0["preset_hash"] == PRESET.hash and r0["asset_sha256"]
    assert r0["directions"] == {"clip": "higher", "clip_worst": "higher"} and "mme3dr-tiny-clip" in r0["config"]["weights"]
    sets = json.loads((run / "set_scores.json").read_text())
    assert set(sets) == {"kid", "fid", "kid_dinov2"}
    kid = sets["kid"]
    ov = kid["overall"]
    assert kid["format"] == 2 and kid["settings"]["kid_bootstrap"] == 1000
    assert (ov["gen_objects"], ov["gen_views"], ov["ref_objects"], ov["ref_views"]) == (4, 16, 4, 16)
    assert ov["reference_subset"] == "all" and set(kid["per_category"]) == {"spatial", "mechanical"}
    sp = kid["per_category"]["spatial"]
    assert (sp["gen_objects"], sp["ref_objects"], sp["ref_views"], sp["reference_subset"]) == (2, 2, 8, "spatial")
    assert ov["se"] > 0 and ov["ci_low"] < ov["ci_high"] and ov["paper_subset_size"] == 8
    assert np.isfinite(ov["paper_value"]) and ov["paper_std"] >= 0
    fid = sets["fid"]["overall"]
    assert np.isfinite(fid["value"]) and fid["value_objects"] == 4 and np.isfinite(fid["paper_value"])
    assert fid["value"] == pytest.approx(fid["paper_value"])  # fewer objects than fid_objects: all of them, once
    assert list((run / "renders" / PRESET.tag / "features").glob("inception-*.npz"))
    # a second run does no per-prompt work and reuses cached features
    again = score_run(run, ["clip", "kid"], PRESET, ref, opts, progress=False)
    assert again.scored["clip"] == 0 and again.skipped["clip"] == 4
    assert again.set_scores["kid"].overall.value == pytest.approx(ov["value"])  # a typed SetMetricRecord
    assert any("x100, 95% CI" in line and "reference all (4 objects)" in line for line in again.lines())


def test_compat_metrics(setup, tmp_path):
    run, _, opts, prompts = setup
    per_prompt = tmp_path / "gt"
    per_prompt.mkdir()
    for p in prompts[:3]:  # ground-truth objects stored under the prompt ids; the 4th has none
        M.vertex_coloured_glb(per_prompt / f"{p.id}.glb")
    build_references(tmp_path / "REFP", PRESET, meshes=per_prompt, progress=False)
    s = score_run(run, ["ar3d_compat_clip", "ar3d_compat_kd"], PRESET, tmp_path / "REFP", opts, progress=False)
    assert s.scored["ar3d_compat_clip"] == 4
    assert s.scored["ar3d_compat_kd"] == 3 and "no reference renders" in s.errors["ar3d_compat_kd"][0][1]
    recs = {(json.loads(l)["prompt_id"], json.loads(l)["metric"]): json.loads(l)
            for l in (run / "scores.jsonl").read_text().splitlines()}
    kd = recs[(prompts[0].id, "ar3d_compat_kd")]["values"]["ar3d_compat_kd"]
    assert 0.0 < kd <= 1.0  # an RBF similarity


@pytest.mark.parametrize("device", ["cpu", None])
def test_set_metrics_are_computed_on_the_scoring_device(setup, device, monkeypatch):
    """score_sets hands ``options.device`` to every distance (None: the image models' default device)."""
    import dataclasses

    from mme3dr.metrics import fidelity
    from mme3dr.metrics.features import default_device

    run, ref, opts, _ = setup
    seen = []

    def spy(fn):
        def wrapped(*args, **kwargs):
            seen.append((fn.__name__, kwargs.get("device")))
            return fn(*args, **kwargs)
        wrapped.__name__ = fn.__name__
        return wrapped

    for name in ("ObjectKernel", "kid_from_features", "fid_by_object"):
        monkeypatch.setattr(fidelity, name, spy(getattr(fidelity, name)))
    s = score_run(run, ["kid", "fid"], PRESET, ref, dataclasses.replace(opts, device=device), progress=False)
    assert np.isfinite(s.set_scores["kid"].overall.value) and np.isfinite(s.set_scores["fid"].overall.value)
    assert {n for n, _ in seen} == {"ObjectKernel", "kid_from_features", "fid_by_object"}
    assert {d for _, d in seen} == {device or default_device()}


def test_missing_reference_and_renders_are_clear(setup, tmp_path):
    run, ref, opts, _ = setup
    with pytest.raises(ValueError, match="pass --reference"):
        score_run(run, ["kid"], PRESET, None, opts, progress=False)
    with pytest.raises(FileNotFoundError, match="has no renders with preset"):
        score_run(run, ["kid"], PRESET.with_overrides(resolution=32), ref, opts, progress=False)
    s = score_run(run, ["clip"], PRESET.with_overrides(n_views=2), None, opts, progress=False)
    assert s.scored["clip"] == 0 and "not rendered with preset" in s.errors["clip"][0][1]
    with pytest.raises(KeyError, match="Did you mean 'clip'"):
        score_run(run, ["clp"], PRESET, None, opts, progress=False)


def test_score_cli(setup):
    run, ref, opts, _ = setup
    res = CliRunner().invoke(app, ["score", str(run), "--metrics", "clip", "--preset", "canonical",
                                   "--clip-model", opts.clip_model, "--clip-pretrained", opts.clip_pretrained,
                                   "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "clip:" in res.output and "not rendered with preset canonical" in res.output  # 512px canonical not rendered
    res = CliRunner().invoke(app, ["score", str(run), "--metrics", "clip", "--clip-model", "ViT-B-32"])
    assert res.exit_code == 2 and "MME3DR_WEIGHTS" in res.output


def test_vlm_through_score_run_with_a_tiny_qwen(setup, tmp_path):
    import dataclasses

    import tiny_qwen

    run, _, opts, prompts = setup
    model_dir = tiny_qwen.build_tiny_qwen25_vl(tmp_path / "qwen")
    s = score_run(run, ["vlm"], PRESET, None, dataclasses.replace(opts, vlm_model=str(model_dir)), progress=False)
    assert s.scored["vlm"] == 4 and not s.errors["vlm"]
    recs = [json.loads(l) for l in (run / "scores.jsonl").read_text().splitlines()]
    vlm = [r for r in recs if r["metric"] == "vlm"]
    assert len(vlm) == 4
    for r in vlm:  # random weights answer gibberish: every judgment failed (its worst value), counted, text kept
        assert set(r["values"]) == {"vlm_consistency", "vlm_category", "vlm_appearance", "vlm_checklist",
                                    "vlm_unparsed", "vlm_checklist_all_yes", "vlm_checklist_all_no"}
        assert [r["values"][k] for k in ("vlm_consistency", "vlm_category", "vlm_appearance", "vlm_checklist",
                                         "vlm_unparsed")] == [0.0, 0.0, 0.0, 0.0, 1.0]
        assert r["details"]["parse_failures"] == 4 and "response" in r["details"]["queries"]["checklist"]
    with pytest.raises(FileNotFoundError, match="MME3DR_WEIGHTS"):
        score_run(run, ["vlm"], PRESET, None, dataclasses.replace(opts, vlm_model="nobody/no-such-vlm"), progress=False)


def test_asset_metrics_are_cached_without_renders(setup):
    run, _, opts, _ = setup
    unrendered = PRESET.with_overrides(n_views=3)  # no renders with this preset: geometry reads the mesh only
    score_run(run, ["geometry"], unrendered, None, opts, progress=False)
    again = score_run(run, ["geometry"], unrendered, None, opts, progress=False)
    assert again.scored["geometry"] == 0 and again.skipped["geometry"] == 4


@pytest.mark.slow
def test_per_category_kid_uses_the_mapped_reference_objects(setup, tmp_path):
    """Issue 12: with reference classes that are not MME-3DR categories every category is compared with the whole
    set (reference_subset "all"); with a category map, with that category's objects. The stored values are the
    object-aware KID / fixed-count FID of exactly those views (recomputed here from the feature caches)."""
    from mme3dr.metrics.fidelity import fid_by_object, kid_by_object

    run, _, opts, _ = setup
    meshes = tmp_path / "toys"
    for cls, n in (("chair", 3), ("robot", 2)):
        (meshes / cls).mkdir(parents=True)
        for i in range(n):
            trimesh.creation.icosphere(subdivisions=1).apply_scale((1, 0.4 + 0.2 * i, 0.6 + 0.1 * n)).export(
                meshes / cls / f"{cls}{i}.ply")
    build_references(tmp_path / "MAPPED", PRESET, meshes=meshes, progress=False,
                     category_map={"chair": "spatial", "robot": "mechanical"})
    mapped = score_run(run, ["kid", "fid"], PRESET, tmp_path / "MAPPED", opts, progress=False).set_scores
    build_references(tmp_path / "MAPPED", PRESET, meshes=meshes, progress=False)  # rebuilt without the map
    plain = score_run(run, ["kid", "fid"], PRESET, tmp_path / "MAPPED", opts, progress=False).set_scores
    assert all(e.reference_subset == "all" and e.ref_objects == 5 for e in plain["kid"].groups().values())
    sp, me = mapped["kid"].per_category["spatial"], mapped["kid"].per_category["mechanical"]
    assert (sp.reference_subset, sp.ref_objects, sp.ref_views, sp.gen_objects) == ("spatial", 3, 12, 2)
    assert (me.reference_subset, me.ref_objects) == ("mechanical", 2)
    assert mapped["fid"].per_category["spatial"].ref_views == 12 and mapped["kid"].overall.reference_subset == "all"

    def cached(folder):
        [path] = (folder / "features").glob("inception-*.npz")
        with np.load(path) as data:
            return dict(zip(data["keys"].tolist(), data["features"]))

    gen, ref = cached(run / "renders" / PRESET.tag), cached(tmp_path / "MAPPED" / PRESET.tag)
    spatial_ids = [p.id for p in load_benchmark(categories=["spatial", "mechanical"], limit=4) if p.category == "spatial"]
    g = [(k, v) for k, v in gen.items() if k.split("/")[-2] in spatial_ids]
    r = [(k, v) for k, v in ref.items() if k.split("/")[-2].startswith("chair__")]
    ga, ra = np.stack([v for _, v in g]), np.stack([v for _, v in r])
    la, lb = [k.split("/")[-2] for k, _ in g], [k.split("/")[-2] for k, _ in r]
    assert sp.value == pytest.approx(kid_by_object(ga, ra, la, lb).value, rel=1e-9)
    assert mapped["fid"].per_category["spatial"].value == pytest.approx(fid_by_object(ga, ra, la, lb).value, rel=1e-9)
