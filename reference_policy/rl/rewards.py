"""The reward ensemble of Hi-GRPO for the procedural world (interface; components are filled in by the rewards work).

A component is any function ``(grid, sample) -> float in [0, 1]`` (``grid``: uint8 ``[GRID]^3`` palette indices,
``sample``: the :class:`~reference_policy.world.WorldSample` whose prompt was given). An ensemble sums its
components with weights: ``R = sum_c w_c * r_c``. Step 1 scores the coarse (step-1) grid, step 2 the final grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from reference_policy.verifiers import verify
from reference_policy.world import WorldSample

ComponentFn = Callable[[np.ndarray, WorldSample], float]


@dataclass(frozen=True)
class Component:
    """One reward term: ``fn(grid, sample)`` in [0, 1], multiplied by ``weight`` in the sum."""

    name: str
    fn: ComponentFn
    weight: float = 1.0


@dataclass
class RewardBatch:
    """Rewards of a batch: ``total[i] = sum_c weight_c * components[c][i]``; each component array is in [0, 1]."""

    total: np.ndarray
    components: dict[str, np.ndarray]


class RewardEnsemble:
    """Weighted sum of :class:`Component` values over a batch of (grid, sample) pairs."""

    def __init__(self, components: Sequence[Component]) -> None:
        if not components:
            raise ValueError("a reward ensemble needs at least one component")
        names = [c.name for c in components]
        if len(set(names)) != len(names):
            raise ValueError(f"component names must be unique, got {names}")
        self.components = tuple(components)

    def __call__(self, grids: Sequence[np.ndarray], samples: Sequence[WorldSample]) -> RewardBatch:
        if len(grids) != len(samples):
            raise ValueError(f"{len(grids)} grids but {len(samples)} samples")
        values = {c.name: np.array([float(c.fn(g, s)) for g, s in zip(grids, samples)], dtype=np.float64)
                  for c in self.components}
        total = sum((c.weight * values[c.name] for c in self.components), np.zeros(len(grids)))
        return RewardBatch(total, values)


def _check_fraction(check_type: str) -> ComponentFn:
    def fn(grid: np.ndarray, sample: WorldSample) -> float:
        checks = [c.passed for c in verify(grid, sample.spec).checks if c.type == check_type]
        return float(np.mean(checks)) if checks else 1.0
    fn.__name__ = f"{check_type}_fraction"
    return fn


def step1_rewards() -> RewardEnsemble:
    """Step 1 (coarse grid): structure (part counts, relations, stability)."""
    return RewardEnsemble([Component(t, _check_fraction(t)) for t in ("count", "relation", "stability")])


def step2_rewards() -> RewardEnsemble:
    """Step 2 (final grid): colours, counts, relations, stability."""
    return RewardEnsemble([Component(t, _check_fraction(t)) for t in ("colour", "count", "relation", "stability")])
