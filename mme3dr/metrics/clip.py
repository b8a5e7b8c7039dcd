"""CLIP score with open_clip.

Per view v: ``clip_v = 100 * cos(E_img(v), E_txt(prompt))``, the cosine between the L2-normalised image and text
embeddings. Per prompt: ``clip`` = mean over views, ``clip_worst`` = min over views. Views are the renders
composited on white. Default backbone: OpenAI ViT-B/32 (as in the released evaluation code); any open_clip
model by name with a pretrained tag, a local checkpoint file, or ``$MME3DR_WEIGHTS/<model>-<tag>.(pt|bin|safetensors)``.
Prompts longer than the text context are truncated (with a warning and ``details["truncated"]``), never skipped.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mme3dr.defaults import DEFAULTS
from mme3dr.errors import InputError
from mme3dr.metrics.base import HIGHER, MetricResult, PromptMetric, ScoreItem
from mme3dr.weights import (MissingWeightsError, UnsafeWeightsError, local_candidates, missing_message,
                            refusing_code, resolve_local)


@contextmanager
def _library_logs_silenced():
    """Drop log records up to ERROR while a library loads weights: a failure reaches the user once, as the
    :class:`MissingWeightsError` text, not also as the library's own ``ERROR:root`` and retry lines."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _local_checkpoint(model: str, pretrained: str, weights: str | Path | None) -> Path | None:
    """``weights`` (must exist), a file path given as ``pretrained``, or ``$MME3DR_WEIGHTS/<model>-<tag>[.ext]``."""
    if weights is not None:
        return resolve_local(model, weights)
    if Path(pretrained).is_file():
        return Path(pretrained)
    for cand in local_candidates(f"{model}-{pretrained}"):
        for path in (cand, *(cand.with_name(cand.name + ext) for ext in (".pt", ".bin", ".safetensors"))):
            if path.is_file():
                return path
    return None


class ClipModel:
    """An open_clip model, its image transform and tokenizer, loaded once."""

    def __init__(self, model: str = DEFAULTS.clip_model, pretrained: str = DEFAULTS.clip_pretrained,
                 weights: str | Path | None = None, device: str | None = None,
                 batch_size: int = DEFAULTS.batch_size) -> None:
        import open_clip

        self.model_name, self.device, self.batch_size = model, device or default_device(), batch_size
        if model not in open_clip.list_models() and not model.startswith("hf-hub:"):
            raise InputError(f"open_clip has no model {model!r}; see open_clip.list_models()")
        local = _local_checkpoint(model, pretrained, weights)
        self.pretrained = str(local) if local is not None else pretrained
        try:
            # open_clip logs its own ERROR line before raising; ours says more. weights_only: tensors, never code.
            with _library_logs_silenced(), refusing_code(f"CLIP weights {self.pretrained}"):
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    model, pretrained=self.pretrained, device=self.device, weights_only=True)
        except UnsafeWeightsError:
            raise
        except Exception as exc:  # offline download, missing or incompatible checkpoint
            raise MissingWeightsError(missing_message("CLIP", f"{model}/{pretrained}", f"{model}-{pretrained}.pt",
                                                      exc, "--clip-weights")) from exc
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        self.context_length = getattr(self.tokenizer, "context_length", 77)

    @property
    def weights_id(self) -> str:
        return f"{self.model_name}/{self.pretrained}"

    def truncated(self, text: str) -> bool:
        """True when ``text`` (plus start/end tokens) exceeds the text context and will be cut."""
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None:
            return False
        return len(encode(text)) + 2 > self.context_length

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, float64 (n, d)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        emb = self.model.encode_text(tokens).float()
        return torch.nn.functional.normalize(emb, dim=-1).double().cpu().numpy()

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings, float64 (n, d), in batches of ``batch_size``."""
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[i:i + self.batch_size]]).to(self.device)
            emb = self.model.encode_image(batch).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).double().cpu().numpy())
        return np.concatenate(out)

    def cosines(self, images: Sequence[Image.Image], text: str) -> np.ndarray:
        """cos(E_img(v), E_txt(text)) per image."""
        if self.truncated(text):
            warnings.warn(f"prompt longer than CLIP's {self.context_length}-token context; truncated: {text[:60]}...",
                          stacklevel=2)
        return self.embed_images(images) @ self.embed_text([text])[0]


class ClipScore(PromptMetric):
    """CLIP score: 100 x cosine(image, prompt) per view; mean and worst view per prompt."""

    name = "clip"
    needs = "renders"
    directions = {"clip": HIGHER, "clip_worst": HIGHER}

    def __init__(self, model: str = DEFAULTS.clip_model, pretrained: str = DEFAULTS.clip_pretrained,
                 weights: str | Path | None = None, device: str | None = None,
                 batch_size: int = DEFAULTS.batch_size, clip: ClipModel | None = None) -> None:
        self.clip = clip or ClipModel(model, pretrained, weights, device, batch_size)

    def config(self) -> dict[str, Any]:
        return {"weights": self.clip.weights_id, "scale": 100, "text": "prompt", "background": "white"}

    def score(self, item: ScoreItem) -> MetricResult:
        per_view = 100.0 * self.clip.cosines(item.views(), item.prompt)
        return MetricResult(values={"clip": float(per_view.mean()), "clip_worst": float(per_view.min())},
                            per_view={"clip": [float(v) for v in per_view]},
                            details={"truncated": self.clip.truncated(item.prompt), "n_views": len(per_view)})
