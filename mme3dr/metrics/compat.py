"""``ar3d-r1-compat``: what the released AR3D-R1 ``eval.py`` computes, for side-by-side comparison only.

These are not this toolkit's main numbers (DESIGN notes: the released script's "KD" is a similarity, not a
distance). Score them on renders of the ``ar3d-r1-compat`` preset, which renders generated meshes as eval.py does
(299x299, white background, pyrender's default material, one directional light of 3.0 along the view, culling on,
the reference camera poses).

- ``ar3d_compat_clip``: raw cosine (not x100) between OpenAI ViT-B/32 embeddings of each view and of the prompt's
  text before its first '.' (:func:`released_prompt_text`, eval.py's ``prompt.split('.')[0]``); mean over views.
  Higher is better.
- ``ar3d_compat_kd``: mean over all (reference view, generated view) pairs of the RBF kernel
  exp(-gamma ||f_r - f_g||^2), gamma = 1 / feature dimension (sklearn's ``rbf_kernel`` default: 1/768 for
  DINOv2-base), on DINOv2 CLS features with eval.py's preprocessing (``DinoV2Features(preprocessing=
  "ar3d-r1-eval")``: resize 224, then shortest edge 256 and centre crop 224). Reference views
  ``REF/<preset>-<hash>/<prompt_id>/NNN.png`` are read as eval.py reads the official RGBA renders: alpha dropped,
  so transparent pixels show their stored colour (black in Blender's and our transparent renders); generated
  views are composited on white. NaN or Inf is set to 0, as eval.py does (flagged in details). A similarity:
  higher = closer.
Not reproduced: eval.py passes the whole caption list as the prompt (we use the benchmark prompt), its CLIP
tokenizer fails on text over 77 tokens (ours truncates, with a warning), and it renders the generated GLB in the
frame it was saved in (we render the canonical frame). Its reference views are the authors' Blender renders of
the ground truth (transparent, textured); for parity, put such renders, or our ``canonical`` renders at the same
poses, under the reference folder: references built with the ``ar3d-r1-compat`` preset itself are opaque white
renders of the ground truth with the forced material (``details["reference_alpha"]`` says which was found).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mme3dr.errors import InputError
from mme3dr.metrics.base import HIGHER, MetricResult, PromptMetric, ScoreItem
from mme3dr.metrics.clip import ClipModel
from mme3dr.metrics.features import DinoV2Features
from mme3dr.paths import child_path

PREPROCESSING = "ar3d-r1-eval"


def released_prompt_text(prompt: str) -> str:
    """eval.py's CLIP text: the prompt up to its first '.' (not kept); the first 77 characters if that is blank."""
    text = prompt.split(".")[0]
    return text if text.strip() else prompt[:77]


def rbf_similarity(a: np.ndarray, b: np.ndarray, gamma: float | None = None) -> float:
    """Mean of exp(-gamma ||a_i - b_j||^2) over all pairs; gamma defaults to 1 / a.shape[1] (sklearn's default)."""
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite features give NaN; the caller handles it
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return float(np.exp(-gamma * np.maximum(d2, 0.0)).mean())


class Ar3dCompatClip(PromptMetric):
    """eval.py's CLIP: raw cosine with the prompt's text before the first '.', mean over views."""

    name = "ar3d_compat_clip"
    directions = {"ar3d_compat_clip": HIGHER}

    def __init__(self, clip: ClipModel | None = None) -> None:
        self.clip = clip or ClipModel()

    def config(self) -> dict[str, Any]:
        return {"weights": self.clip.weights_id, "scale": 1, "text": "prompt.split('.')[0]", "background": "white"}

    def score(self, item: ScoreItem) -> MetricResult:
        text = released_prompt_text(item.prompt)
        cos = self.clip.cosines(item.views(), text)
        return MetricResult(values={self.name: float(cos.mean())}, per_view={self.name: [float(c) for c in cos]},
                            details={"text": text})


class Ar3dCompatKD(PromptMetric):
    """eval.py's "KD": DINOv2 RBF similarity between the reference and generated views of one object."""

    name = "ar3d_compat_kd"
    directions = {"ar3d_compat_kd": HIGHER}

    def __init__(self, reference: Path, dinov2: DinoV2Features | None = None) -> None:
        self.reference = Path(reference)
        self.dinov2 = dinov2 or DinoV2Features(preprocessing=PREPROCESSING)
        if self.dinov2.preprocessing != PREPROCESSING:
            raise InputError(f"ar3d_compat_kd needs DinoV2Features(preprocessing={PREPROCESSING!r}), as eval.py "
                             f"preprocesses; got {self.dinov2.preprocessing!r}")

    def config(self) -> dict[str, Any]:
        return {"weights": self.dinov2.weights_id, "gamma": "1/dim", "reference": str(self.reference),
                "reference_views": "alpha dropped", "generated_views": "on white"}

    def score(self, item: ScoreItem) -> MetricResult:
        ref_dir = child_path(self.reference, item.prompt_id, what="prompt id")
        ref_views = sorted(ref_dir.glob("[0-9][0-9][0-9].png"))
        if not ref_views:
            raise FileNotFoundError(f"no reference renders for {item.prompt_id} in {ref_dir}; ar3d_compat_kd pairs "
                                    "each prompt with its ground-truth object rendered under the prompt id")
        images = [Image.open(p) for p in ref_views]
        has_alpha = any("A" in im.getbands() for im in images)
        ref = self.dinov2([im.convert("RGB") for im in images])
        gen = self.dinov2(item.views())
        value = rbf_similarity(ref, gen)
        finite = bool(np.isfinite(value))
        return MetricResult(values={self.name: value if finite else 0.0},
                            details={"non_finite_set_to_zero": not finite, "reference_alpha": has_alpha})
