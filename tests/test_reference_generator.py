"""The ``reference`` generator: the bundled checkpoint through the CLI, a freshly trained smoke checkpoint through
the same loading path, the coloured marching-cubes surface, prompt noise and the procedural evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from mme3dr.adapters import create_generator
from mme3dr.adapters.base import GenerationRequest
from mme3dr.assets import load_asset
from mme3dr.cli import app
from mme3dr.weights import MissingWeightsError
from reference_policy.evaluate import evaluate_split
from reference_policy import bundled
from reference_policy.generator import ReferenceGenerator, surface_mesh
from reference_policy.policy import ReferencePolicy
from reference_policy.pretrain import SMOKE, Sequences, pretrain
from reference_policy.tokenizer import BOS, PAD, PLAN, UNK
from reference_policy.world import PALETTE, generate, index_of

runner = CliRunner()


@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    pretrain(folder, SMOKE)
    return folder


def test_bundled_checkpoints_are_complete_and_small():
    """Both bundled checkpoints together stay within 60 MB; each was trained to the end of its budget."""
    files = [p for p in bundled.ROOT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 60 * 2 ** 20
    weights = {"model/model.safetensors", "vqvae/vqvae.safetensors", "tokenizer/tokenizer.json", "policy.json"}
    sft, rl = bundled.CHECKPOINTS["sft"], bundled.CHECKPOINTS["hi-grpo"]
    names = {p.relative_to(sft).as_posix() for p in sft.rglob("*") if p.is_file()}
    assert weights | {"log.jsonl", "loss_curves.png", "metrics.json"} <= names
    metrics = json.loads((sft / "metrics.json").read_text())
    assert metrics["policy_steps"] == metrics["config"]["steps"]  # trained to the end, not stopped early
    names = {p.relative_to(rl).as_posix() for p in rl.rglob("*") if p.is_file()}
    assert weights | {"log.jsonl", "curves.png", "summary.json", "eval_gpu.json"} <= names
    summary = json.loads((rl / "summary.json").read_text())
    assert summary["steps"] == summary["config"]["steps"] and summary["stopped_early"] is None


def test_the_default_checkpoint_is_hi_grpo_and_sft_stays_available():
    assert ReferenceGenerator().checkpoint == bundled.CHECKPOINTS["hi-grpo"]
    assert ReferenceGenerator(checkpoint="sft").checkpoint == bundled.CHECKPOINTS["sft"]
    sft = ReferenceGenerator(checkpoint="sft").load().model
    rl = ReferenceGenerator().load().model
    assert sft.num_parameters() == rl.num_parameters()
    # RL moved the weights (stored in bfloat16, loaded as float32), by little
    diffs = [(a - b).abs().max().item() for a, b in zip(sft.parameters(), rl.parameters())]
    assert 0 < max(diffs) < 0.1


def test_cli_generate_with_the_bundled_checkpoint(tmp_path):
    out = tmp_path / "RUN"
    res = runner.invoke(app, ["generate", "--model", "reference", "--limit", "5", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "5 generated, 0 failed" in res.output
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    for row in rows:
        asset = load_asset(out / row["asset_path"], up_axis=row["up_axis"])
        assert row["up_axis"] == "+y" and len(asset.meshes[0].faces) > 100
        assert row["metadata"]["occupied_voxels"] > 0 and row["metadata"]["plan"]
    res = runner.invoke(app, ["validate", str(out), "--no-progress"])
    assert res.exit_code == 0 and "5/5 assets valid" in res.output


def test_smoke_checkpoint_loads_through_the_same_path(smoke_checkpoint, tmp_path):
    gen = create_generator("reference", checkpoint=str(smoke_checkpoint), top_k=4, batch_size=2)
    requests = [GenerationRequest(f"p{i}", prompt, "spatial", i, tmp_path / f"p{i}")
                for i, prompt in enumerate(["a red chair with four legs", "Zyzzogeton!", "a tree"])]
    for r in requests:
        r.output_dir.mkdir()
    results = gen.generate(requests)
    assert [r.prompt_id for r in results] == ["p0", "p1", "p2"]
    for r in results:  # a smoke model may decode an empty grid: then the result says so, it does not raise
        assert r.ok or "empty grid" in r.error
        if r.ok:
            assert r.asset_path.is_file() and r.up_axis == "+y"
    again = gen.generate(requests[:1])[0]
    assert again.metadata["plan"] == results[0].metadata["plan"]  # seeded


def test_missing_checkpoint_says_how_to_provide_it_and_records_nothing(tmp_path):
    gen = ReferenceGenerator(checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(MissingWeightsError, match="python -m reference_policy.pretrain"):
        gen.load()
    out = tmp_path / "RUN"
    res = runner.invoke(app, ["generate", "--model", "reference", "-a", f"checkpoint={tmp_path / 'nowhere'}",
                              "--limit", "3", "--out", str(out), "--no-progress"])
    assert res.exit_code == 2 and "--model-arg checkpoint=DIR" in " ".join(res.output.split())
    log = out / "generations.jsonl"
    assert not log.exists() or log.read_text().strip() == ""  # no failure records: a re-run starts clean


def test_surface_mesh_colours_and_extent():
    grid = np.zeros((32, 32, 32), np.uint8)
    grid[4:12, 4:12, 0:6] = index_of("red")
    grid[20:28, 20:28, 10:20] = index_of("blue")
    mesh = surface_mesh(grid)
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 2
    colours = {tuple(c[:3]) for c in mesh.visual.vertex_colors}
    assert colours == {PALETTE["red"], PALETTE["blue"]}
    # every vertex lies within half a voxel of the occupied box it belongs to (grid frame: (i + 0.5) / 32 - 0.5)
    v = (mesh.vertices + 0.5) * 32 - 0.5
    is_red = (mesh.visual.vertex_colors[:, :3] == PALETTE["red"]).all(1)
    assert v[is_red].min(0) == pytest.approx([3.5, 3.5, -0.5], abs=1e-6)
    assert v[is_red].max(0) == pytest.approx([11.5, 11.5, 5.5], abs=1e-6)
    with pytest.raises(ValueError, match="empty"):
        surface_mesh(np.zeros((32, 32, 32), np.uint8))
    assert isinstance(mesh, trimesh.Trimesh)


def test_prompt_noise(smoke_checkpoint):
    policy = ReferencePolicy.from_pretrained(smoke_checkpoint)
    samples = generate(4, "train", 0)
    codes = (np.zeros((4, 64), np.int64), np.zeros((4, 512), np.int64))
    clean = Sequences(policy, samples, codes, noise=0.0)
    noisy = Sequences(policy, samples, codes, noise=1.0)
    rng = np.random.default_rng(0)
    heads = [noisy._perturb(clean.heads[0][0], rng) for _ in range(50)]
    assert all(h[0] == BOS for h in heads)
    assert any(UNK in h for h in heads) and any(len(h) != len(clean.heads[0][0]) for h in heads)
    word = policy.tokenizer.word_offset
    assert all(((h[1:] >= word) | (h[1:] == UNK)).all() for h in heads)  # only words and <unk> are inserted
    ids, mask, labels = clean.batch(np.random.default_rng(1), 3, "cpu")
    assert ids.shape == labels.shape == mask.shape and (labels[ids == PAD] == -100).all()
    for row, lab in zip(ids.tolist(), labels.tolist()):  # labels cover exactly the tail (both generated steps)
        start = next(i for i, x in enumerate(lab) if x != -100)
        assert row[0] == BOS and row[start] == PLAN and lab[start:] == [t if t != PAD else -100 for t in row[start:]]
        assert any(start == len(h) for heads_ in clean.heads for h in heads_)


def test_evaluate_split_reports_every_check_type(smoke_checkpoint):
    policy = ReferencePolicy.from_pretrained(smoke_checkpoint)
    out = evaluate_split(policy, "heldout", 3, batch_size=2, top_k=4)
    assert out["n"] == 3 and out["seconds_per_prompt"] > 0
    for grid in ("final", "step1", "vq_ceiling"):
        assert {"count", "colour", "score", "all", "empty"} <= set(out[grid])
        assert all(0.0 <= v <= 1.0 for v in out[grid].values())
