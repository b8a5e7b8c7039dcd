"""One pass over rendered views that feeds every image model: each view decoded once, batches spanning objects.

A :class:`ViewJob` is the views of one object (a prompt's renders, a reference object's renders) and the names of
the models that still need them (e.g. ``clip``, ``inception``, ``dinov2``). :func:`run_image_pass` decodes the
views of all jobs once (:func:`mme3dr.metrics.views.stream_views`, onto the models' device), queues each view for every
model its job names, runs a model whenever ``batch_size`` views wait for it (so a batch spans objects), and yields
one :class:`JobResult` per job, in job order, as soon as every model has embedded all of its views. A model is
anything with :class:`ImageModel`'s two members: the resize sizes it reads and ``embed(views) -> (n, d) float32``
(:class:`mme3dr.metrics.clip.ClipModel`, the extractors of :mod:`mme3dr.metrics.features`).

The pass takes a list of jobs and returns results, so a caller may hand it any part of the work (one item, one
shard of a run). An unreadable view fails its own job (``JobResult.error``); a model that fails on a batch is run
again on each job's views of that batch alone, so only the jobs it fails on get the error, for that model only
(``JobResult.failed``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from mme3dr.defaults import DEFAULTS
from mme3dr.metrics.views import ViewPixels, stream_views


class ImageModel(Protocol):
    #: Sizes of the square bicubic resizes the model reads from :class:`ViewPixels` (empty: full-size only).
    sizes: tuple[int, ...]
    #: Where the model runs (the views are decoded onto it when every model of the pass runs there; optional).
    device: str

    def embed(self, views: Sequence[ViewPixels]) -> np.ndarray:
        """Embeddings or features of ``views``, float32 (n, d)."""


@dataclass(frozen=True)
class ViewJob:
    """The views of one object and the models (names in the pass's ``models``) that need them."""

    paths: tuple[Path, ...]
    models: tuple[str, ...]
    #: An error found before the pass (e.g. no views): the job is yielded with it, in its place, undecoded.
    error: Exception | None = None


@dataclass
class JobResult:
    index: int  # position of the job in ``jobs``
    job: ViewJob
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # model name -> (views, d) float32
    error: Exception | None = None  # the job's views could not be read (or its up-front error): no embeddings
    failed: dict[str, Exception] = field(default_factory=dict)  # models that failed on this job's views
    #: Wall time from the previous result (or the start of the pass) to this one: the job's share of the pass.
    seconds: float = 0.0


def run_image_pass(jobs: Sequence[ViewJob], models: Mapping[str, ImageModel], batch_size: int = DEFAULTS.batch_size,
                   workers: int = DEFAULTS.decode_workers) -> Iterator[JobResult]:
    """Embed the views of every job with the models it names; yield a :class:`JobResult` per job, in order.
    ``workers``: decoding workers (:func:`~mme3dr.metrics.views.stream_views`)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    unknown = sorted({m for j in jobs for m in j.models} - set(models))
    if unknown:
        raise KeyError(f"jobs name models {unknown} that the pass was not given (it has {sorted(models)})")
    used = {m for j in jobs if j.error is None for m in j.models}
    sizes = sorted({s for m in used for s in models[m].sizes})
    devices = {str(getattr(models[m], "device", "cpu")) for m in used}
    device = devices.pop() if len(devices) == 1 else "cpu"  # else each model moves its batches itself
    queues: dict[str, list[tuple[int, int, ViewPixels]]] = {m: [] for m in used}
    rows: dict[int, dict[str, list[np.ndarray | None]]] = {}
    left: dict[int, int] = {}  # job -> views still to embed, over its models
    errors: dict[int, Exception] = {}
    failed: dict[int, dict[str, Exception]] = {}
    state = {"next": 0, "clock": time.perf_counter()}

    def run(name: str, batch: list[tuple[int, int, ViewPixels]]) -> None:
        try:
            parts = [(batch, models[name].embed([v for _, _, v in batch]))]
        except Exception:  # find the jobs it fails on: each job's views of this batch alone
            parts = []
            for job in dict.fromkeys(j for j, _, _ in batch):
                mine = [b for b in batch if b[0] == job]
                try:
                    parts.append((mine, models[name].embed([v for _, _, v in mine])))
                except Exception as exc:
                    failed.setdefault(job, {}).setdefault(name, exc)
                    left[job] -= len(mine)
        for part, emb in parts:
            for (job, view, _), row in zip(part, emb):
                rows[job][name][view] = row
                left[job] -= 1

    def finished() -> Iterator[JobResult]:
        while state["next"] < len(jobs) and left.get(state["next"], -1) == 0:
            i = state["next"]
            error, bad = errors.pop(i, None), failed.pop(i, {})
            emb = {} if error else {m: np.stack(r) if r else np.zeros((0, 0), np.float32)
                                    for m, r in rows[i].items() if m not in bad}
            rows.pop(i, None)
            now = time.perf_counter()
            yield JobResult(i, jobs[i], emb, error, bad, now - state["clock"])
            state["clock"], state["next"] = now, i + 1

    live = [i for i, j in enumerate(jobs) if j.error is None and j.models]
    for i, j in enumerate(jobs):
        if j.error is not None or not j.models:
            left[i], rows[i] = 0, {}
            if j.error is not None:
                errors[i] = j.error
    yield from finished()
    for group in stream_views([jobs[i].paths for i in live], sizes, workers, device=device):
        i = live[group.index]
        rows[i] = {m: [None] * len(group.views) for m in jobs[i].models}
        left[i] = len(group.views) * len(jobs[i].models)
        if group.error is not None:
            errors[i], left[i] = group.error, 0
        for m in jobs[i].models:
            queues[m].extend((i, k, v) for k, v in enumerate(group.views))
            while len(queues[m]) >= batch_size:
                batch, queues[m] = queues[m][:batch_size], queues[m][batch_size:]
                run(m, batch)
        yield from finished()
    for m, queue in queues.items():
        for start in range(0, len(queue), batch_size):
            run(m, queue[start:start + batch_size])
        queue.clear()
    yield from finished()
