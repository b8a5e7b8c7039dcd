"""Hi-GRPO reinforcement learning for the reference policy: pure loss/advantage functions (:mod:`.algos`), the
reward ensemble (:mod:`.rewards`) and the trainer (:mod:`.train`)."""
