"""Which metrics exist: the metric registry (:data:`METRICS`), like the model and render-preset registries.

Every metric is registered under its ``--metrics`` name as a :class:`MetricSpec`, either

- a *prompt* metric: ``build(options, reference)`` returns the :class:`~mme3dr.metrics.base.PromptMetric` that scores
  one generated asset at a time (``reference``: the reference render folder of the preset, or None), or
- a *set* metric: a distance (``kid`` or ``fid``, :mod:`mme3dr.metrics.fidelity`) between the features of the run's
  views and the reference set's views, from one feature extractor (:func:`feature_extractor`).

The builders import their models only when called, so looking a name up is cheap. An unknown name raises
:class:`~mme3dr.errors.UnknownNameError` with the closest registered name and the full list. Add a metric of your
own with ``METRICS.register("name", MetricSpec("name", "prompt", build=...))``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mme3dr.defaults import DEFAULTS
from mme3dr.errors import InputError
from mme3dr.registry import Registry

if TYPE_CHECKING:
    from mme3dr.metrics.base import PromptMetric


@dataclass
class ScoreOptions:
    """Model choices for every metric; the CLI's options map one to one onto these fields."""

    device: str | None = None
    #: Images per forward pass; None: ``DEFAULTS.gpu_batch_size`` when the models run on a GPU, else
    #: ``DEFAULTS.batch_size``.
    batch_size: int | None = None
    clip_model: str = DEFAULTS.clip_model
    clip_pretrained: str = DEFAULTS.clip_pretrained
    clip_weights: str | None = None
    inception_weights: str | None = None
    dinov2_model: str = DEFAULTS.dinov2_model
    vlm_model: str = DEFAULTS.vlm_model
    vlm_server: str | None = None
    #: API key of the VLM server; None reads ``$MME3DR_VLM_API_KEY`` (``DEFAULTS.vlm_api_key_env``).
    vlm_api_key: str | None = None
    #: Workers that decode the rendered views for the image metrics: processes on a GPU, threads on the CPU
    #: (:mod:`mme3dr.metrics.views`; 0: the calling thread).
    decode_workers: int = DEFAULTS.decode_workers

    def __post_init__(self) -> None:
        if self.batch_size is None:
            from mme3dr.metrics.features import default_device

            on_gpu = str(self.device or default_device()).startswith("cuda")
            self.batch_size = DEFAULTS.gpu_batch_size if on_gpu else DEFAULTS.batch_size
        if self.vlm_api_key is None:
            self.vlm_api_key = os.environ.get(DEFAULTS.vlm_api_key_env) or None


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: what kind it is, how it is built and what it needs."""

    name: str
    kind: Literal["prompt", "set"]
    #: Prompt metrics: ``build(options, reference_folder_or_None)`` -> the metric object, weights loaded.
    build: Callable[[ScoreOptions, Path | None], PromptMetric] | None = None
    #: Set metrics: the feature extractor (``inception``, ``dinov2``) and the distance (``kid``, ``fid``).
    extractor: str | None = None
    distance: str | None = None
    #: False for metrics that load no model weights (what runs on a machine without downloads).
    needs_weights: bool = True
    #: True for metrics that read the prompt's checklist.
    uses_checklist: bool = False

    def __post_init__(self) -> None:
        if self.kind == "prompt" and self.build is None:
            raise InputError(f"metric {self.name!r}: a prompt metric needs build=(options, reference) -> metric")
        if self.kind == "set" and (self.extractor not in EXTRACTORS or self.distance not in ("kid", "fid")):
            raise InputError(f"metric {self.name!r}: a set metric needs extractor in {', '.join(EXTRACTORS)} and "
                             "distance kid or fid")
        if self.kind not in ("prompt", "set"):
            raise InputError(f"metric {self.name!r}: kind must be 'prompt' or 'set', not {self.kind!r}")


def _clip(o: ScoreOptions, ref: Path | None) -> PromptMetric:
    from mme3dr.metrics.clip import ClipScore

    return ClipScore(o.clip_model, o.clip_pretrained, o.clip_weights, o.device, o.batch_size, workers=o.decode_workers)


def _vlm(o: ScoreOptions, ref: Path | None) -> PromptMetric:
    from mme3dr.metrics.vlm import OpenAIVLM, TransformersVLM, VLMJudge

    if o.vlm_server:
        return VLMJudge(OpenAIVLM(o.vlm_server, o.vlm_model, api_key=o.vlm_api_key))
    backend = TransformersVLM(o.vlm_model, device=o.device)
    backend.load()  # fail here, once, with the missing-weights advice, not once per prompt
    return VLMJudge(backend)


def _geometry(o: ScoreOptions, ref: Path | None) -> PromptMetric:
    from mme3dr.metrics.geometry import GeometryMetric

    return GeometryMetric()


def _compat_clip(o: ScoreOptions, ref: Path | None) -> PromptMetric:
    from mme3dr.metrics.clip import ClipModel
    from mme3dr.metrics.compat import Ar3dCompatClip

    return Ar3dCompatClip(ClipModel(o.clip_model, o.clip_pretrained, o.clip_weights, o.device, o.batch_size))


def _compat_kd(o: ScoreOptions, ref: Path | None) -> PromptMetric:
    from mme3dr.metrics.compat import PREPROCESSING, Ar3dCompatKD
    from mme3dr.metrics.features import DinoV2Features

    if ref is None:
        raise InputError("ar3d_compat_kd needs --reference REF with renders of each prompt's ground-truth object")
    return Ar3dCompatKD(ref, DinoV2Features(o.dinov2_model, o.device, o.batch_size, preprocessing=PREPROCESSING))


#: Feature extractors of the set metrics.
EXTRACTORS = ("inception", "dinov2")


def feature_extractor(kind: str, o: ScoreOptions) -> Any:
    """The loaded feature extractor ``kind`` (one of :data:`EXTRACTORS`) with the models chosen in ``o``."""
    from mme3dr.metrics.features import DinoV2Features, InceptionFeatures

    if kind == "inception":
        return InceptionFeatures(o.inception_weights, o.device, o.batch_size)
    if kind == "dinov2":
        return DinoV2Features(o.dinov2_model, o.device, o.batch_size)
    raise InputError(f"unknown feature extractor {kind!r}; use one of {', '.join(EXTRACTORS)}")


METRICS: Registry[MetricSpec] = Registry(
    "metric", advice="Pass --metrics with registered names, comma-separated (`mme3dr score --help` lists them).")
for _spec in (MetricSpec("clip", "prompt", _clip),
              MetricSpec("vlm", "prompt", _vlm, uses_checklist=True),
              MetricSpec("geometry", "prompt", _geometry, needs_weights=False),
              MetricSpec("ar3d_compat_clip", "prompt", _compat_clip),
              MetricSpec("ar3d_compat_kd", "prompt", _compat_kd),
              MetricSpec("kid", "set", extractor="inception", distance="kid"),
              MetricSpec("fid", "set", extractor="inception", distance="fid"),
              MetricSpec("kid_dinov2", "set", extractor="dinov2", distance="kid"),
              MetricSpec("fid_dinov2", "set", extractor="dinov2", distance="fid")):
    METRICS.register(_spec.name, _spec, origin="builtin")


def get_metric(name: str) -> MetricSpec:
    """The registered metric ``name``; an unknown name raises :class:`~mme3dr.errors.UnknownNameError` naming the
    closest registered one and all of them."""
    spec = METRICS.get(name)
    if not isinstance(spec, MetricSpec):
        raise InputError(f"metric {name!r} is registered as {type(spec).__name__}, not a MetricSpec; register "
                         f"MetricSpec({name!r}, 'prompt', build=...)")
    return spec


def metric_names(kind: str | None = None) -> list[str]:
    """Registered metric names, sorted (only those of ``kind``, "prompt" or "set", when given)."""
    return [n for n in METRICS.names() if kind is None or get_metric(n).kind == kind]
