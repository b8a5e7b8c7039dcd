"""Hi-GRPO training of the reference policy: ``python -m reference_policy.rl.train --out DIR [--init CKPT]
[--device cuda[:K]] [--smoke] [--seed S] [--steps N] [--max-minutes M] [--FIELD VALUE ...]``, where every field of
:class:`HiGRPOConfig` is an option (``--loss-agg-mode seq-mean-token-mean``, ``--dynamic-sampling false``, ...).
Data-parallel: ``torchrun --nproc_per_node N -m reference_policy.rl.train ...`` (gloo on the CPU, NCCL on CUDA).

One step (``P = prompts_per_step``, ``G = num_generations``, ``C = num_children``):

1. rollouts: P prompts from the stream (the training split of the procedural world; sample ``k`` of the stream
   is drawn by ``generate(PROMPT_CHUNK, "train", ...)`` chunk by chunk, paraphrase ``k % 3``), split over the
   ranks (the G samples of a prompt stay on one rank). Each prompt gets G step-1 samples and each step-1 sample
   C step-2 children, decoded in batches with the static-cache constrained decoding at ``temperature`` and
   ``top_k`` (defaults 1 and none: the recorded log-probs are then those of the distribution the tokens were
   drawn from, and they are the old policy of the PPO ratio). Row seeds derive from (seed, stream index, sample),
   so a rollout does not depend on the rank or batch it was decoded in;
2. rewards (:mod:`reference_policy.rl.rewards`): step 1 scores the coarse grid of a step-1 sample (the VQ-VAE's
   ``decode_coarse``), step 2 the final grid of a child; the groups of all ranks are then gathered on every rank;
3. dynamic sampling (``dynamic_sampling``): a prompt is kept when its step-1 group (coupled rewards) or one of its
   step-2 groups has reward spread (:func:`~.algos.groups_with_spread`); rounds of P fresh prompts are drawn until
   P are kept or ``max_sampling_rounds`` rounds are done; at most P are used. Within a kept prompt, a step
   group without spread carries no loss. ``kept_frac`` = kept / drawn prompts;
4. advantages (:func:`~.algos.hi_grpo_advantages`): ``A1`` from ``R1' = R1 + lambda mean_c R2`` over a prompt's
   G samples (``R1 = 0`` with ``step1_reward=False``), ``A2`` from ``R2`` in the step-2 groups; with
   ``paradigm="one-step"`` both segments are one sequence with one advantage from ``R2`` (GRPO on the final
   output);
5. update: ``num_iterations`` PPO epochs; each epoch shuffles the rows (one per child: prompt, step-1 segment,
   step-2 segment) and makes ``num_minibatches`` optimizer steps. A row is scored in one forward
   (:meth:`~reference_policy.policy.ReferencePolicy.sequence_logprobs` of both segments after the prompt); its
   step-1 tokens carry ``L1`` (on the first child of each step-1 sample only), its step-2 tokens ``L2``
   (:func:`~.algos.policy_loss`); the loss is ``L1 + L2``. Loss tokens are the sampled ones (forced grammar tokens
   carry none). The aggregation counts (tokens, sequences) are those of the whole minibatch over all ranks, so
   ``N`` ranks compute the 1-process update (DDP averages the gradients, so each rank's loss is multiplied by
   ``N``). The reference policy (``beta > 0`` only; with ``beta = 0`` it is never loaded) is the ``--init``
   checkpoint, frozen. AdamW, gradient clipping at ``max_grad_norm``, bfloat16 autocast on CUDA (``bf16``).

Outputs in ``--out`` (rank 0): ``log.jsonl`` (one row per step: ``r1``, ``r1_coupled``, ``r2`` and every reward
component as ``r1/NAME``, ``r2/NAME`` (means over the step's rollouts); ``adv1_std``, ``adv2_std``, ``adv_absmean``;
``kl`` (mean k3 over loss tokens); ``clip_low``, ``clip_high`` (fractions of loss tokens clipped);
``entropy1``, ``entropy2`` (mean entropy of the constrained distributions over sampled tokens, first epoch);
``logprob_gap`` (mean ``|logp - old_logp|`` in the first minibatch, before any update: the rollout/training
numerics gap); ``kept_frac``, ``rounds``; ``tokens``, ``tokens_per_s``; ``t_rollout``, ``t_reward``, ``t_update``,
``seconds``), ``curves.png`` (rewards, KL, clipping, entropy), ``state.pt`` (training state, written atomically
every ``save_every`` steps and at the end: weights, optimizer, RNG, stream position), the final policy in the
:meth:`~reference_policy.policy.ReferencePolicy.save_pretrained` layout (``model/``, ``tokenizer/``, ``vqvae/``,
``policy.json``; weights in ``save_dtype``) and ``summary.json`` (config, steps, reward means of the first and the
last steps, seconds). Running the same command again resumes from ``state.pt`` (after a crash or SIGKILL) and
ends with the weights of an uninterrupted run (CPU; on CUDA up to non-deterministic kernels); ``state.pt`` can be
deleted once the run is finished.

``--smoke``: a tiny task for CI (:data:`SMOKE`): a tiny policy pretrained in-process on 16 samples
(``pretrain.SMOKE``, a few seconds) into ``OUT/init`` unless ``--init`` is given, then Hi-GRPO on two prompts.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from reference_policy.policy import ReferencePolicy, StepRollout
from reference_policy.rl import algos
from reference_policy.rl.rewards import RewardBatch, RewardEnsemble, step1_rewards, step2_rewards
from reference_policy.trainutil import (Panel, RunLog, atomic_torch_save, atomic_write_text, plot_curves,
                                        seed_all)
from reference_policy.world import WorldSample, generate

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoint"
PROMPT_CHUNK = 256
PARADIGMS = ("hi-grpo", "one-step")
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class HiGRPOConfig:
    """Settings of a run (defaults: the paper's where they fit this scale; names as TRL / verl, see
    :mod:`reference_policy.rl.algos`). Ablations: ``loss_agg_mode``, ``dynamic_sampling``, ``beta=0``,
    ``epsilon_high=0.2`` (symmetric clipping), ``importance_sampling_level="sequence"`` (GSPO),
    ``step1_reward``, ``coupling_lambda``, ``paradigm="one-step"``."""

    prompts_per_step: int = 8
    num_generations: int = 8
    num_children: int = 1
    paradigm: str = "hi-grpo"
    coupling_lambda: float = 1.0
    step1_reward: bool = True
    epsilon: float = 0.2
    epsilon_high: float = 0.28
    beta: float = 0.01
    loss_agg_mode: str = "token-mean"
    importance_sampling_level: str = "token"
    scale_rewards: str = "group"
    dynamic_sampling: bool = True
    max_sampling_rounds: int = 3
    num_iterations: int = 2
    num_minibatches: int = 2
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = True
    temperature: float = 1.0
    top_k: int = 0
    rollout_batch_size: int = 128
    steps: int = 200
    save_every: int = 20
    prompt_pool: int = 0
    save_dtype: str = "float32"

    def __post_init__(self) -> None:
        checks = [
            (self.paradigm in PARADIGMS, f"paradigm must be one of {PARADIGMS}"),
            (self.loss_agg_mode in algos.LOSS_AGG_MODES, f"loss_agg_mode must be one of {algos.LOSS_AGG_MODES}"),
            (self.importance_sampling_level in algos.IMPORTANCE_SAMPLING_LEVELS,
             f"importance_sampling_level must be one of {algos.IMPORTANCE_SAMPLING_LEVELS}"),
            (self.scale_rewards in algos.SCALE_REWARDS, f"scale_rewards must be one of {algos.SCALE_REWARDS}"),
            (self.save_dtype in SAVE_DTYPES, f"save_dtype must be one of {tuple(SAVE_DTYPES)}"),
            (self.num_generations >= 2, "num_generations must be >= 2 (a group needs two samples to compare)"),
            (self.num_children >= 1, "num_children must be >= 1"),
            (self.paradigm == "hi-grpo" or self.num_children == 1, "paradigm one-step needs num_children 1"),
            (min(self.prompts_per_step, self.num_iterations, self.num_minibatches, self.max_sampling_rounds,
                 self.rollout_batch_size, self.save_every) >= 1,
             "prompts_per_step, num_iterations, num_minibatches, max_sampling_rounds, rollout_batch_size and "
             "save_every must be >= 1"),
            (self.beta >= 0 and self.epsilon >= 0 and self.epsilon_high >= 0, "beta and the epsilons must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"HiGRPOConfig: {message}")


#: The tiny CI task of ``--smoke``: two prompts, G = 8, a high learning rate for the tiny policy of
#: :func:`smoke_init`; its step-2 reward rises within the 12 steps (tested).
SMOKE = HiGRPOConfig(prompts_per_step=2, num_generations=8, prompt_pool=2, learning_rate=3e-3, steps=12,
                     save_every=4, num_minibatches=1, rollout_batch_size=64)
#: Config fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = frozenset({"steps", "save_every", "rollout_batch_size"})


# ----- distributed --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    """Rank and world size (1 process: rank 0 of 1, no process group)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: object) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()


def init_distributed(device: str) -> tuple[Dist, str]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (gloo on the CPU, NCCL on CUDA, where rank ``r``
    uses ``cuda:LOCAL_RANK``); returns the rank info and the device of this process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), device
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device


# ----- prompts and rollouts -----------------------------------------------------------------------------------------
def _seed(*keys: int) -> int:
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
            self._chunks = {chunk: generate(n, "train", _seed(self.seed, 7, chunk))}
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
    seeds1 = [_seed(seed, k, g) for k in ks for g in range(g_)]

    def step1(texts: list[str], seeds: list[int]) -> list[StepRollout]:
        return policy.generate_step1(texts, seeds, cfg.temperature, cfg.top_k)

    def step2(parents: list[StepRollout], seeds: list[int]) -> list[StepRollout]:
        return policy.generate_step2(parents, seeds, cfg.temperature, cfg.top_k)

    s1 = _batched(step1, prompts, seeds1, cfg.rollout_batch_size)
    parents = [s for s in s1 for _ in range(c_)]
    seeds2 = [_seed(seed, k, g, 1 + c) for k in ks for g in range(g_) for c in range(c_)]
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


# ----- advantages and the update batch ------------------------------------------------------------------------------
@dataclass
class UpdateBatch:
    """One row per step-2 child: ``contexts`` (prompt ids), ``segments`` (step-1 + step-2 ids), and ``[R, T]``
    tensors: ``old_logp`` (recorded at sampling), ``adv`` (per-token advantage), ``mask1`` / ``mask2`` (loss
    tokens of L1 / L2; with ``paradigm="one-step"`` ``mask2`` holds both segments and ``mask1`` is empty),
    ``sampled1`` / ``sampled2`` (sampled tokens of each segment, for the entropy log)."""

    contexts: list[list[int]]
    segments: list[list[int]]
    old_logp: torch.Tensor
    adv: torch.Tensor
    mask1: torch.Tensor
    mask2: torch.Tensor
    sampled1: torch.Tensor
    sampled2: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


def build_update_batch(groups: Sequence[Group], cfg: HiGRPOConfig) -> UpdateBatch:
    """Advantages of the kept groups (module docstring, steps 3 and 4) laid out per row and token."""
    r1 = torch.tensor(np.stack([g.r1 for g in groups]), dtype=torch.float64)
    r2 = torch.tensor(np.stack([g.r2 for g in groups]), dtype=torch.float64)
    p, g_, c_ = r2.shape
    if cfg.paradigm == "one-step":
        a2 = algos.group_advantages(r2[..., 0], cfg.scale_rewards)[..., None]
        a1 = torch.zeros(p, g_, dtype=torch.float64)
        keep1 = torch.zeros(p, g_, dtype=torch.bool)
        keep2 = algos.groups_with_spread(r2[..., 0])[:, None, None].expand(p, g_, c_)
    else:
        a1, a2 = algos.hi_grpo_advantages(r1, r2, cfg.coupling_lambda, cfg.scale_rewards)
        coupled = algos.coupled_step1_rewards(r1, r2, cfg.coupling_lambda)
        keep1 = algos.groups_with_spread(coupled)[:, None].expand(p, g_)
        spread2 = algos.groups_with_spread(algos.step2_groups(r2))
        keep2 = (spread2[:, None, None] if c_ == 1 else spread2.reshape(p, g_, 1)).expand(p, g_, c_)
    if not cfg.dynamic_sampling:
        keep1 = torch.ones_like(keep1) if cfg.paradigm == "hi-grpo" else keep1
        keep2 = torch.ones_like(keep2)
    contexts, segments, rows = [], [], []
    for i, grp in enumerate(groups):
        for g, (parent, kids) in enumerate(zip(grp.step1, grp.children)):
            for c, kid in enumerate(kids):
                contexts.append(parent.context)
                segments.append(parent.ids + kid.ids)
                rows.append((parent, kid, float(a1[i, g]), float(a2[i, g, c]),
                             bool(keep1[i, g]) and c == 0, bool(keep2[i, g, c])))
    n, t = len(rows), max(len(s) for s in segments)
    old = torch.zeros(n, t)
    adv = torch.zeros(n, t)
    mask1, mask2, sampled1, sampled2 = (torch.zeros(n, t, dtype=torch.bool) for _ in range(4))
    for r, (parent, kid, adv1, adv2, k1, k2) in enumerate(rows):
        l1, l2 = len(parent.ids), len(kid.ids)
        old[r, :l1 + l2] = torch.tensor(parent.logprobs + kid.logprobs)
        sampled1[r, :l1] = torch.tensor(parent.sampled)
        sampled2[r, l1:l1 + l2] = torch.tensor(kid.sampled)
        if cfg.paradigm == "one-step":
            adv[r, :l1 + l2] = adv2
            mask2[r] = (sampled1[r] | sampled2[r]) & k2
        else:
            adv[r, :l1], adv[r, l1:l1 + l2] = adv1, adv2
            mask1[r] = sampled1[r] & k1
            mask2[r] = sampled2[r] & k2
    used1, used2 = a1[keep1], a2[keep2]
    stats = {"adv1_std": float(used1.std(correction=0)) if used1.numel() else 0.0,
             "adv2_std": float(used2.std(correction=0)) if used2.numel() else 0.0,
             "adv_absmean": float(torch.cat([used1.abs(), used2.abs()]).mean()) if used1.numel() + used2.numel()
             else 0.0,
             "r1_coupled": float((r1 + cfg.coupling_lambda * r2.mean(-1)).mean())}
    return UpdateBatch(contexts, segments, old, adv, mask1, mask2, sampled1, sampled2, stats)


def group_kept(group: Group, cfg: HiGRPOConfig) -> bool:
    """Dynamic sampling: the prompt has reward spread in its step-1 group or one of its step-2 groups (one-step:
    in its final rewards)."""
    r1 = torch.tensor(group.r1)[None]
    r2 = torch.tensor(group.r2)[None]
    if cfg.paradigm == "one-step":
        return bool(algos.groups_with_spread(r2[..., 0]).any())
    coupled = algos.coupled_step1_rewards(r1, r2, cfg.coupling_lambda)
    return bool(algos.groups_with_spread(coupled).any() or algos.groups_with_spread(algos.step2_groups(r2)).any())


# ----- the trainer -------------------------------------------------------------------------------------------------
class Trainer:
    """One run (module docstring); :meth:`run` trains until ``cfg.steps`` or the time budget."""

    def __init__(self, out: str | Path, cfg: HiGRPOConfig, init: str | Path, device: str = "cpu", seed: int = 0,
                 max_minutes: float | None = None, dist_info: Dist = Dist()) -> None:
        self.out, self.cfg, self.init, self.device, self.seed = Path(out), cfg, Path(init), device, seed
        self.max_minutes, self.dist = max_minutes, dist_info
        self.cuda = str(device).startswith("cuda")
        seed_all(seed, device)
        self.policy = ReferencePolicy.from_pretrained(self.init, device)
        self.model = self.policy.model
        self.ref = ReferencePolicy.from_pretrained(self.init, device).model.requires_grad_(False) if cfg.beta > 0 \
            else None
        self.ddp = self.model
        if dist_info.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, broadcast_buffers=False)
        self.opt = torch.optim.AdamW(self.model.parameters(), cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.rewards1 = step1_rewards() if cfg.step1_reward and cfg.paradigm == "hi-grpo" else None
        self.rewards2 = step2_rewards()
        self.stream = PromptStream(seed, cfg.prompt_pool)
        self.step, self.pos, self.seconds_before = 0, 0, 0.0
        rows: list[dict] = []
        if (self.out / "state.pt").exists():
            rows = self._resume()
        self.log = RunLog(self.out / "log.jsonl" if dist_info.main else None, echo=dist_info.main,
                          offset=self.seconds_before, rows=rows)
        if dist_info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.log.rewrite()

    # ----- state --------------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"step": self.step, "pos": self.pos, "seconds": self.log.seconds, "config": asdict(self.cfg),
                "seed": self.seed, "init": str(self.init), "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if self.cuda else None}}

    def save_state(self) -> None:
        if self.dist.main:
            atomic_torch_save(self._state(), self.out / "state.pt")

    def _resume(self) -> list[dict]:
        state = torch.load(self.out / "state.pt", map_location=self.device, weights_only=False)
        diff = {k for k, v in asdict(self.cfg).items() if state["config"].get(k) != v} - RESUMABLE_CHANGES
        if diff or state["seed"] != self.seed:
            raise ValueError(f"{self.out / 'state.pt'} is a run with other settings ({sorted(diff) or 'seed'} "
                             f"differ); use another --out, or delete state.pt to start over")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if self.cuda and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.step, self.pos, self.seconds_before = state["step"], state["pos"], state["seconds"]
        return [r for r in RunLog.read(self.out / "log.jsonl") if r.get("step", -1) < self.step]

    # ----- one step -----------------------------------------------------------------------------------------------
    def collect(self) -> tuple[list[Group], dict]:
        """Rounds of rollouts until P prompts are kept (dynamic sampling) or the round cap; every rank gets every
        kept group."""
        cfg, p = self.cfg, self.cfg.prompts_per_step
        kept: list[Group] = []
        drawn: list[Group] = []
        t_rollout = t_reward = 0.0
        rounds = 0
        for rounds in range(1, (cfg.max_sampling_rounds if cfg.dynamic_sampling else 1) + 1):
            ks = list(range(self.pos, self.pos + p))
            self.pos += p
            mine = [int(k) for k in np.array_split(np.array(ks), self.dist.world)[self.dist.rank]]
            groups, tr, tw = rollout_groups(self.policy, self.stream, mine, cfg, self.seed, self.rewards1,
                                            self.rewards2)
            t_rollout, t_reward = t_rollout + tr, t_reward + tw
            every = [g for part in self.dist.gather(groups) for g in part]
            drawn += every
            kept += [g for g in every if group_kept(g, cfg)] if cfg.dynamic_sampling else every
            if len(kept) >= p:
                break
        stats = {"kept_frac": len(kept) / len(drawn), "rounds": rounds, "t_rollout": t_rollout,
                 "t_reward": t_reward,
                 "tokens": sum(len(s.ids) for g in drawn for s in g.step1)
                 + sum(len(s.ids) for g in drawn for kids in g.children for s in kids)}
        stats["r2"] = float(np.mean([g.r2.mean() for g in drawn]))
        if self.rewards1:
            stats["r1"] = float(np.mean([g.r1.mean() for g in drawn]))
        for key in drawn[0].components:
            stats[key] = float(np.mean([g.components[key] for g in drawn]))
        return kept[:p], stats

    def update(self, batch: UpdateBatch) -> dict:
        """``num_iterations`` epochs of ``num_minibatches`` optimizer steps; returns the step's statistics."""
        cfg, dev = self.cfg, self.device
        n = len(batch.segments)
        sums = {k: [0.0, 0.0] for k in UPDATE_STATS}

        def add(key: str, value: float, weight: float, total: float | None = None) -> None:
            """Accumulate ``value * weight`` (or ``total``) over ``weight``."""
            sums[key][0] += value * weight if total is None else total
            sums[key][1] += weight

        autocast = torch.autocast("cuda", torch.bfloat16, enabled=self.cuda and cfg.bf16)
        self.model.train()
        for epoch in range(cfg.num_iterations):
            order = np.random.default_rng(_seed(self.seed, self.step, epoch, 99)).permutation(n)
            for mb, rows in enumerate(np.array_split(order, cfg.num_minibatches)):
                counts = [batch.mask1[rows].sum(), (batch.mask1[rows].sum(-1) > 0).sum(),
                          batch.mask2[rows].sum(), (batch.mask2[rows].sum(-1) > 0).sum()]
                n_tok1, n_seq1, n_tok2, n_seq2 = (max(float(c), 1.0) for c in counts)
                mine = np.array_split(rows, self.dist.world)[self.dist.rank]
                empty = len(mine) == 0
                if empty:  # a rank without rows still joins the gradient all-reduce, with a zero loss
                    mine = rows[:1]
                idx = torch.as_tensor(mine)
                ctx = [batch.contexts[i] for i in mine]
                seg = [batch.segments[i] for i in mine]
                with autocast:
                    scores = self.policy.sequence_logprobs(ctx, seg, cfg.temperature, entropy=epoch == 0,
                                                           model=self.ddp)
                    ref = None
                    if self.ref is not None:
                        with torch.no_grad():
                            ref = self.policy.sequence_logprobs(ctx, seg, cfg.temperature, model=self.ref).logprobs
                t = scores.logprobs.shape[1]
                logp = scores.logprobs
                old, adv = batch.old_logp[idx, :t].to(dev), batch.adv[idx, :t].to(dev)
                m1, m2 = batch.mask1[idx, :t].to(dev), batch.mask2[idx, :t].to(dev)
                common = dict(epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                              importance_sampling_level=cfg.importance_sampling_level,
                              loss_agg_mode=cfg.loss_agg_mode, ref_logp=ref, beta=cfg.beta)
                l2 = algos.policy_loss(logp, old, adv, m2, n_tokens=n_tok2, n_seqs=n_seq2, **common)
                loss = l2.loss
                parts = [(l2, m2)]
                if cfg.paradigm == "hi-grpo":
                    l1 = algos.policy_loss(logp, old, adv, m1, n_tokens=n_tok1, n_seqs=n_seq1, **common)
                    loss = loss + l1.loss
                    parts.append((l1, m1))
                loss = loss * (0.0 if empty else float(self.dist.world))
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.opt.step()
                if self.dist.main:  # the same on every rank: counted once
                    add("grad_norm", float(grad_norm), 1.0)
                # this rank's share of the minibatch loss; the shares sum to it, one count per minibatch
                add("loss", 0.0, 1.0 if self.dist.main else 0.0, total=loss.item() / self.dist.world)
                if empty:
                    continue
                for part, m in parts:
                    w = float(m.sum())
                    add("clip_low", part.clip_low, w)
                    add("clip_high", part.clip_high, w)
                    add("ratio", part.ratio_mean, w)
                    if ref is not None:
                        add("kl", part.kl, w)
                if epoch == 0:
                    s1 = batch.sampled1[idx, :t].to(dev)
                    s2 = batch.sampled2[idx, :t].to(dev)
                    add("entropy1", float(algos.masked_mean(scores.entropy, s1)), float(s1.sum()))
                    add("entropy2", float(algos.masked_mean(scores.entropy, s2)), float(s2.sum()))
                    if mb == 0:
                        live = s1 | s2
                        add("logprob_gap", float(algos.masked_mean((logp.detach() - old).abs(), live)),
                            float(live.sum()))
        totals = self.dist.sum([v for k in UPDATE_STATS for v in sums[k]], dev)
        return {k: totals[2 * i] / totals[2 * i + 1] for i, k in enumerate(UPDATE_STATS) if totals[2 * i + 1] > 0}

    def train_step(self) -> dict:
        start = time.perf_counter()
        groups, stats = self.collect()
        row = {"step": self.step, **stats}
        t_update = 0.0
        if groups:
            batch = build_update_batch(groups, self.cfg)
            row.update(batch.stats)
            t0 = time.perf_counter()
            row.update(self.update(batch))
            t_update = time.perf_counter() - t0
        else:
            row["skipped"] = "no group with reward spread"
        row["t_update"] = t_update
        row["tokens_per_s"] = row["tokens"] / max(time.perf_counter() - start, 1e-9)
        return row

    # ----- run ----------------------------------------------------------------------------------------------------
    def out_of_time(self) -> bool:
        """The budget is spent (decided together: true on every rank when true on one)."""
        late = self.max_minutes is not None and self.log.seconds > 60 * self.max_minutes
        return self.dist.sum([float(late)], torch.device(self.device))[0] > 0

    def run(self) -> dict:
        stopped, saved = None, self.step
        while self.step < self.cfg.steps:
            if self.out_of_time():
                stopped = "max_minutes"
                break
            row = self.train_step()
            self.step += 1
            self.log(**{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
            if self.step % self.cfg.save_every == 0:
                self.save_state()
                saved = self.step
        if saved != self.step or not (self.out / "state.pt").exists():
            self.save_state()
        return self.finish(stopped)

    def finish(self, stopped: str | None) -> dict:
        """Rank 0 writes the final policy, ``curves.png`` and ``summary.json``; returns the summary."""
        summary = summarise(self.log.rows, self.cfg, self.step, self.log.seconds)
        summary.update({"seed": self.seed, "init": str(self.init), "world_size": self.dist.world,
                        "device": torch.cuda.get_device_name(self.device) if self.cuda else "cpu",
                        "stopped_early": stopped})
        if self.dist.main:
            save_policy(self.policy, self.out, self.cfg.save_dtype)
            if self.log.rows:
                plot_curves(self.log.rows, CURVE_PANELS, self.out / "curves.png")
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1))
        return summary


#: Statistics of :meth:`Trainer.update` (means over the step's minibatches, weighted by loss tokens).
UPDATE_STATS = ("loss", "grad_norm", "clip_low", "clip_high", "ratio", "kl", "entropy1", "entropy2", "logprob_gap")
CURVE_PANELS = (Panel("reward", ("r1", "r1_coupled", "r2")), Panel("KL to the reference (k3)", ("kl",)),
                Panel("clipped token fraction", ("clip_low", "clip_high")),
                Panel("entropy", ("entropy1", "entropy2")))


def summarise(rows: Sequence[dict], cfg: HiGRPOConfig, steps: int, seconds: float) -> dict:
    """Config, steps and the reward means of the first and the last ``max(1, steps // 10)`` logged steps."""
    width = max(1, len(rows) // 10)
    keys = sorted({k for r in rows for k in r if k == "r1" or k == "r2" or k.startswith(("r1/", "r2/"))})

    def means(part: Sequence[dict]) -> dict[str, float]:
        return {k: float(np.mean([r[k] for r in part if k in r])) for k in keys if any(k in r for r in part)}

    return {"config": asdict(cfg), "steps": steps, "seconds": round(seconds, 1), "window": width,
            "first": means(rows[:width]), "final": means(rows[-width:])}


def save_policy(policy: ReferencePolicy, out: Path, dtype: str = "float32") -> None:
    """``policy.save_pretrained(out)`` with the model weights stored in ``dtype``."""
    model = copy.deepcopy(policy.model).to(device="cpu", dtype=SAVE_DTYPES[dtype])
    ReferencePolicy(model, policy.tokenizer, policy.vqvae.to("cpu"), policy.max_plan).save_pretrained(out)
    policy.vqvae.to(policy.device)


# ----- command line ------------------------------------------------------------------------------------------------
def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def smoke_init(out: Path, seed: int) -> Path:
    """The smoke run's starting policy in ``out / "init"`` (kept when it exists): ``pretrain.SMOKE`` (16 samples,
    tiny VQ-VAE and 1-layer 32-wide policy) with 200 policy steps, so that the policy draws object-like grids of
    its 16 training objects (about 20 s on a 2-core CPU)."""
    from reference_policy.pretrain import SMOKE as PRETRAIN_SMOKE
    from reference_policy.pretrain import pretrain

    folder = out / "init"
    if not (folder / "policy.json").exists():
        pretrain(folder, replace(PRETRAIN_SMOKE, steps=200, batch=4, lr=5e-3, warmup=20, log_every=50), seed=seed)
    return folder


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder (resumed when it holds state.pt)")
    ap.add_argument("--init", help=f"starting checkpoint and KL reference (default {CHECKPOINT}; with --smoke a "
                                   "tiny policy pretrained into OUT/init)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU task for CI (SMOKE)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, help="wall-clock budget of the run (resumed runs included)")
    for f in fields(HiGRPOConfig):
        kind = _parse_bool if f.type in ("bool", bool) else {"int": int, "float": float}.get(str(f.type), str)
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None,
                        help=f"default {f.default} ({SMOKE.__dict__[f.name]} with --smoke)")
    a = ap.parse_args(argv)
    if a.smoke:  # the tiny model gains nothing from intra-op threads, and they thrash on a busy machine
        torch.set_num_threads(1)
    base = SMOKE if a.smoke else HiGRPOConfig()
    cfg = replace(base, **{f.name: getattr(a, f.name) for f in fields(HiGRPOConfig)
                           if getattr(a, f.name) is not None})
    info, device = init_distributed(a.device)
    out = Path(a.out)
    try:
        if a.smoke and not a.init:
            if info.main:
                out.mkdir(parents=True, exist_ok=True)
                smoke_init(out, a.seed)
            if info.world > 1:
                dist.barrier()
            init = out / "init"
        else:
            init = Path(a.init) if a.init else CHECKPOINT
        summary = Trainer(out, cfg, init, device, a.seed, a.max_minutes, info).run()
        if info.main:
            print(json.dumps(summary, indent=1))
        return summary
    finally:
        if info.world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
