"""The reward ensemble of Hi-GRPO for the procedural world.

A component is any function ``(grid, sample) -> float in [0, 1]`` (``grid``: uint8 ``[GRID]^3`` palette indices,
``sample``: the :class:`~reference_policy.world.WorldSample` whose prompt was given). An ensemble sums its
components with weights, as the paper's dimension-normalised ensemble does (every dimension brought to [0, 1]
first), except that components which a featureless stack of slabs can satisfy are multiplied by a gate ``g``:

    R = sum_c w_c * r_c * (g if c is gated else 1),    g = r_shape

Step 1 scores the coarse (step-1) grid, step 2 the final grid. The default weights of a step sum to 1, so each
step's reward lies in [0, 1] (1 for the ground truth).

The built-in components compare the grid with facts of the ground truth that the sample's
:class:`~reference_policy.world.Spec` carries (part counts, relations, volume, extent, per-part
:class:`~reference_policy.world.sample.PartShape`, scale-free layouts), never with the ground-truth grid itself:
a prompt admits many objects, so sizes are judged within a band and positions after normalising the bounding
box. Notation: ``P`` the prompt's parts, ``k_p`` the pieces of part ``p`` in the grid (26-connected components
of its colour with at least the spec's minimum size), ``n_p`` the count the prompt asks for, ``*`` a
ground-truth fact, and

    band(r) = clip((ln Z - |ln r|) / (ln Z - ln F), 0, 1)    (band(0) = 0)

which is 1 while a ratio ``r`` of measured to true size lies within a factor ``F`` (default 2) of 1 and falls to 0
at a factor ``Z`` (default 8), linearly in ``|ln r|``. Layouts (:func:`~reference_policy.world.sample.layouts`):
the occupied voxels' trimmed bounding box is cut into 4 x 4 x 4 cells and voxels are counted per cell (for the
whole object, and per part colour), normalised to sum 1; ``ov(h, h*)`` is their chance-corrected intersection
(:func:`overlap`): 1 for the truth's own layout, 0 for a uniform one (a box filling its bounding box), taken at
the best of the 8 symmetries of the square about z (the object may be turned or mirrored; parts follow the
object's best symmetry).

============  ======  ======  =====  ============================================================================
component     step 1  step 2  gated  formula (each in [0, 1]; an empty grid scores 0 on every one)
============  ======  ======  =====  ============================================================================
shape         0.20    0.15    gate   ov(h, h*) of the whole object: the object's form, free of scale
placement     0.20    0.20    no     mean_p ov(h_p, h*_p): each part where it belongs within the object
count         0.20    0.20    yes    mean_p max(0, 1 - |k_p - n_p| / n_p)
parts         0.10    0.10    yes    mean_p [k_p > 0] * mean_d band(e_pd / e*_pd), ``e_p`` the median over the
                                     part's pieces of their bounding-box sides (longer x/y, shorter x/y, height):
                                     part completeness, every part present with pieces of a plausible size
relation      0.10    0.10    yes    mean over ``(a, above, b)`` of [both present and z̄_a - z̄_b >= 0.5]; 1 without
                                     relations (z̄: mean height of a part's voxels)
stability     0.10    0.05    yes    1 when :func:`~reference_policy.verifiers.is_stable` (every component
                                     grounded and balanced over its own footprint), else 0
volume        0.05    0.05    yes    band(V / V*), V the occupied voxels
extent        0.05    0.05    yes    mean_d band(E_d / E*_d), E the occupied bounding box's sides as for ``parts``
colour        --      0.10    yes    purity * mean_p band(f_p / f*_p); f_p the fraction of occupied voxels in part
                                     p's colour, purity the fraction of occupied voxels in any prompt colour
============  ======  ======  =====  ============================================================================

Why not the verifiers' mean of pass/fail checks: degenerate objects game it. Slabs stacked in the prompt's
colours pass every count-1 part, every colour fraction, the relations and stability (about 0.75), and strips
pass the counts too; one voxel per part, random voxels in the right colours or one huge part pass many checks.
Counts, relations, stability, sizes and colours can all be met by such a stack; only the layout terms cannot, so
the gate makes the first group count only as far as the object has the right form. Every term is graded so that a
group of samples has spread for GRPO. ``python -m reference_policy.rl.reward_report`` prints the statistics
(ground truth, VQ-VAE reconstructions, degenerate families, policy rollouts); ``tests/test_rewards.py`` checks them.

Any ``(grid, sample) -> float`` function becomes a component with :class:`Component`; a function of a mesh with
:func:`mesh_component`; an mme3dr metric on rendered views (CLIP, a VLM judge) with :func:`rendered_metric`; add
them with :meth:`RewardEnsemble.with_components`. Weights and the gate switch (weight 0 drops a component) are
options of :class:`RewardConfig`. Measuring costs a few milliseconds per grid on one CPU core (the report prints
it).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import trimesh

from reference_policy.verifiers import RELATION_MARGIN, is_stable
from reference_policy.world import WorldSample, index_of
from reference_policy.world.sample import PartShape, extent_of, layouts, measure_part

if TYPE_CHECKING:
    from mme3dr.metrics.base import PromptMetric

ComponentFn = Callable[[np.ndarray, WorldSample], float]
MeshFn = Callable[[trimesh.Trimesh, WorldSample], float]

STEP1_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"shape": 0.20, "placement": 0.20, "count": 0.20, "parts": 0.10, "relation": 0.10, "stability": 0.10,
     "volume": 0.05, "extent": 0.05})
STEP2_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"shape": 0.15, "placement": 0.20, "count": 0.20, "parts": 0.10, "relation": 0.10, "stability": 0.05,
     "volume": 0.05, "extent": 0.05, "colour": 0.10})


@dataclass(frozen=True)
class Component:
    """One reward term: ``fn(grid, sample)`` in [0, 1], multiplied by ``weight`` in the sum (and by the
    ensemble's gate when ``gated``)."""

    name: str
    fn: ComponentFn
    weight: float = 1.0
    gated: bool = False


@dataclass
class RewardBatch:
    """Rewards of a batch: ``total[i]`` as :class:`RewardEnsemble` sums it; ``components`` holds every component's
    values (the gate's too), each array in [0, 1]."""

    total: np.ndarray
    components: dict[str, np.ndarray]


class RewardEnsemble:
    """Weighted sum of :class:`Component` values over a batch of (grid, sample) pairs:
    ``total = sum_c w_c * r_c * (g if c.gated else 1)``, ``g`` the value of the component named ``gate``
    (no gating when ``gate`` is None; the gate component need not be in the sum, then its values are still
    reported).

    Components are evaluated grid by grid (all components of one grid, then the next), so built-in components
    share one measurement of each grid. A value outside [0, 1] raises ``ValueError`` naming the component.
    """

    def __init__(self, components: Sequence[Component], gate: Component | None = None) -> None:
        if not components:
            raise ValueError("a reward ensemble needs at least one component")
        names = [c.name for c in components]
        if len(set(names)) != len(names):
            raise ValueError(f"component names must be unique, got {names}")
        if gate is None and any(c.gated for c in components):
            raise ValueError(f"components {[c.name for c in components if c.gated]} are gated but the ensemble "
                             f"has no gate")
        if gate is not None and gate.name in names and next(c for c in components if c.name == gate.name) != gate:
            raise ValueError(f"the gate {gate.name!r} differs from the component of that name")
        self.components = tuple(components)
        self.gate = gate

    def with_components(self, *extra: Component) -> RewardEnsemble:
        """A new ensemble with ``extra`` components added (e.g. a CLIP reward from :func:`rendered_metric`)."""
        return RewardEnsemble([*self.components, *extra], self.gate)

    def __call__(self, grids: Sequence[np.ndarray], samples: Sequence[WorldSample]) -> RewardBatch:
        if len(grids) != len(samples):
            raise ValueError(f"{len(grids)} grids but {len(samples)} samples")
        evaluated = [*self.components, *([self.gate] if self.gate and self.gate not in self.components else [])]
        values = {c.name: np.zeros(len(grids)) for c in evaluated}
        for i, (grid, sample) in enumerate(zip(grids, samples)):
            for c in evaluated:
                v = float(c.fn(grid, sample))
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"reward component {c.name!r} returned {v}, outside [0, 1]; normalise it "
                                     f"(see rendered_metric's value_range)")
                values[c.name][i] = v
        gate = values[self.gate.name] if self.gate else np.ones(len(grids))
        total = sum((c.weight * values[c.name] * (gate if c.gated else 1.0) for c in self.components),
                    np.zeros(len(grids)))
        return RewardBatch(total, values)


# ---------------------------------------------------------------- measuring a grid against a spec
@dataclass(frozen=True)
class GridFacts:
    """What the built-in components read from one grid, measured as the spec's ground-truth facts are;
    ``shape``: the object layout's overlap with the truth's, ``placement``: each part's (module docstring)."""

    volume: int
    extent: tuple[float, float, float]
    shapes: dict[str, PartShape]
    purity: float
    stable: bool
    shape: float
    placement: dict[str, float]


def _turns(h: np.ndarray) -> list[np.ndarray]:
    """The 8 images of ``[n, B, B, B]`` histograms under the symmetries of the square about the z axis."""
    return [np.rot90(f, k, axes=(1, 2)) for f in (h, h[:, ::-1]) for k in range(4)]


def _crop(grid: np.ndarray) -> np.ndarray:
    """The grid cut to its occupied x/y range and to the layers up to its highest occupied one (z = 0 kept, so
    heights and grounding are unchanged); measuring the crop is the same as measuring the grid, and faster."""
    xy = grid.any(axis=2)
    if not xy.any():
        return grid
    xs, ys = np.flatnonzero(xy.any(axis=1)), np.flatnonzero(xy.any(axis=0))
    top = int(np.flatnonzero(grid.any(axis=(0, 1)))[-1])
    return grid[xs[0]:xs[-1] + 1, ys[0]:ys[-1] + 1, :top + 1]


def overlap(h: np.ndarray, truth: np.ndarray) -> float:
    """Chance-corrected histogram intersection of a histogram with the truth's (both sum to 1, or ``h`` is all
    zeros): ``clip((o - u) / (1 - u), 0, 1)`` with ``o = sum(min(h, truth))`` and ``u`` the same intersection for a
    uniform ``h`` (a featureless box filling its bounding box, the level that slabs and random voxels reach);
    1 when the truth itself is uniform and ``h`` is too."""
    o = float(np.minimum(h, truth).sum())
    u = float(np.minimum(truth, 1.0 / truth.size).sum())
    if u >= 1.0 - 1e-9:
        return float(o >= 1.0 - 1e-9)
    return float(np.clip((o - u) / (1.0 - u), 0.0, 1.0))


_last: tuple[np.ndarray, WorldSample, GridFacts] | None = None


def measure(grid: np.ndarray, sample: WorldSample) -> GridFacts:
    """:class:`GridFacts` of ``grid`` for ``sample``'s parts. The last result is kept (keyed on the identity of
    the grid and sample objects), so the components of one grid measure it once; do not modify a grid in place
    between calls."""
    global _last
    last = _last
    if last is not None and last[0] is grid and last[1] is sample:
        return last[2]
    spec = sample.spec
    crop = _crop(grid)
    occupied = int(np.count_nonzero(crop))
    names = list(spec.counts)
    whole, part_layouts = layouts(crop, [index_of(spec.counts[p][0]) for p in names])
    shapes = {p: measure_part(crop, index_of(spec.counts[p][0]), spec.counts[p][2], occupied, h)
              for p, h in zip(names, part_layouts)}
    turns = _turns(np.concatenate([whole[None], part_layouts]))
    scores = [overlap(t[0], np.asarray(spec.layout).reshape(whole.shape)) for t in turns]
    best = turns[int(np.argmax(scores))]
    placement = {p: overlap(h, np.asarray(spec.shapes[p].layout).reshape(h.shape)) for p, h in zip(names, best[1:])}
    in_prompt = sum(s.fraction for s in shapes.values())
    facts = GridFacts(occupied, extent_of(crop > 0), shapes, min(in_prompt, 1.0),
                      occupied > 0 and is_stable(crop)[0], max(scores), placement)
    _last = (grid, sample, facts)
    return facts


def band(ratio: float, full: float = 2.0, zero: float = 8.0) -> float:
    """1 while ``ratio`` is within a factor ``full`` of 1, 0 beyond a factor ``zero``, linear in ``|ln ratio|``
    between; 0 for a ratio of 0."""
    if ratio <= 0:
        return 0.0
    return float(min(1.0, max(0.0, (math.log(zero) - abs(math.log(ratio))) / (math.log(zero) - math.log(full)))))


def _sides(measured: Sequence[float], truth: Sequence[float]) -> float:
    return float(np.mean([band(m / t) if t > 0 else float(m == 0) for m, t in zip(measured, truth)]))


# ---------------------------------------------------------------- built-in components (module docstring table)
def count_reward(grid: np.ndarray, sample: WorldSample) -> float:
    facts = measure(grid, sample)
    if facts.volume == 0:
        return 0.0
    return float(np.mean([max(0.0, 1.0 - abs(facts.shapes[p].pieces - n) / n)
                          for p, (_, n, _) in sample.spec.counts.items()]))


def parts_reward(grid: np.ndarray, sample: WorldSample) -> float:
    facts = measure(grid, sample)
    return float(np.mean([_sides(facts.shapes[p].piece_extent, truth.piece_extent) if facts.shapes[p].pieces else 0.0
                          for p, truth in sample.spec.shapes.items()]))


def relation_reward(grid: np.ndarray, sample: WorldSample) -> float:
    facts = measure(grid, sample)
    if facts.volume == 0:
        return 0.0
    if not sample.spec.relations:
        return 1.0
    z = {p: s.mean_z for p, s in facts.shapes.items()}
    return float(np.mean([z[a] is not None and z[b] is not None and z[a] - z[b] >= RELATION_MARGIN
                          for a, _, b in sample.spec.relations]))


def stability_reward(grid: np.ndarray, sample: WorldSample) -> float:
    return float(measure(grid, sample).stable)


def volume_reward(grid: np.ndarray, sample: WorldSample) -> float:
    return band(measure(grid, sample).volume / sample.spec.volume)


def extent_reward(grid: np.ndarray, sample: WorldSample) -> float:
    facts = measure(grid, sample)
    return _sides(facts.extent, sample.spec.extent) if facts.volume else 0.0


def colour_reward(grid: np.ndarray, sample: WorldSample) -> float:
    facts = measure(grid, sample)
    if facts.volume == 0:
        return 0.0
    return facts.purity * float(np.mean([band(facts.shapes[p].fraction / truth.fraction)
                                         for p, truth in sample.spec.shapes.items()]))


def shape_reward(grid: np.ndarray, sample: WorldSample) -> float:
    return measure(grid, sample).shape


def placement_reward(grid: np.ndarray, sample: WorldSample) -> float:
    return float(np.mean(list(measure(grid, sample).placement.values())))


BUILTIN: Mapping[str, ComponentFn] = MappingProxyType({
    "shape": shape_reward, "placement": placement_reward,
    "count": count_reward, "parts": parts_reward, "relation": relation_reward, "stability": stability_reward,
    "volume": volume_reward, "extent": extent_reward, "colour": colour_reward})


#: Components that describe where the voxels are; the others (counts, relations, sizes, colours) can be met by a
#: featureless stack, so they are gated by ``shape`` (see the module docstring).
UNGATED = frozenset({"shape", "placement"})


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the built-in components per step (a weight of 0 switches a component off; names are keys of
    :data:`BUILTIN`; defaults :data:`STEP1_WEIGHTS` and :data:`STEP2_WEIGHTS`) and the gate switch: with
    ``gate`` every component outside :data:`UNGATED` is multiplied by ``shape``."""

    step1: Mapping[str, float] = field(default_factory=lambda: dict(STEP1_WEIGHTS))
    step2: Mapping[str, float] = field(default_factory=lambda: dict(STEP2_WEIGHTS))
    gate: bool = True

    def ensemble(self, step: int) -> RewardEnsemble:
        """The ensemble of step 1 or 2."""
        if step not in (1, 2):
            raise ValueError(f"step must be 1 or 2, got {step}")
        weights = self.step1 if step == 1 else self.step2
        unknown = sorted(set(weights) - set(BUILTIN))
        if unknown:
            raise ValueError(f"unknown reward components {unknown}; built-in ones are {sorted(BUILTIN)} (add others "
                             f"with RewardEnsemble.with_components)")
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"reward weights must be >= 0, got {dict(weights)}")
        gate = Component("shape", BUILTIN["shape"], float(weights.get("shape", 0.0))) if self.gate else None
        return RewardEnsemble([gate if gate and n == "shape" else
                               Component(n, BUILTIN[n], float(w), gated=self.gate and n not in UNGATED)
                               for n, w in weights.items() if w > 0], gate)


def step1_rewards(config: RewardConfig | None = None) -> RewardEnsemble:
    """Step 1 (coarse grid): structure (counts, part shapes, relations, stability, volume, extent)."""
    return (config or RewardConfig()).ensemble(1)


def step2_rewards(config: RewardConfig | None = None) -> RewardEnsemble:
    """Step 2 (final grid): counts, part shapes, colours, relations, stability, volume, extent."""
    return (config or RewardConfig()).ensemble(2)


# ---------------------------------------------------------------- adapters: meshes and rendered metrics
def default_mesher(grid: np.ndarray) -> trimesh.Trimesh:
    """The reference adapter's mesh of a grid (marching cubes with vertex colours, z up)."""
    from reference_policy.generator import surface_mesh

    return surface_mesh(grid)


def mesh_component(name: str, fn: MeshFn, weight: float = 1.0,
                   mesher: Callable[[np.ndarray], trimesh.Trimesh] = default_mesher) -> Component:
    """A component from a function of a mesh: ``fn(mesher(grid), sample)`` in [0, 1]; an empty grid (no mesh)
    scores 0. ``mesher``: the reference adapter's marching-cubes surface by default, or
    :func:`~reference_policy.world.to_mesh` for voxel cubes."""

    def component(grid: np.ndarray, sample: WorldSample) -> float:
        if not np.any(grid):
            return 0.0
        return fn(mesher(grid), sample)

    component.__name__ = f"{name}_of_mesh"
    return Component(name, component, weight)


def rendered_metric(metric: PromptMetric, key: str, value_range: tuple[float, float], name: str | None = None,
                    weight: float = 1.0, preset: str = "reward6", resolution: int | None = None,
                    mesher: Callable[[np.ndarray], trimesh.Trimesh] = default_mesher, prompt: int = 0) -> Component:
    """A component from an mme3dr metric on rendered views (CLIP, a VLM judge, ...).

    Per grid: ``mesher(grid)`` -> normalised as mme3dr loads assets (bounding box centred, largest extent 1) ->
    the views of render preset ``preset`` (``resolution`` overrides its size) -> ``metric.score`` of a
    :class:`~mme3dr.metrics.base.ScoreItem` with the sample's prompt number ``prompt`` -> the value ``key`` ->
    ``clip((value - lo) / (hi - lo), 0, 1)`` with ``(lo, hi) = value_range`` (e.g. ``(0, 100)`` for
    ``clip``, ``(1, 5)`` for a 1-5 judge). An empty grid scores 0; a metric error raises ``RuntimeError``.
    """
    from PIL import Image

    from mme3dr.assets import Asset, normalisation_transform
    from mme3dr.metrics.base import ScoreItem
    from mme3dr.render import get_preset, get_renderer

    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must have hi > lo, got {value_range}")
    render_preset = get_preset(preset).with_overrides(resolution=resolution)
    label = name or f"{metric.name}_{key}"

    def score_mesh(mesh: trimesh.Trimesh, sample: WorldSample) -> float:
        mesh = mesh.copy()
        mesh.apply_transform(normalisation_transform(mesh.bounds))
        views = get_renderer().render(Asset(Path(f"{sample.family}-{sample.seed}"), [mesh], "+z"), render_preset)
        with tempfile.TemporaryDirectory(prefix="reward-views-") as folder:
            mode = "RGBA" if render_preset.background == "transparent" else "RGB"
            for i, view in enumerate(views.rgba):
                Image.fromarray(view if mode == "RGBA" else view[..., :3], mode).save(Path(folder) / f"{i:03d}.png")
            item = ScoreItem(f"{sample.family}-{sample.seed}", sample.category, sample.prompts[prompt],
                             render_dir=Path(folder))
            result = metric.score(item)
        if result.error is not None or result.values.get(key) is None:
            raise RuntimeError(f"metric {metric.name!r} gave no {key!r} for {item.prompt_id}: {result.error}")
        return float(np.clip((float(result.values[key]) - lo) / (hi - lo), 0.0, 1.0))

    return mesh_component(label, score_mesh, weight, mesher)
