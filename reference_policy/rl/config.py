"""Settings of a Hi-GRPO run (:class:`HiGRPOConfig`); option names as TRL's ``GRPOConfig`` and verl where they have
one (the mapping is in :mod:`reference_policy.rl.algos`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from reference_policy.rl import algos
from reference_policy.rl.rewards import STEP1_WEIGHTS, STEP2_WEIGHTS, RewardConfig

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
    #: AdamW's first steps move every weight by about ``lr`` whatever its gradient's size; on this 6.3 M-parameter
    #: policy one RL step (4 AdamW steps) at 1e-5 already moves a sampled token's log-prob by up to 4.6 nats
    #: (mean 0.03), at 3e-5 by 14 (model card: "Learning rate"), hence rates as low as LLM RL uses.
    learning_rate: float = 3e-6
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = True
    #: Rollout temperature: the evaluation's (``reference_policy.evaluate.TEMPERATURE``), so that RL improves the
    #: distribution that is used (log-probs are those of ``logits / temperature``, so the ratio stays exact).
    temperature: float = 0.7
    top_k: int = 0
    rollout_batch_size: int = 128
    steps: int = 200
    save_every: int = 20
    prompt_pool: int = 0
    save_dtype: str = "float32"
    #: Gate the reward components by the object's shape (:class:`~reference_policy.rl.rewards.RewardConfig`); off,
    #: every component counts alone (denser, but gameable by degenerate objects: the CI smoke task only).
    reward_gate: bool = True
    #: Reward weights of step 1 and step 2 as ``"component=weight,..."`` (empty: the defaults of
    #: :mod:`reference_policy.rl.rewards`, ``STEP1_WEIGHTS`` / ``STEP2_WEIGHTS``).
    reward_weights_step1: str = ""
    reward_weights_step2: str = ""

    def reward_config(self) -> RewardConfig:
        """The :class:`~reference_policy.rl.rewards.RewardConfig` of these options."""
        def weights(text: str, default: Mapping[str, float]) -> dict[str, float]:
            if not text.strip():
                return dict(default)
            pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError(f"HiGRPOConfig: reward weights {text!r} must look like 'component=weight,...'")
            return {k.strip(): float(v) for k, v in pairs}

        return RewardConfig(weights(self.reward_weights_step1, STEP1_WEIGHTS),
                            weights(self.reward_weights_step2, STEP2_WEIGHTS), self.reward_gate)

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
#: :func:`smoke_init`, and rewards it can learn in 12 steps (the object's volume and extent, ungated: a policy
#: pretrained for seconds on 16 samples cannot yet draw the layouts that the full ensemble's gate asks for); its
#: step-2 reward rises within the 12 steps (tested).
SMOKE = HiGRPOConfig(prompts_per_step=2, num_generations=8, prompt_pool=2, learning_rate=3e-3, temperature=1.0,
                     steps=12, save_every=4, num_minibatches=1, rollout_batch_size=64, reward_gate=False,
                     reward_weights_step1="volume=0.5,extent=0.5",
                     reward_weights_step2="volume=0.5,extent=0.5")
#: Config fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = frozenset({"steps", "save_every", "rollout_batch_size"})
