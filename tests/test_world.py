"""The procedural training world (reference_policy.world) and its verifiers (reference_policy.verifiers)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import trimesh
from scipy import ndimage

from mme3dr.assets import load_asset
from mme3dr.categories import CATEGORIES
from reference_policy.generator import surface_mesh
from reference_policy.released import Z_UP_TO_Y_UP
from reference_policy.verifiers import accuracy, is_stable, verify
from reference_policy.world import (COLOURS, FAMILIES, GRID, HELDOUT_FAMILIES, PALETTE, generate, index_of,
                                    sample, split_of, to_mesh, voxelise_mesh)
from reference_policy.world.sample import FULL, NUMBER_WORDS
from reference_policy.world.voxelise import is_closed, lattice_cells

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


def test_floating_blob_fails_stability():
    s = sample("table", 0)
    occ = np.argwhere(s.grid > 0)
    cx, cy = (int(v) for v in occ[:, :2].mean(axis=0).round())
    top = int(occ[:, 2].max())
    blob = s.grid.copy()
    blob[cx - 1:cx + 1, cy - 1:cy + 1, top + 3:top + 5] = s.grid[tuple(occ[0])]  # hovers 2 voxels above the top
    ok, why = is_stable(blob)
    assert not ok and "float" in why
    assert not verify(blob, s.spec).passed("stability")
    assert is_stable(s.grid)[0]


def test_every_grounded_part_must_balance_on_its_own_footprint():
    grid = np.zeros((GRID,) * 3, np.uint8)
    grid[0:10, 0:10, 0:10] = 1  # a heavy balanced block
    grid[20, 10, 0:11] = 2  # a separate post ...
    grid[20:30, 10, 10] = 2  # ... carrying a long arm: its centre of mass is far outside its one-cell footprint
    ok, why = is_stable(grid)
    assert not ok and "outside its footprint" in why
    grid[20:30, 10, 10] = 0
    assert is_stable(grid)[0]


def test_every_part_of_every_family_is_supported():
    """Each 26-connected component of a ground-truth grid reaches z = 0 (the world builds no floating part)."""
    for name in NAMES:
        for seed in range(6):
            g = sample(name, seed).grid
            labels, n = ndimage.label(g > 0, FULL)
            assert set(np.unique(labels[:, :, 0])) - {0} == set(range(1, n + 1)), (name, seed)


def _aligned(grid, truth):
    """``grid`` translated so its occupied bounding box starts where the truth's does."""
    shift = np.argwhere(truth > 0).min(axis=0) - np.argwhere(grid > 0).min(axis=0)
    return np.roll(grid, tuple(int(d) for d in shift), axis=(0, 1, 2))


def test_ground_truth_meshes_voxelise_back_exactly_and_pass_their_checks(tmp_path):
    """Every family: the world mesh (fit frame) and the reference adapter's marching-cubes GLB (y-up, loaded and
    normalised by mme3dr) come back as the ground-truth grid up to a translation: occupancy exactly, the colour of
    every visible voxel exactly; and all checks pass."""
    for name in NAMES:
        s = sample(name, 1)
        mc = surface_mesh(s.grid)
        mc.apply_transform(Z_UP_TO_Y_UP)
        mc.export(tmp_path / "mesh.glb")
        loaded = load_asset(tmp_path / "mesh.glb", up_axis="+y").meshes[0]
        visible = (s.grid > 0) & ~ndimage.binary_erosion(s.grid > 0)
        for mesh in (to_mesh(s.grid), loaded):
            back = _aligned(voxelise_mesh(mesh), s.grid)
            assert np.array_equal(back > 0, s.grid > 0), name
            assert np.array_equal(back[visible], s.grid[visible]), name
            assert verify(back, s.spec).all_passed, (name, [c for c in verify(back, s.spec).checks if not c.passed])


def test_voxel_meshes_keep_their_lattice_at_any_scale():
    s = sample("spider", 0)
    occ = np.argwhere(s.grid > 0)
    width = int((occ.max(axis=0) - occ.min(axis=0) + 1).max())
    for factor in (0.37, 1.0, 5.5):
        mesh = to_mesh(s.grid)
        mesh.apply_scale(factor)
        assert lattice_cells(np.asarray(mesh.vertices), axis_aligned=True) == width
        mc = surface_mesh(s.grid)
        mc.apply_scale(factor)
        assert lattice_cells(np.asarray(mc.vertices), axis_aligned=False) == width
    sphere = trimesh.creation.icosphere(subdivisions=3)
    assert lattice_cells(np.asarray(sphere.vertices), axis_aligned=False) is None


def test_a_smooth_closed_mesh_fills_by_centres_inside_and_an_open_one_by_its_shell():
    sphere = trimesh.creation.icosphere(subdivisions=4)  # radius 1: fitted, the diameter spans GRID voxels
    assert is_closed(sphere)
    grid = voxelise_mesh(sphere)
    centres = np.argwhere(np.ones((GRID,) * 3)) + 0.5
    dist = np.linalg.norm(centres - [GRID / 2, GRID / 2, GRID / 2], axis=1).reshape((GRID,) * 3)
    clear = np.abs(dist - GRID / 2) > 0.3  # the polyhedron lies within 0.3 voxel of the sphere near its surface
    assert np.array_equal((grid > 0)[clear], (dist < GRID / 2)[clear])
    cap = sphere.copy()
    cap.update_faces(cap.face_normals[:, 2] < 0.99)  # a hole at the top
    assert not is_closed(cap)
    assert (voxelise_mesh(cap) > 0).sum() > 0


def test_surface_mesh_vertices_take_the_colour_of_their_own_voxel():
    """Independent reference: a vertex on a lattice edge (one voxel-centre coordinate half-integer) belongs to the
    occupied one of the voxels found by rounding that coordinate down and up; any other vertex (Lewiner's cell
    centres) to one of the occupied corners of its cell."""
    for name in ("car", "insect", "toy_duck", "sundial"):
        grid = sample(name, 0).grid
        mesh = surface_mesh(grid)
        rgb = np.array([(0, 0, 0), *PALETTE.values()])
        colour = mesh.visual.vertex_colors[:, :3]
        c = (mesh.vertices + 0.5) * GRID - 0.5
        half = np.abs(c - np.round(c)) > 0.25
        for v, h, col in zip(c, half, colour):
            corners = {tuple(int(x) for x in np.where(h & bits, np.ceil(v), np.floor(v)))
                       for bits in np.array(np.meshgrid(*[[0, 1]] * 3)).reshape(3, -1).T.astype(bool)}
            owners = {grid[k] for k in corners if grid[k] > 0}
            if h.sum() == 1:
                assert len(owners) == 1, (name, v)
            assert any(np.array_equal(col, rgb[o]) for o in owners), (name, v, col, owners)


def test_spec_carries_the_ground_truth_facts():
    """Independent reference: the facts recomputed from the grid with plain numpy (argwhere, histogramdd)."""
    from reference_policy.world.sample import LAYOUT_BINS, LAYOUT_TRIM, extent_of

    for name in ("table", "spider", "cartoon_house"):
        s = sample(name, 2)
        occ = np.argwhere(s.grid > 0)
        side = occ.max(axis=0) - occ.min(axis=0) + 1
        assert s.spec.volume == len(occ)
        assert s.spec.extent == (max(side[:2]), min(side[:2]), side[2]) == extent_of(s.grid > 0)
        lo = np.quantile(occ, LAYOUT_TRIM, axis=0, method="lower")
        hi = np.quantile(occ, 1 - LAYOUT_TRIM, axis=0, method="higher")
        edges = [np.concatenate([[-np.inf], lo[a] + (hi[a] - lo[a] + 1) * np.arange(1, LAYOUT_BINS) / LAYOUT_BINS,
                                 [np.inf]]) for a in range(3)]
        for colour, stored in [(None, s.spec.layout)] + [(p.colour, s.spec.shapes[p.type].layout) for p in s.parts]:
            pts = occ if colour is None else np.argwhere(s.grid == index_of(colour))
            hist, _ = np.histogramdd(pts, bins=edges)
            np.testing.assert_allclose(np.asarray(stored).reshape(hist.shape), hist / hist.sum(), atol=1e-12)
        for p in s.parts:
            shape = s.spec.shapes[p.type]
            mask = s.grid == index_of(p.colour)
            assert shape.pieces == p.count and shape.fraction == pytest.approx(mask.sum() / len(occ))
            assert shape.mean_z == pytest.approx(np.argwhere(mask)[:, 2].mean())
            labels, n = ndimage.label(mask, FULL)
            sides = sorted(extent_of(labels == i) for i in range(1, n + 1))
            assert shape.piece_extent == tuple(float(v) for v in np.median(np.array(sides), axis=0))
    legs = sample("table", 2).spec.shapes["leg"]
    assert legs.piece_extent[:2] == (3.0, 3.0)  # the corner legs are 3 x 3 voxel columns
