"""The metric interface: what a per-prompt metric receives and returns.

A per-prompt metric gets a :class:`ScoreItem` (the prompt, its checklist, the generated asset and the folder of
its renders) and returns a :class:`MetricResult`: named numbers (each with a direction in the metric's
``directions``), optional per-view values, free-form details (e.g. a VLM's raw answer) and an error message when
the item could not be scored. Set-level metrics (KID, FID) live in :mod:`mme3dr.metrics.fidelity`.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from mme3dr.data import ChecklistItem

HIGHER, LOWER, NONE = "higher", "lower", "none"  # NONE: reported, neither direction is better


@dataclass(frozen=True)
class ScoreItem:
    """One generated asset to score, with its prompt and renders."""

    prompt_id: str
    category: str
    prompt: str
    checklist: tuple[ChecklistItem, ...] = ()
    asset_path: Path | None = None  # the generated mesh file
    up_axis: str = "+z"  # declared up axis of asset_path
    render_dir: Path | None = None  # folder with 000.png, 001.png, ... of one render preset

    def view_paths(self) -> list[Path]:
        if self.render_dir is None:
            raise ValueError(f"{self.prompt_id}: no renders; run `mme3dr render RUN` first")
        paths = sorted(p for p in Path(self.render_dir).glob("[0-9][0-9][0-9].png"))
        if not paths:
            raise ValueError(f"{self.prompt_id}: no NNN.png views in {self.render_dir}")
        return paths

    def views(self, background: tuple[int, int, int] = (255, 255, 255)) -> list[Image.Image]:
        """The rendered views as RGB images, transparent pixels composited on ``background``."""
        return [composite(Image.open(p), background) for p in self.view_paths()]


def composite(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB image: an RGBA image alpha-composited over a solid background (RGB images are returned as RGB)."""
    if img.mode != "RGBA":
        return img.convert("RGB")
    canvas = Image.new("RGB", img.size, background)
    canvas.paste(img, mask=img.split()[3])
    return canvas


def describe(exc: BaseException) -> str:
    """An item's error text: the exception's type and message."""
    return f"{type(exc).__name__}: {exc}"


@dataclass
class MetricResult:
    """What a metric says about one item. ``values`` are the numbers reported in tables."""

    values: dict[str, float | None] = field(default_factory=dict)
    per_view: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def failed(cls, exc: BaseException) -> MetricResult:
        """The record of an item whose scoring raised ``exc``: ``"ExceptionType: message"``."""
        return cls(error=describe(exc))


class PromptMetric(ABC):
    """A metric computed per prompt. Subclasses set the class variables and implement :meth:`score`."""

    #: Registry name, e.g. "clip".
    name: ClassVar[str]
    #: What the metric reads: "renders" (ScoreItem.views) or "asset" (ScoreItem.asset_path).
    needs: ClassVar[str] = "renders"
    #: For each key of MetricResult.values: "higher" or "lower" is better.
    directions: ClassVar[dict[str, str]] = {}
    #: True for pure CPU work with no model (e.g. geometry): the scoring stage may score items in worker processes
    #: (:func:`mme3dr.scoring.score_run`, ``workers``), so the metric object must pickle and score the same there.
    in_processes: ClassVar[bool] = False
    #: True for a metric scored from model embeddings of its views in the scoring stage's shared image pass
    #: (:func:`mme3dr.scoring.score_images`): it has ``clip`` (the model, :class:`~mme3dr.metrics.clip.ClipModel`)
    #: and ``result(item, image_embeddings, text_embedding)``, like :class:`~mme3dr.metrics.clip.ClipScore`.
    in_image_pass: ClassVar[bool] = False
    #: Items per :meth:`score_many` call in the scoring stage (:func:`mme3dr.scoring.score_run`); a metric that
    #: batches across items (the VLM judge) sets more.
    batch_items: int = 1

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that changes the numbers (model ids, weights, parameters); hashed into the cache key."""

    @abstractmethod
    def score(self, item: ScoreItem) -> MetricResult:
        """Score one item. May raise; the runner records the exception as the item's error."""

    def score_many(self, items: Sequence[ScoreItem]) -> list[MetricResult]:
        """Score several items (override to batch). One item's failure becomes its own error."""
        out = []
        for item in items:
            try:
                out.append(self.score(item))
            except Exception as exc:  # recorded, never fatal for the other items
                out.append(MetricResult.failed(exc))
        return out

    def config_hash(self) -> str:
        """First 12 hex digits of sha256 of the canonical JSON of :meth:`config` plus the metric name."""
        payload = json.dumps({"metric": self.name, **self.config()}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]
