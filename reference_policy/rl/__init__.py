"""Hi-GRPO reinforcement learning for the reference policy: pure loss/advantage functions (:mod:`.algos`), the
reward ensemble (:mod:`.rewards`), the run settings (:mod:`.config`), rollouts (:mod:`.rollout`), the update batch
(:mod:`.batch`) and the trainer (:mod:`.train`)."""
