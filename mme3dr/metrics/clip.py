"""CLIP score with open_clip.

Per view v: ``clip_v = 100 * cos(E_img(v), E_txt(prompt))``, the cosine between the L2-normalised image and text
embeddings. Per prompt: ``clip`` = mean over views, ``clip_worst`` = min over views. Views are the renders
composited on white. Default backbone: OpenAI ViT-B/32 (as in the released evaluation code); any open_clip
model by name with a pretrained tag, a local checkpoint file, or ``$MME3DR_WEIGHTS/<model>-<tag>.(pt|bin|safetensors)``.
Prompts longer than the text context are truncated (with a warning and ``details["truncated"]``), never skipped.

Views are embedded through the image pass (:mod:`mme3dr.metrics.image_pass`: each view decoded once, batches that
span prompts), for one item (:meth:`ClipScore.score`) as for a whole run (:func:`mme3dr.scoring.score_run`). When
the model's transform is open_clip's ``Resize(S, bicubic) + CenterCrop(S) + RGB + ToTensor + Normalize`` (ViT-B/32:
S = 224) and the view is square, that transform is the PIL bicubic resize to S x S shared with the other image
models, then /255 and the mean/std on the device: the same values as the transform itself. Any other transform, or a
non-square view, goes through the model's own transform image by image.
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
from mme3dr.metrics.features import default_device, normalise
from mme3dr.metrics.views import ViewPixels, prepare
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


def square_resize(transform: Any) -> tuple[int, tuple[float, ...], tuple[float, ...]] | None:
    """``(S, mean, std)`` when ``transform`` is exactly Resize(S, bicubic) + CenterCrop(S) + convert to RGB +
    ToTensor + Normalize(mean, std) (open_clip's image transform for a square-input model), else None."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) != 5:
        return None
    resize, crop, rgb, to_tensor, norm = steps
    size = resize.size if isinstance(resize, T.Resize) else None
    size = size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size
    ok = (isinstance(size, int) and resize.interpolation == T.InterpolationMode.BICUBIC and resize.max_size is None
          and isinstance(crop, T.CenterCrop) and tuple(crop.size) == (size, size)
          and (getattr(rgb, "mode", None) == "RGB" or getattr(rgb, "__name__", "") == "_convert_to_rgb")
          and type(to_tensor).__name__ in ("ToTensor", "MaybeToTensor") and isinstance(norm, T.Normalize))
    return (size, tuple(norm.mean), tuple(norm.std)) if ok else None


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
        self._square = square_resize(self.preprocess)
        #: The shared resize the fast path reads (empty: the model's own transform, image by image).
        self.sizes: tuple[int, ...] = (self._square[0],) if self._square else ()
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

    def warn_if_truncated(self, text: str) -> bool:
        truncated = self.truncated(text)
        if truncated:
            warnings.warn(f"prompt longer than CLIP's {self.context_length}-token context; truncated: {text[:60]}...",
                          stacklevel=3)
        return truncated

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, float64 (n, d), in batches of ``batch_size``."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i:i + self.batch_size])).to(self.device)
            emb = self.model.encode_text(tokens).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).double().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def embed(self, views: Sequence[ViewPixels]) -> np.ndarray:
        """L2-normalised image embeddings of prepared views, float32 (n, d), in batches of ``batch_size`` (see the
        module docstring for the shared-resize path)."""
        out = []
        for i in range(0, len(views), self.batch_size):
            chunk = views[i:i + self.batch_size]
            if self._square and all(v.square for v in chunk):
                size, mean, std = self._square
                x = normalise(torch.stack([v.resized[size] for v in chunk]).to(self.device), mean, std)
            else:
                x = torch.stack([self.preprocess(v.image()) for v in chunk]).to(self.device)
            emb = self.model.encode_image(x).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings of PIL images, float64 (n, d): :meth:`embed` of the prepared images."""
        return self.embed([prepare(im, self.sizes) for im in images]).astype(np.float64)

    def cosines(self, images: Sequence[Image.Image], text: str) -> np.ndarray:
        """cos(E_img(v), E_txt(text)) per image."""
        self.warn_if_truncated(text)
        return self.embed_images(images) @ self.embed_text([text])[0]


class ClipScore(PromptMetric):
    """CLIP score: 100 x cosine(image, prompt) per view; mean and worst view per prompt."""

    name = "clip"
    needs = "renders"
    in_image_pass = True
    directions = {"clip": HIGHER, "clip_worst": HIGHER}

    def __init__(self, model: str = DEFAULTS.clip_model, pretrained: str = DEFAULTS.clip_pretrained,
                 weights: str | Path | None = None, device: str | None = None,
                 batch_size: int = DEFAULTS.batch_size, clip: ClipModel | None = None,
                 workers: int = DEFAULTS.decode_workers) -> None:
        self.clip = clip or ClipModel(model, pretrained, weights, device, batch_size)
        self.workers = workers

    def config(self) -> dict[str, Any]:
        return {"weights": self.clip.weights_id, "scale": 100, "text": "prompt", "background": "white"}

    def result(self, item: ScoreItem, image_emb: np.ndarray, text_emb: np.ndarray) -> MetricResult:
        """The record of ``item`` from its views' embeddings (float32, :meth:`ClipModel.embed`) and its prompt's
        (float64, :meth:`ClipModel.embed_text`): per view 100 x their dot product (both are unit vectors)."""
        per_view = 100.0 * (image_emb.astype(np.float64) @ text_emb)
        return MetricResult(values={"clip": float(per_view.mean()), "clip_worst": float(per_view.min())},
                            per_view={"clip": [float(v) for v in per_view]},
                            details={"truncated": self.clip.warn_if_truncated(item.prompt), "n_views": len(per_view)})

    def scored(self, items: Sequence[ScoreItem]) -> list[MetricResult | Exception]:
        """Each item's result, or the exception that stopped it, through one image pass over all their views."""
        from mme3dr.metrics.image_pass import ViewJob, run_image_pass

        jobs = []
        for item in items:
            try:
                jobs.append(ViewJob(tuple(item.view_paths()), (self.name,)))
            except ValueError as exc:  # not rendered, or no views
                jobs.append(ViewJob((), (self.name,), exc))
        texts = self.clip.embed_text([item.prompt for item in items]) if items else None
        return [r.error or r.failed.get(self.name) or self.result(items[r.index], r.embeddings[self.name],
                                                                  texts[r.index])
                for r in run_image_pass(jobs, {self.name: self.clip}, self.clip.batch_size, self.workers)]

    def score(self, item: ScoreItem) -> MetricResult:
        [out] = self.scored([item])
        if isinstance(out, Exception):
            raise out
        return out

    def score_many(self, items: Sequence[ScoreItem]) -> list[MetricResult]:
        return [MetricResult.failed(r) if isinstance(r, Exception) else r for r in self.scored(items)]
