"""``ar3d-r1-compat``: what the released AR3D-R1 ``eval.py`` computes, for side-by-side comparison only.

These are not this toolkit's main numbers (DESIGN notes: the released script's "KD" is a similarity, not a
distance). Use them with renders of the ``ar3d-r1-compat`` preset (299x299, white background, clay, culling on,
the reference camera poses) to put the released script's numbers beside ours.

- ``ar3d_compat_clip``: raw cosine (not x100) between OpenAI ViT-B/32 embeddings of each view and of the prompt's
  first sentence; mean over views. Higher is better.
- ``ar3d_compat_kd``: mean over all (reference view, generated view) pairs of the RBF kernel
  exp(-gamma ||f_r - f_g||^2), gamma = 1/768, on DINOv2-base CLS features of the object's reference renders
  (``REF/<preset>-<hash>/<prompt_id>/``) and its generated renders; NaN is set to 0 as eval.py does (flagged in
  details). A similarity: higher = closer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mme3dr.metrics.base import HIGHER, MetricResult, PromptMetric, ScoreItem, composite
from mme3dr.metrics.clip import ClipModel
from mme3dr.metrics.features import DinoV2Features

RBF_GAMMA = 1.0 / 768.0


def first_sentence(text: str) -> str:
    """The text up to and including the first sentence end (. ! ?) followed by a space or the end."""
    return re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]


def rbf_similarity(a: np.ndarray, b: np.ndarray, gamma: float = RBF_GAMMA) -> float:
    """Mean of exp(-gamma * ||a_i - b_j||^2) over all pairs (sklearn's rbf_kernel, then the mean)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return float(np.exp(-gamma * np.maximum(d2, 0.0)).mean())


class Ar3dCompatClip(PromptMetric):
    """eval.py's CLIP: raw cosine with the prompt's first sentence, mean over views."""

    name = "ar3d_compat_clip"
    directions = {"ar3d_compat_clip": HIGHER}

    def __init__(self, clip: ClipModel | None = None) -> None:
        self.clip = clip or ClipModel()

    def config(self) -> dict[str, Any]:
        return {"weights": self.clip.weights_id, "scale": 1, "text": "first sentence", "background": "white"}

    def score(self, item: ScoreItem) -> MetricResult:
        text = first_sentence(item.prompt)
        cos = self.clip.cosines(item.views(), text)
        return MetricResult(values={self.name: float(cos.mean())}, per_view={self.name: [float(c) for c in cos]},
                            details={"text": text})


class Ar3dCompatKD(PromptMetric):
    """eval.py's "KD": DINOv2 RBF similarity between the reference and generated views of one object."""

    name = "ar3d_compat_kd"
    directions = {"ar3d_compat_kd": HIGHER}

    def __init__(self, reference: Path, dinov2: DinoV2Features | None = None) -> None:
        self.reference = Path(reference)
        self.dinov2 = dinov2 or DinoV2Features()

    def config(self) -> dict[str, Any]:
        return {"weights": self.dinov2.weights_id, "gamma": RBF_GAMMA, "reference": str(self.reference)}

    def score(self, item: ScoreItem) -> MetricResult:
        ref_dir = self.reference / item.prompt_id
        ref_views = sorted(ref_dir.glob("[0-9][0-9][0-9].png"))
        if not ref_views:
            raise FileNotFoundError(f"no reference renders for {item.prompt_id} in {ref_dir}; ar3d_compat_kd pairs "
                                    "each prompt with its ground-truth object rendered under the prompt id")
        ref = self.dinov2([composite(Image.open(p)) for p in ref_views])
        gen = self.dinov2(item.views())
        value = rbf_similarity(ref, gen)
        is_nan = bool(np.isnan(value))
        return MetricResult(values={self.name: 0.0 if is_nan else value}, details={"nan_set_to_zero": is_nan})
