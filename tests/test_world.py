"""The procedural training world (reference_policy.world) and its verifiers (reference_policy.verifiers)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from mme3dr.assets import load_asset
from mme3dr.categories import CATEGORIES
from reference_policy.verifiers import accuracy, verify, voxelise_mesh
from reference_policy.world import (COLOURS, FAMILIES, GRID, HELDOUT_FAMILIES, generate, index_of, sample,
                                    split_of, to_mesh)
from reference_policy.world.sample import FULL, NUMBER_WORDS

SEEDS = (0, 1, 2)
NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def samples():
    return {(f, s): sample(f, s) for f in NAMES for s in SEEDS}


def test_registry_covers_all_categories():
    assert len(FAMILIES) >= 40
    cats = {f.category for f in FAMILIES.values()}
    assert cats == set(CATEGORIES)
    for c in CATEGORIES:
        assert sum(f.category == c for f in FAMILIES.values()) >= 8


@pytest.mark.parametrize("name", NAMES)
def test_family_samples_are_valid(name, samples):
    for seed in SEEDS:
        s = samples[name, seed]
        assert s.family == name and s.category == FAMILIES[name].category
        g = s.grid
        assert g.shape == (GRID,) * 3 and g.dtype == np.uint8 and g.max() <= len(COLOURS)
        occ = np.argwhere(g > 0)
        assert len(occ) > 0 and occ[:, 2].min() == 0 and occ[:, 2].max() < GRID - 1  # grounded, top layer free
        bbox_centre = (occ[:, :2].min(axis=0) + occ[:, :2].max(axis=0)) / 2
        assert np.all(np.abs(bbox_centre - (GRID - 1) / 2) <= 3)  # centred in x/y
        assert len(s.prompts) >= 3 and len(set(s.prompts)) == len(s.prompts)
        assert s.plan.startswith("a ") and all(p.phrase(digits=False) in s.plan for p in s.parts)
        multi = [p for p in s.parts if p.count >= 2]
        for p in multi:  # counts both as words and as digits
            assert any(NUMBER_WORDS[p.count] in t for t in s.prompts)
            assert any(str(p.count) in t for t in s.prompts)
        colours = [p.colour for p in s.parts]
        assert len(set(colours)) == len(colours)  # one colour per part type
        assert set(s.spec.counts) == {p.type for p in s.parts}
        assert all(s.spec.counts[p.type][:2] == (p.colour, p.count) for p in s.parts)
        assert set(s.spec.colours) == set(colours)
        assert set(np.unique(g[g > 0])) == {index_of(c) for c in colours}
        assert s.spec.relations and s.spec.stable


def test_samples_are_deterministic_and_vary():
    a, b = sample("table", 7), sample("table", 7)
    assert a.prompts == b.prompts and np.array_equal(a.grid, b.grid)
    assert len({sample("chair", s).prompts for s in range(6)}) > 1


def _remove_one_piece(grid, colour):
    labels, _ = ndimage.label(grid == index_of(colour), FULL)
    out = grid.copy()
    out[labels == 1] = 0
    return out


def _support_cut_to_edge(grid):
    """Keep only the lowest layer's cells at its smallest x: the object now balances on one edge strip."""
    out = grid.copy()
    layer = out[:, :, 0]
    xs = np.nonzero(layer)[0]
    layer[xs.min() + 1:] = 0
    return out


@pytest.mark.parametrize("name", NAMES)
def test_verifiers_pass_ground_truth_and_fail_corruptions(name, samples):
    for seed in SEEDS:
        s = samples[name, seed]
        v = verify(s.grid, s.spec)
        assert v.all_passed and v.score == 1.0, [c for c in v.checks if not c.passed]
        multi = [p for p in s.parts if p.count >= 2]
        if multi:  # a leg (one piece of a counted part) removed
            cut = verify(_remove_one_piece(s.grid, multi[0].colour), s.spec)
            assert not next(c for c in cut.checks if c.type == "count" and c.name == multi[0].type).passed
        main = s.parts[0]
        spare = next(c for c in COLOURS if c not in s.spec.colours)
        recoloured = np.where(s.grid == index_of(main.colour), index_of(spare), s.grid).astype(np.uint8)
        assert not verify(recoloured, s.spec).passed("colour")
        flipped = verify(s.grid[:, :, ::-1].copy(), s.spec)
        assert not flipped.passed("relation") and not flipped.passed("stability")
        lifted = np.zeros_like(s.grid)
        lifted[:, :, 2:] = s.grid[:, :, :-2]
        assert not verify(lifted, s.spec).passed("stability")
        assert not verify(_support_cut_to_edge(s.grid), s.spec).passed("stability")


def test_enough_families_have_counted_parts(samples):
    assert sum(any(p.count >= 2 for p in samples[f, 0].parts) for f in NAMES) >= 40


def test_verifier_is_cheap_and_accuracy_aggregates(samples):
    pairs = [(s.grid, s.spec) for s in samples.values()]
    t = time.perf_counter()
    acc = accuracy(pairs)
    per_sample = (time.perf_counter() - t) / len(pairs)
    assert per_sample < 0.05
    assert acc == {"count": 1.0, "colour": 1.0, "relation": 1.0, "stability": 1.0, "score": 1.0, "all": 1.0}
    broken = accuracy([(g[:, :, ::-1].copy(), sp) for g, sp in pairs])
    assert broken["stability"] == 0.0 and broken["relation"] < 0.5 and broken["all"] == 0.0


def test_split_is_disjoint_and_deterministic():
    train, held = generate(120, "train", seed=3), generate(40, "heldout", seed=3)
    assert [s.prompts for s in train] == [s.prompts for s in generate(120, "train", seed=3)]
    assert [s.prompts for s in held] == [s.prompts for s in generate(40, "heldout", seed=3)]
    assert all(split_of(s) == "train" for s in train) and all(split_of(s) == "heldout" for s in held)
    assert not {s.family for s in train} & HELDOUT_FAMILIES
    assert not {(s.family, s.primary_colour) for s in train} & {(s.family, s.primary_colour) for s in held}
    assert {s.family for s in held} - HELDOUT_FAMILIES  # held-out combinations of training families occur
    assert len(HELDOUT_FAMILIES) == 5 and {FAMILIES[f].category for f in HELDOUT_FAMILIES} == set(CATEGORIES)
    assert generate(5, "train", seed=4)[0].prompts != train[0].prompts


@pytest.mark.parametrize("name", ["table", "spider", "guitar", "toy_robot", "windmill"])
def test_to_mesh_loads_and_voxelises_back(name, tmp_path):
    s = sample(name, 0)
    mesh = to_mesh(s.grid)
    assert mesh.visual.kind == "vertex" and len(mesh.faces) > 0
    path = tmp_path / f"{name}.ply"
    mesh.export(path)
    asset = load_asset(path, up_axis="z")
    assert sum(len(m.faces) for m in asset.meshes) == len(mesh.faces)
    back = voxelise_mesh(path, fit=False)
    surface = (s.grid > 0) & ~ndimage.binary_erosion(s.grid > 0)
    assert np.array_equal(back[surface], s.grid[surface])  # every surface voxel comes back with its colour
    assert verify(back, s.spec).all_passed
