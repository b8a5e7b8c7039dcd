"""The two checkpoints committed with the package, by name.

- ``hi-grpo`` (the default of ``--model reference``): the SFT checkpoint after Hi-GRPO (``python -m
  reference_policy.rl.train``; model card ``data_cards/reference_policy.md``), stored in bfloat16;
- ``sft``: the supervised checkpoint (``python -m reference_policy.pretrain``), the RL starting point and its KL
  reference, stored in float32.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent / "checkpoints"
#: name -> folder of every bundled checkpoint
CHECKPOINTS: dict[str, Path] = {"hi-grpo": ROOT / "hi-grpo", "sft": ROOT / "sft"}
#: what ``--model reference`` loads without ``checkpoint=``
DEFAULT = "hi-grpo"
#: the RL starting point and KL reference
SFT = CHECKPOINTS["sft"]


def resolve(checkpoint: str | Path | None) -> Path:
    """The folder of ``checkpoint``: a bundled name (:data:`CHECKPOINTS`), a folder path, or ``None`` for
    :data:`DEFAULT`."""
    if checkpoint is None or str(checkpoint) == "":
        return CHECKPOINTS[DEFAULT]
    if str(checkpoint) in CHECKPOINTS:
        return CHECKPOINTS[str(checkpoint)]
    return Path(checkpoint).expanduser()
