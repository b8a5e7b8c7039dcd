"""The Hi-GRPO reward ensemble (reference_policy.rl.rewards): formulas, the gate, degenerate objects, adapters."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from reference_policy.rl.reward_report import DEGENERATES, other_seed, slabs
from reference_policy.rl.rewards import (BUILTIN, STEP1_WEIGHTS, STEP2_WEIGHTS, UNGATED, Component, RewardConfig,
                                         RewardEnsemble, band, mesh_component, overlap, step1_rewards,
                                         step2_rewards)
from reference_policy.verifiers import verify
from reference_policy.world import COLOURS, FAMILIES, GRID, generate, index_of, sample, to_mesh
from reference_policy.world.sample import FULL, LAYOUT_BINS

NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def samples():
    return [sample(f, s) for f in NAMES for s in (0, 1)]


def test_default_weights_sum_to_one_and_name_builtins():
    for weights in (STEP1_WEIGHTS, STEP2_WEIGHTS):
        assert sum(weights.values()) == pytest.approx(1.0)
        assert set(weights) <= set(BUILTIN)
    assert "colour" not in STEP1_WEIGHTS and "colour" in STEP2_WEIGHTS


def test_ground_truth_scores_one_on_every_component(samples):
    for ens, weights in ((step1_rewards(), STEP1_WEIGHTS), (step2_rewards(), STEP2_WEIGHTS)):
        batch = ens([s.grid for s in samples], samples)
        assert set(batch.components) == set(weights)
        for name, values in batch.components.items():
            np.testing.assert_allclose(values, 1.0, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(batch.total, 1.0, atol=1e-9)


def test_degenerate_objects_score_far_below_real_ones(samples):
    """Real: the ground truth and a same-family object of another seed recoloured to the prompt's colours.
    Degenerate: empty, full block, stacked slabs (and strips with the right counts), random voxels in the right
    colours, one voxel per part, one huge part. The slabs are a real threat to the verifiers' mean of checks."""
    rng = np.random.default_rng(0)
    real = [other_seed(s, rng) for s in samples]
    slab_scores = [verify(slabs(s, rng), s.spec).score for s in samples]
    assert np.mean(slab_scores) > 0.6  # what the mean of pass/fail checks gives them
    for ens in (step1_rewards(), step2_rewards()):
        truth = ens([s.grid for s in samples], samples).total
        good = ens(real, samples).total
        assert good.mean() > 0.75
        for name, build in DEGENERATES.items():
            if name == "colour_swap":  # the right shape in the wrong colours: a partial answer, checked below
                continue
            bad = ens([build(s, rng) for s in samples], samples).total
            assert bad.mean() < 0.12, name
            assert bad.mean() < 0.15 * good.mean(), name
            assert np.all(bad < truth), name
    swap = step2_rewards()([DEGENERATES["colour_swap"](s, rng) for s in samples], samples).total
    assert swap.mean() < 0.7 * step2_rewards()(real, samples).total.mean()


def test_band():
    assert band(1.0) == band(2.0) == band(0.5) == 1.0
    assert band(8.0) == band(1 / 8) == band(100.0) == band(0.0) == 0.0
    assert band(4.0) == pytest.approx(0.5)  # ln 4 halfway between ln 2 and ln 8
    assert band(3.0, full=1.5, zero=6.0) == pytest.approx((math.log(6) - math.log(3)) / (math.log(6) - math.log(1.5)))


def test_overlap_is_chance_corrected_histogram_intersection():
    b = LAYOUT_BINS ** 3
    truth = np.zeros(b)
    truth[:8] = 1 / 8  # mass in 8 of 64 cells
    uniform = np.full(b, 1 / b)
    assert overlap(truth, truth) == pytest.approx(1.0)
    assert overlap(uniform, truth) == pytest.approx(0.0)  # a featureless box is the zero point
    half = np.zeros(b)
    half[:4], half[8:12] = 1 / 8, 1 / 8  # half the mass where the truth is: o = 0.5, u = 8 * (1/64) = 0.125
    assert overlap(half, truth) == pytest.approx((0.5 - 0.125) / (1 - 0.125))
    assert overlap(np.zeros(b), truth) == 0.0


def _table():
    s = sample("table", 3)
    leg = s.parts[0]
    assert leg.type == "leg" and leg.count == 4
    return s, leg


def test_count_relation_colour_volume_by_hand():
    s, leg = _table()
    ens = step2_rewards(RewardConfig(gate=False))
    labels, _ = ndimage.label(s.grid == index_of(leg.colour), FULL)
    one_leg_less = np.where(labels == 1, 0, s.grid).astype(np.uint8)
    r = ens([one_leg_less], [s]).components
    assert r["count"][0] == pytest.approx((1 - 1 / 4 + 1) / 2)  # legs 3 of 4, top 1 of 1
    volume = (s.grid > 0).sum()
    assert r["volume"][0] == pytest.approx(band((volume - (labels == 1).sum()) / volume))
    upside_down = s.grid[:, :, ::-1].copy()
    assert ens([upside_down], [s]).components["relation"][0] == 0.0
    assert ens([upside_down], [s]).components["stability"][0] == 0.0
    foreign = next(c for c in COLOURS if c not in {p.colour for p in s.parts})
    painted = s.grid.copy()
    top = painted == index_of(s.parts[1].colour)
    painted[top & (np.arange(GRID)[:, None, None] < GRID // 2)] = index_of(foreign)  # half the top recoloured
    facts_frac = {p.type: (painted == index_of(p.colour)).sum() / (painted > 0).sum() for p in s.parts}
    truth_frac = {p.type: (s.grid == index_of(p.colour)).sum() / (s.grid > 0).sum() for p in s.parts}
    purity = sum(facts_frac.values())
    expected = purity * np.mean([band(facts_frac[t] / truth_frac[t]) for t in truth_frac])
    assert ens([painted], [s]).components["colour"][0] == pytest.approx(expected)


def test_a_floating_blob_costs_the_stability_term():
    s, _ = _table()
    blob = s.grid.copy()
    blob[14:16, 14:16, 25:27] = index_of(s.parts[1].colour)
    assert step2_rewards()([blob], [s]).components["stability"][0] == 0.0


def test_the_gate_multiplies_every_component_but_the_layout_terms(samples):
    rng = np.random.default_rng(1)
    grids = [DEGENERATES["strips"](s, rng) for s in samples[:20]] + [other_seed(s, rng) for s in samples[20:40]]
    subset = samples[:40]
    for config, weights in ((RewardConfig(), STEP2_WEIGHTS), (RewardConfig(gate=False), STEP2_WEIGHTS)):
        batch = config.ensemble(2)(grids, subset)
        gate = batch.components["shape"] if config.gate else np.ones(len(grids))
        expected = sum(w * batch.components[n] * (1.0 if n in UNGATED else gate) for n, w in weights.items())
        np.testing.assert_allclose(batch.total, expected, atol=1e-12)
    assert RewardConfig().ensemble(2)(grids, subset).total[:20].mean() < \
        RewardConfig(gate=False).ensemble(2)(grids, subset).total[:20].mean() - 0.3


def test_config_switches_and_errors():
    s, _ = _table()
    ens = step1_rewards(RewardConfig(step1={"count": 1.0, "volume": 0.0}, gate=False))
    assert [c.name for c in ens.components] == ["count"]
    assert ens([s.grid], [s]).total[0] == pytest.approx(1.0)
    gated = step1_rewards(RewardConfig(step1={"count": 1.0}))  # gated by "shape", reported though not summed
    assert set(gated([s.grid], [s]).components) == {"count", "shape"}
    with pytest.raises(ValueError, match="unknown reward components"):
        step2_rewards(RewardConfig(step2={"clip": 1.0}))
    with pytest.raises(ValueError, match="step must be 1 or 2"):
        RewardConfig().ensemble(3)
    with pytest.raises(ValueError, match="outside"):
        RewardEnsemble([Component("bad", lambda g, smp: 1.5)])([s.grid], [s])
    with pytest.raises(ValueError, match="no gate"):
        RewardEnsemble([Component("x", lambda g, smp: 1.0, gated=True)])


def test_extra_components_plug_in_and_a_mesh_component_sees_the_mesh():
    s, _ = _table()
    calls = []

    def faces_fn(mesh, smp):
        calls.append(len(mesh.faces))
        return 1.0 if len(mesh.faces) > 0 else 0.0

    ens = step2_rewards().with_components(mesh_component("has_faces", faces_fn, weight=0.5, mesher=to_mesh))
    batch = ens([s.grid, np.zeros_like(s.grid)], [s, s])
    np.testing.assert_allclose(batch.components["has_faces"], [1.0, 0.0])
    np.testing.assert_allclose(batch.total, [1.5, 0.0])
    assert len(calls) == 1 and calls[0] > 0  # the empty grid is never meshed


def test_rewards_of_a_training_batch_are_deterministic():
    batch = generate(16, "train", seed=9)
    grids = [s.grid[:, :, ::-1].copy() if i % 2 else s.grid for i, s in enumerate(batch)]
    a, b = step2_rewards()(grids, batch), step2_rewards()(grids, batch)
    np.testing.assert_array_equal(a.total, b.total)


def test_a_clip_reward_on_rendered_views_end_to_end(tmp_path):
    """The tiny random CLIP of tests/tiny_clip.py through the adapter: grid -> marching-cubes mesh -> reward6 views
    -> ClipScore -> [0, 1]. The reference path is mme3dr's own: the mesh written to a file, ``render_asset`` into a
    folder, ``ClipScore.score`` of that folder. Random weights: this checks the plumbing and the normalisation."""
    import tiny_clip
    from mme3dr.metrics.base import ScoreItem
    from mme3dr.metrics.clip import ClipScore
    from mme3dr.render import get_preset, render_asset
    from reference_policy.generator import surface_mesh
    from reference_policy.rl.rewards import rendered_metric

    metric = ClipScore(tiny_clip.TINY_CLIP, str(tiny_clip.tiny_clip_checkpoint(tmp_path)), device="cpu")
    preset = get_preset("reward6").with_overrides(resolution=64)
    s, _ = _table()
    surface_mesh(s.grid).export(tmp_path / "table.ply")
    render_asset(tmp_path / "table.ply", tmp_path / "views", preset, up_axis="+z")
    item = ScoreItem("t", s.category, s.prompts[0], render_dir=tmp_path / "views")
    raw = metric.score(item).values["clip"]
    assert len(item.view_paths()) == 6
    for lo, hi in ((raw - 1.0, raw + 1.0), (raw - 3.0, raw + 1.0), (raw + 1.0, raw + 2.0), (raw - 2.0, raw - 1.0)):
        comp = rendered_metric(metric, "clip", (lo, hi), preset="reward6", resolution=64, weight=2.0)
        batch = RewardEnsemble([comp])([s.grid, np.zeros_like(s.grid)], [s, s])
        expected = min(1.0, max(0.0, (raw - lo) / (hi - lo)))
        assert batch.components["clip_clip"][0] == pytest.approx(expected, abs=2e-3)
        assert batch.components["clip_clip"][1] == 0.0  # an empty grid has no mesh to render
        assert batch.total[0] == pytest.approx(2.0 * expected, abs=4e-3)
    with pytest.raises(ValueError, match="hi > lo"):
        rendered_metric(metric, "clip", (1.0, 1.0))


def test_reward_report_runs_on_the_bundled_checkpoint(tmp_path, capsys):
    import json

    from reference_policy.rl.reward_report import main

    main(["--n", "3", "--out", str(tmp_path / "report.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["step1"]) == {"truth", "coarse", "other_seed", *DEGENERATES}
    assert set(report["step2"]) == {"truth", "vq", "other_seed", *DEGENERATES}
    assert report["step2"]["truth"]["total"] == pytest.approx(1.0) and report["step2"]["empty"]["total"] == 0.0
    assert "### step 2 (final grid)" in capsys.readouterr().err
