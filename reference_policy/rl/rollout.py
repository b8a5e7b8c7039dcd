"""Rollouts of a Hi-GRPO step: the prompt stream, and G step-1 samples with C step-2 children per prompt with their
rewards (:func:`rollout_groups`; see :mod:`reference_policy.rl.train` for where they fit)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from reference_policy.policy import ReferencePolicy, StepRollout
from reference_policy.rl.config import HiGRPOConfig
from reference_policy.rl.rewards import RewardBatch, RewardEnsemble
from reference_policy.world import WorldSample, generate

PROMPT_CHUNK = 256


def derive_seed(*keys: int) -> int:
    """A 32-bit seed from integer keys (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class PromptStream:
    """The ``k``-th prompt of a run: world sample ``k`` (``generate(PROMPT_CHUNK, "train", seed(s, chunk))`` chunk
    by chunk, or cycling through the first ``pool`` of them when ``pool > 0``) with its paraphrase ``k % 3``."""

    def __init__(self, seed: int, pool: int = 0) -> None:
        self.seed, self.pool = seed, pool
        self._chunks: dict[int, list[WorldSample]] = {}

    def sample(self, k: int) -> WorldSample:
        j = k % self.pool if self.pool else k
        chunk = j // PROMPT_CHUNK
        if chunk not in self._chunks:  # generate(n) is a prefix of generate(m > n): a pool draws only its own
            n = min(PROMPT_CHUNK, self.pool - chunk * PROMPT_CHUNK) if self.pool else PROMPT_CHUNK
            self._chunks = {chunk: generate(n, "train", derive_seed(self.seed, 7, chunk))}
        return self._chunks[chunk][j % PROMPT_CHUNK]

    def prompt(self, k: int) -> str:
        s = self.sample(k)
        return s.prompts[k % len(s.prompts)]


@dataclass
class Group:
    """The rollouts of one prompt (stream index ``k``): G step-1 samples, ``children[g]`` their C step-2 samples,
    rewards ``r1 [G]`` (0 when the step-1 reward is off) and ``r2 [G, C]``, and the component means."""

    k: int
    step1: list[StepRollout]
    children: list[list[StepRollout]]
    r1: np.ndarray
    r2: np.ndarray
    components: dict[str, float]


def _batched(fn: Callable[[list, list[int]], list], items: list, seeds: list[int], size: int) -> list:
    return [r for lo in range(0, len(items), size) for r in fn(items[lo:lo + size], seeds[lo:lo + size])]


def rollout_groups(policy: ReferencePolicy, stream: PromptStream, ks: Sequence[int], cfg: HiGRPOConfig, seed: int,
                   rewards1: RewardEnsemble | None, rewards2: RewardEnsemble) -> tuple[list[Group], float, float]:
    """Rollouts and rewards of the prompts ``ks``; returns the groups, rollout seconds and reward seconds."""
    if not ks:
        return [], 0.0, 0.0
    start = time.perf_counter()
    g_, c_ = cfg.num_generations, cfg.num_children
    policy.model.eval()
    prompts = [stream.prompt(k) for k in ks for _ in range(g_)]
    seeds1 = [derive_seed(seed, k, g) for k in ks for g in range(g_)]

    def step1(texts: list[str], seeds: list[int]) -> list[StepRollout]:
        return policy.generate_step1(texts, seeds, cfg.temperature, cfg.top_k)

    def step2(parents: list[StepRollout], seeds: list[int]) -> list[StepRollout]:
        return policy.generate_step2(parents, seeds, cfg.temperature, cfg.top_k)

    s1 = _batched(step1, prompts, seeds1, cfg.rollout_batch_size)
    parents = [s for s in s1 for _ in range(c_)]
    seeds2 = [derive_seed(seed, k, g, 1 + c) for k in ks for g in range(g_) for c in range(c_)]
    s2 = _batched(step2, parents, seeds2, cfg.rollout_batch_size)
    codes1 = np.stack([s.codes for s in s1])
    coarse = policy.vqvae.decode_coarse(codes1) if rewards1 else None
    final = policy.vqvae.decode(np.repeat(codes1, c_, axis=0), np.stack([s.codes for s in s2]))
    t_rollout = time.perf_counter() - start
    start = time.perf_counter()
    samples = [stream.sample(k) for k in ks]
    b1 = rewards1(coarse, [s for s in samples for _ in range(g_)]) if rewards1 else None
    b2 = rewards2(final, [s for s in samples for _ in range(g_ * c_)])
    groups = []
    for i, k in enumerate(ks):
        comps = _component_means(b2, "r2", slice(i * g_ * c_, (i + 1) * g_ * c_))
        r1 = np.zeros(g_)
        if b1 is not None:
            r1 = b1.total[i * g_:(i + 1) * g_]
            comps.update(_component_means(b1, "r1", slice(i * g_, (i + 1) * g_)))
        groups.append(Group(k, s1[i * g_:(i + 1) * g_],
                            [s2[(i * g_ + g) * c_:(i * g_ + g + 1) * c_] for g in range(g_)], r1,
                            b2.total[i * g_ * c_:(i + 1) * g_ * c_].reshape(g_, c_), comps))
    return groups, t_rollout, time.perf_counter() - start


def _component_means(batch: RewardBatch, prefix: str, rows: slice) -> dict[str, float]:
    return {f"{prefix}/{name}": float(v[rows].mean()) for name, v in batch.components.items()}
