"""From rollout groups to the tensors of the update: advantages per step laid out per row and token, loss masks,
and the dynamic-sampling test of a group (steps 3 and 4 of :mod:`reference_policy.rl.train`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from reference_policy.rl import algos
from reference_policy.rl.config import HiGRPOConfig
from reference_policy.rl.rollout import Group


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
