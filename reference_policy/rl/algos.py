"""Hi-GRPO advantages and losses: pure tensor functions (no model, no I/O).

Shapes: rewards of a step are ``[n_groups, G]`` (a group is the set of samples whose rewards are compared);
per-token tensors are ``[B, T]`` (B sequences right-padded to T tokens) with a boolean ``mask`` that is True on the
tokens that carry loss: sampled tokens of the segment, not padding and not forced grammar tokens (those have
log-prob 0 under every policy, so their ratio is 1 and their KL 0; leaving them in would only change the
denominators of the aggregation).

Hi-GRPO (arXiv 2512.10949) in these terms, for P prompts with G step-1 samples each and C >= 1 step-2 children per
step-1 sample (the paper has C = 1):

- step-1 reward ``R1'[p, g] = R1[p, g] + lambda * mean_c R2[p, g, c]`` (:func:`coupled_step1_rewards`);
- step-1 groups: the G samples of a prompt; step-2 groups (:func:`step2_groups`): with C = 1 the G children of a
  prompt (each has a different parent, as in the paper, where the G step-2 samples of a prompt are compared);
  with C > 1 the C children of one parent, so a step-2 advantage compares refinements of the same plan and
  coarse shape instead of mixing in the parent's quality (which the step-1 advantage already credits);
- advantages per step within its groups (:func:`group_advantages`);
- loss per step: PPO-clip with a decoupled range (:func:`ppo_clip_loss`) plus ``beta`` times the k3 KL to the
  reference policy (:func:`kl_k3`), aggregated over the step's tokens (:func:`aggregate`); total ``L1 + L2``.

Option names follow TRL's ``GRPOConfig`` and verl where they have one:

=============================  ===========================================  ======================================
here                           TRL ``GRPOConfig``                           verl
=============================  ===========================================  ======================================
``epsilon`` (0.2)              ``epsilon``                                  ``clip_ratio_low``
``epsilon_high`` (0.28)        ``epsilon_high``                             ``clip_ratio_high``
``beta`` (0.01)                ``beta``                                     ``kl_loss_coef`` (``kl_loss_type=low_var_kl`` = k3)
``loss_agg_mode``              ``loss_type``: ``dapo`` = token-mean,        ``loss_agg_mode`` (same three values)
                               ``grpo`` = seq-mean-token-mean
``importance_sampling_level``  ``importance_sampling_level``                (GSPO: ``policy_loss.loss_mode=gspo``)
``scale_rewards``              ``scale_rewards`` (``group``/``batch``/      ``norm_adv_by_std_in_grpo`` (group or
                               ``none``)                                    none)
``num_generations`` (G)        ``num_generations``                          ``rollout.n``
dynamic sampling               (none)                                       ``algorithm.filter_groups``
=============================  ===========================================  ======================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
ScaleRewards = Literal["group", "batch", "none"]
ImportanceSamplingLevel = Literal["token", "sequence"]
LOSS_AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")
IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = ("token", "sequence")
#: Added to the standard deviation before dividing (the paper's 1e-4).
ADV_EPS = 1e-4


def _check(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


# ----- advantages ------------------------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, scale_rewards: ScaleRewards = "group", eps: float = ADV_EPS
                     ) -> torch.Tensor:
    """Advantages of rewards ``[n_groups, G]``: ``A[k, i] = (R[k, i] - mean_i R[k]) / (s + eps)`` with

    - ``scale_rewards="group"``: ``s = std_i R[k]``, the population standard deviation over the G samples of the
      group (``sqrt(mean_i (R[k, i] - mean R[k])^2)``, the paper);
    - ``"batch"``: ``s`` = the population standard deviation of all rewards of the batch;
    - ``"none"``: no division, ``A = R - mean`` (Dr. GRPO).

    A group whose rewards are all equal gets exactly 0 (the float mean of equal values can be off in the last bit,
    which the division by ``std + eps = 1e-4`` would turn into a spurious advantage).
    """
    _check(scale_rewards, SCALE_REWARDS, "scale_rewards")
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [n_groups, G], got shape {tuple(rewards.shape)}")
    flat = (rewards == rewards[:, :1]).all(-1, keepdim=True)
    centred = (rewards - rewards.mean(-1, keepdim=True)).masked_fill(flat, 0.0)
    if scale_rewards == "none":
        return centred
    std = rewards.std(-1, correction=0, keepdim=True) if scale_rewards == "group" else rewards.std(correction=0)
    return centred / (std + eps)


def coupled_step1_rewards(r1: torch.Tensor, r2: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Hi-GRPO step-1 reward ``R1'[p, g] = R1[p, g] + lam * mean_c R2[p, g, c]`` for ``r1 [P, G]`` and the rewards
    of each step-1 sample's children ``r2 [P, G, C]``."""
    if r2.ndim != 3 or r2.shape[:2] != r1.shape:
        raise ValueError(f"r2 must be [P, G, C] with [P, G] = r1's shape {tuple(r1.shape)}; got {tuple(r2.shape)}")
    return r1 + lam * r2.mean(-1)


def step2_groups(r2: torch.Tensor) -> torch.Tensor:
    """The step-2 groups of ``r2 [P, G, C]``: ``[P, G]`` (a prompt's G children) when ``C == 1``, else
    ``[P * G, C]`` (the children of one parent); see the module docstring."""
    p, g, c = r2.shape
    return r2.reshape(p, g) if c == 1 else r2.reshape(p * g, c)


def hi_grpo_advantages(r1: torch.Tensor, r2: torch.Tensor, lam: float = 1.0, scale_rewards: ScaleRewards = "group",
                       eps: float = ADV_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step advantages ``(A1 [P, G], A2 [P, G, C])``: :func:`group_advantages` of
    :func:`coupled_step1_rewards` over each prompt's G samples and of ``r2`` in its :func:`step2_groups`."""
    a1 = group_advantages(coupled_step1_rewards(r1, r2, lam), scale_rewards, eps)
    a2 = group_advantages(step2_groups(r2), scale_rewards, eps).reshape(r2.shape)
    return a1, a2


def groups_with_spread(rewards: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Dynamic sampling (DAPO): ``bool[n_groups]``, True where ``max_i R[k, i] - min_i R[k, i] > tol``. A group
    whose rewards are all equal has zero advantage and only dilutes the batch; it is dropped."""
    return (rewards.amax(-1) - rewards.amin(-1)) > tol


# ----- per-token terms -------------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(x * mask) / max(sum(mask), 1)``."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                     level: ImportanceSamplingLevel = "token") -> torch.Tensor:
    """Importance ratio ``[B, T]`` of the current policy to the behaviour (old) policy.

    - ``"token"``: ``r[i, t] = exp(logp[i, t] - old_logp[i, t])``;
    - ``"sequence"`` (GSPO): ``s[i] = exp(sum_t m[i, t] (logp - old_logp)[i, t] / sum_t m[i, t])``, the geometric
      mean of the token ratios over the sequence's loss tokens, broadcast to every token of the row (a row
      without loss tokens gets 1).
    """
    _check(level, IMPORTANCE_SAMPLING_LEVELS, "importance_sampling_level")
    log_ratio = (logp - old_logp) * mask
    if level == "sequence":
        count = mask.sum(-1, keepdim=True).clamp(min=1)
        log_ratio = (log_ratio.sum(-1, keepdim=True) / count).expand_as(logp)
    return torch.exp(log_ratio)


@dataclass
class ClippedLoss:
    """:func:`ppo_clip_loss`: per-token ``loss [B, T]``; ``clipped_low`` / ``clipped_high``: bool ``[B, T]``, the
    tokens whose gradient the clip removes (ratio below ``1 - epsilon`` with a negative advantage / above
    ``1 + epsilon_high`` with a positive one)."""

    loss: torch.Tensor
    clipped_low: torch.Tensor
    clipped_high: torch.Tensor


def ppo_clip_loss(ratio: torch.Tensor, advantages: torch.Tensor, epsilon: float = 0.2,
                  epsilon_high: float | None = 0.28) -> ClippedLoss:
    """PPO-clip with a decoupled range (DAPO "clip-higher"):
    ``loss[i, t] = -min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A)`` with ``A = advantages[i]`` (``[B]``,
    broadcast over tokens) or ``advantages[i, t]`` (``[B, T]``). ``epsilon_high=None`` is the symmetric clip
    (``epsilon_high = epsilon``). Where the clipped term is the minimum, the loss is constant in ``r`` and the
    token gets no gradient."""
    eps_high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages[:, None] if advantages.ndim == 1 else advantages
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - epsilon, 1 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    return ClippedLoss(loss, (ratio < 1 - epsilon) & (adv < 0), (ratio > 1 + eps_high) & (adv > 0))


#: Upper bound of the per-token k3 value (verl's ``low_var_kl`` clamps it to [-10, 10] the same way).
KL_CLAMP = 10.0


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = KL_CLAMP) -> torch.Tensor:
    """k3 estimator of ``KL(pi || pi_ref)`` per token: with ``d = ref_logp - logp``,
    ``k3 = min(exp(d) - d - 1, clamp) = min(pi_ref/pi - log(pi_ref/pi) - 1, clamp)`` (>= 0, 0 exactly when the
    log-probs are equal). The clamp bounds a token whose probability fell far below the reference's: ``exp(d)``
    would otherwise reach 1e7 and its gradient would swamp the batch (seen at a learning rate of 1e-4)."""
    d = ref_logp - logp
    return (torch.exp(d) - d - 1).clamp(max=clamp)


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: LossAggMode = "token-mean",
              n_tokens: float | torch.Tensor | None = None, n_seqs: float | torch.Tensor | None = None
              ) -> torch.Tensor:
    """Scalar loss from per-token ``loss [B, T]`` over the tokens of ``mask`` (``m``):

    - ``"token-mean"`` (DAPO): ``sum_{i,t} m l / N_tok``;
    - ``"seq-mean-token-mean"`` (GRPO): ``sum_i [sum_t m l / sum_t m] / N_seq``;
    - ``"seq-mean-token-sum"``: ``sum_i sum_t m l / N_seq``;

    ``N_tok`` = ``n_tokens`` or ``sum m``; ``N_seq`` = ``n_seqs`` or the number of rows with at least one token.
    Passing the counts of a larger batch (all minibatch rows on all ranks) makes the sum of the parts' losses the
    loss of the whole. Rows without tokens contribute nothing."""
    _check(mode, LOSS_AGG_MODES, "loss_agg_mode")
    m = mask.to(loss.dtype)
    per_row = (loss * m).sum(-1)
    if mode == "token-mean":
        return per_row.sum() / (m.sum().clamp(min=1) if n_tokens is None else n_tokens)
    counts = m.sum(-1)
    if mode == "seq-mean-token-mean":
        per_row = per_row / counts.clamp(min=1)
    return per_row.sum() / ((counts > 0).sum().clamp(min=1) if n_seqs is None else n_seqs)


@dataclass
class PolicyLoss:
    """:func:`policy_loss`: the aggregated ``loss`` (with gradient) and detached statistics over the loss tokens:
    ``clip_low`` / ``clip_high`` (fractions of tokens clipped, see :class:`ClippedLoss`), ``kl`` (mean k3, 0 when
    no reference log-probs were given), ``ratio_mean``."""

    loss: torch.Tensor
    clip_low: float
    clip_high: float
    kl: float
    ratio_mean: float


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                epsilon: float = 0.2, epsilon_high: float | None = 0.28,
                importance_sampling_level: ImportanceSamplingLevel = "token",
                loss_agg_mode: LossAggMode = "token-mean", ref_logp: torch.Tensor | None = None, beta: float = 0.0,
                n_tokens: float | torch.Tensor | None = None, n_seqs: float | torch.Tensor | None = None
                ) -> PolicyLoss:
    """The loss of one step: ``aggregate(ppo_clip_loss(importance_ratio(...)) + beta * kl_k3(logp, ref_logp))``
    over ``mask`` (the KL term only when ``beta > 0``, and then ``ref_logp`` is required)."""
    mask = mask.bool()
    ratio = importance_ratio(logp, old_logp, mask, importance_sampling_level)
    clipped = ppo_clip_loss(ratio, advantages, epsilon, epsilon_high)
    per_token = clipped.loss
    kl = torch.zeros(())
    if ref_logp is not None:
        kl_tok = kl_k3(logp, ref_logp)
        kl = masked_mean(kl_tok.detach(), mask)
        if beta > 0:
            per_token = per_token + beta * kl_tok
    elif beta > 0:
        raise ValueError("beta > 0 needs ref_logp (the reference policy's log-probs)")
    loss = aggregate(per_token, mask, loss_agg_mode, n_tokens, n_seqs)
    return PolicyLoss(loss, float(masked_mean(clipped.clipped_low.float(), mask)),
                      float(masked_mean(clipped.clipped_high.float(), mask)), float(kl),
                      float(masked_mean(ratio.detach(), mask)))


def entropy_from_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """Entropy ``-sum_v p_v log p_v`` over the last axis of log-probabilities (``-inf`` entries, tokens the
    grammar forbids, contribute 0)."""
    return torch.special.entr(logp.exp()).sum(-1)
