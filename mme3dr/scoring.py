"""The scoring stage (``mme3dr score``): run metrics over a run's assets and renders.

A stage beside :mod:`mme3dr.generation` and :mod:`mme3dr.render.runs`: it reads the generation records and the
render records of earlier stages and writes the score records (:mod:`mme3dr.score_records`), which the report
reads. The metrics themselves (one asset or one set of features at a time) live in :mod:`mme3dr.metrics`.

Per-prompt metrics write one record per (prompt, metric) to ``RUN/scores.jsonl`` (appended and fsynced as each
prompt is scored; re-running skips records whose metric config hash, render preset hash and asset sha256 are
unchanged). Set metrics (KID/FID on Inception or DINOv2 features) compare the run's renders with a reference set
rendered with the same preset, overall and per category, and go to ``RUN/set_scores.json`` as typed records
(:mod:`mme3dr.score_records`): the object-aware KID with its bootstrap interval and the FID at a fixed number
of generated objects (:mod:`mme3dr.metrics.fidelity`), each with its paper-style value, counts and reference subset.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from mme3dr import runfiles
from mme3dr.categories import CATEGORIES
from mme3dr.data import PACKAGED_SOURCE, ChecklistItem, load_benchmark
from mme3dr.defaults import DEFAULTS
from mme3dr.distributed import Ranks
from mme3dr.errors import InputError, MissingInputError
from mme3dr.generation import GenerationRecord, read_generations
from mme3dr.jsonl import read_json
from mme3dr.metrics.base import MetricResult, PromptMetric, ScoreItem, describe
from mme3dr.metrics.specs import ScoreOptions, feature_extractor, get_metric, metric_names
from mme3dr.paths import UnsafePathError, child_path
from mme3dr.render.output import file_sha256, read_render_record
from mme3dr.render.presets import RenderPreset
from mme3dr.render.references import REFERENCE_FILE
from mme3dr.runinfo import read_run_info
from mme3dr.score_records import (ScoreRecord, SetMetricRecord, SetScore, append_score, keep_latest_scores,
                                  read_scores, read_set_scores, repair_scores, write_set_scores)
from mme3dr.weights import WeightsCheck

if TYPE_CHECKING:
    import torch


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """Metric names from ``"clip,kid"`` or a list, each checked against the registry (:data:`~mme3dr.metrics.specs.METRICS`): an unknown
    name raises :class:`~mme3dr.errors.UnknownNameError` with the closest registered name."""
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    for m in names:
        get_metric(m)
    return names


def _set(names: Sequence[str]) -> list[str]:
    return [m for m in names if get_metric(m).kind == "set"]


@dataclass
class ScoreSummary:
    scored: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    errors: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    set_scores: dict[str, SetMetricRecord] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = []
        for m in self.scored:
            out.append(f"{m}: {self.scored[m]} scored, {self.skipped.get(m, 0)} up to date, "
                       f"{len(self.errors.get(m, []))} errors")
            out += [f"  ERROR {pid}: {e}" for pid, e in self.errors.get(m, [])[:20]]
        for m, rec in self.set_scores.items():
            out.append(f"{m}: " + "; ".join(f"{g} {_fmt(m, e)}" for g, e in rec.groups().items()))
        return out


def _fmt(metric: str, e: SetScore) -> str:
    counts = f"{e.gen_objects} objects vs reference {e.reference_subset} ({e.ref_objects} objects)"
    if e.value is None:
        return f"n/a ({e.error})"
    if metric.startswith("kid"):
        return (f"{100 * e.value:.3f} x100, 95% CI [{100 * e.ci_low:.3f}, {100 * e.ci_high:.3f}] "
                f"(pooled, paper-style {100 * e.paper_value:.3f}), {counts}")
    return f"{e.value:.3f} at {e.value_objects} objects (all views {e.paper_value:.3f}), {counts}"


def _hashable(path: Path) -> bool:
    """A regular file within the loading budget's size (anything else fails to load; it is not hashed)."""
    from mme3dr.asset_files import check_regular_file
    from mme3dr.assets import AssetError

    try:
        check_regular_file(path)
    except AssetError:
        return False
    return True


class PromptSetMismatchError(InputError):
    """The prompt set a run is scored against does not hold the run's prompts (ids or texts differ)."""


def prompt_location(run_dir: Path) -> str | None:
    """The prompt set a run was generated from, as ``load_benchmark(source=...)`` takes it: ``run.json``
    ``prompts.location`` (None: the packaged set). Runs recorded before ``location`` existed give their
    ``prompts.source`` when it names a file or folder."""
    prompts = read_run_info(run_dir).get("prompts") or {}
    if "location" in prompts:
        return prompts["location"]
    source = prompts.get("source")
    return None if source in (None, PACKAGED_SOURCE) or not Path(source).exists() else source


def run_checklists(run_dir: Path, gens: dict[str, GenerationRecord],
                   source: str | None = None) -> dict[str, tuple[ChecklistItem, ...]]:
    """The checklist of each generated prompt, from the run's own prompt set (``source``, else
    :func:`prompt_location`). Every prompt must be in that set with the very text it was generated from;
    otherwise :class:`PromptSetMismatchError` names them, so a judge never asks another prompt's questions."""
    where = source if source is not None else prompt_location(run_dir)
    bench = load_benchmark(source=where)
    by_id = {r.id: r for r in bench}
    stale = [pid for pid, g in gens.items() if pid not in by_id or by_id[pid].prompt != g.prompt]
    if stale:
        shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        raise PromptSetMismatchError(
            f"{run_dir}: {len(stale)} generated prompt(s) ({shown}) are missing from {bench.source} or have other "
            "text there, so their checklists cannot be matched. Score with the prompt set the run was generated "
            "from: `mme3dr score RUN --source FILE` (or restore the file that run.json names).")
    return {pid: by_id[pid].checklist for pid in gens}


def _items(run_dir: Path, preset: RenderPreset, checklists: bool = True, source: str | None = None
           ) -> tuple[list[tuple[ScoreItem, dict | None]], dict[str, str]]:
    """A ScoreItem per generated asset, with the render record of ``preset`` (None when not rendered), and the
    prompts refused because their id would lead out of the render folder (id -> message). ``checklists``: attach
    each prompt's checklist (:func:`run_checklists`, from ``source`` or the run's own prompt set)."""
    gens = read_generations(run_dir)
    checklists = run_checklists(run_dir, gens, source) if checklists and gens else {}
    folder = child_path(run_dir, runfiles.RENDERS_DIR, preset.tag, what="render preset tag")
    out, refused = [], {}
    for pid, rec in gens.items():
        asset = rec.resolved_asset(run_dir)
        if asset is None:
            continue
        try:
            render_dir = child_path(folder, pid, what="prompt id")
        except UnsafePathError as exc:
            refused[pid] = str(exc)
            continue
        render = read_render_record(render_dir)
        out.append((ScoreItem(pid, rec.category, rec.prompt, checklists.get(pid, ()), asset, rec.up_axis,
                              render_dir if render else None), render))
    return out, refused


@dataclass
class BuiltMetrics:
    """Metric objects with their weights loaded: per-prompt metrics by name, and the feature extractors of the set
    metrics by kind (``inception``, ``dinov2``)."""

    prompt: dict[str, PromptMetric]
    extractors: dict[str, Any]


def no_weights_hint(names: Sequence[str]) -> str:
    """The advice that ends a missing-weights message: which of ``names`` run without any weights."""
    free = ([m for m in names if not get_metric(m).needs_weights]
            or [m for m in metric_names() if not get_metric(m).needs_weights])
    return f"Or leave out the metrics that need weights: --metrics {','.join(free)} runs without downloads."


def build_metrics(metrics: Sequence[str], preset: RenderPreset, reference: Path | str | None = None,
                  options: ScoreOptions | None = None, check: WeightsCheck | None = None) -> BuiltMetrics:
    """Every metric object with its weights loaded, so a missing weight or reference fails before any work.

    Every missing weight is collected and reported in one :class:`MissingWeightsError`; pass ``check`` to collect
    into a caller's :class:`WeightsCheck` instead (the caller then raises).
    """
    options = options or ScoreOptions()
    names = parse_metrics(metrics)
    if _set(names) and reference is None:
        raise InputError(f"{', '.join(_set(names))} compare against a reference set: pass "
                         f"--reference REF (build one with `mme3dr references build --preset {preset.name}`)")
    ref_folder = _reference_folder(reference, preset) if reference is not None else None
    collect = check or WeightsCheck()
    prompt = {m: collect.attempt(f"metric {m}", lambda m=m: get_metric(m).build(options, ref_folder))
              for m in names if get_metric(m).kind == "prompt"}
    kinds = dict.fromkeys(get_metric(m).extractor for m in _set(names))
    extractors = {k: collect.attempt(f"metric {', '.join(m for m in _set(names) if get_metric(m).extractor == k)}",
                                     lambda k=k: feature_extractor(k, options)) for k in kinds}
    if check is None:
        collect.raise_if_missing(no_weights_hint(names))
    return BuiltMetrics(prompt, extractors)


def score_run(run_dir: Path | str, metrics: Sequence[str], preset: RenderPreset, reference: Path | str | None = None,
              options: ScoreOptions | None = None, progress: bool = True,
              built: BuiltMetrics | None = None, source: str | None = None,
              workers: int = DEFAULTS.score_workers, ranks: Ranks = Ranks()) -> ScoreSummary:
    """Score a run with ``metrics`` (names registered in :data:`~mme3dr.metrics.specs.METRICS`); ``built`` reuses
    :func:`build_metrics` output. Checklists come from the run's own prompt set (``run.json``), or from
    ``source`` (a prompt file, dataset folder or hub id) when given; see :func:`run_checklists`.

    ``workers``: processes for the metrics that are pure CPU work (``PromptMetric.in_processes``: geometry); see
    :func:`_results`. Records, their order and their values are the same for every ``workers``.

    ``ranks`` (:mod:`mme3dr.distributed`): each rank scores its share of the prompts and computes the features of
    its share of the views; rank 0 gathers them, writes every record (in prompt order, as one process would) and
    the feature caches, and computes the set metrics. The summary of rank 0 covers every prompt; the other ranks'
    summaries are empty."""
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    run_dir, options = Path(run_dir), options or ScoreOptions()
    metrics = parse_metrics(metrics)
    items, refused = _items(run_dir, preset, any(get_metric(m).uses_checklist for m in metrics), source)
    if not items and not refused:
        raise MissingInputError(f"{run_dir}: no generated assets; run `mme3dr generate ... --out RUN` first")
    built = built if built is not None else build_metrics(metrics, preset, reference, options)
    ref_folder = _reference_folder(reference, preset) if reference is not None else None
    summary = ScoreSummary()
    if ranks.main:
        repair_scores(run_dir)  # a line torn by a crash is dropped (its record is scored again)
    ranks.barrier()
    done = {r.cache_key() for r in read_scores(run_dir) if r.ok}
    records = Recorder(run_dir, built.prompt, summary, ranks)
    plans = {}
    for name, metric in built.prompt.items():
        summary.scored[name], summary.skipped[name], summary.errors[name] = 0, 0, list(refused.items())
        plans[name] = _plan(run_dir, name, metric, items, done, preset, summary)
    set_names = _set(metrics)
    # CLIP and the set metrics' features: every view decoded once, in batches spanning prompts
    in_pass = {name: metric for name, metric in built.prompt.items() if metric.in_image_pass}
    sets = SetInputs.load(run_dir, items, ref_folder, preset, built.extractors, set_names) if set_names else None
    with ExitStack() as pools:
        later = {}  # the other per-prompt metrics; those in worker processes start now, beside the image pass
        for name, metric in built.prompt.items():
            if name not in in_pass:
                plan = [(i, *row) for i, row in enumerate(plans[name]) if ranks.mine(i)]
                later[name] = plan, _results(metric, [item for _, item, _, failed in plan if failed is None],
                                             workers, pools)
        if in_pass or sets is not None:
            score_images(run_dir, {name: (m, plans[name]) for name, m in in_pass.items()}, items, sets,
                         built.extractors, options, records, progress)
        for name, (plan, results) in later.items():
            bar = tqdm(total=len(items), initial=summary.skipped[name], desc=name, unit="prompt",
                       disable=not progress or not ranks.main)
            try:
                for i, item, key, failed in plan:
                    result, seconds = next(results) if failed is None else (failed, 0.0)
                    records.add(i, name, item, key, result, seconds)
                    bar.update(ranks.world)
            finally:
                bar.close()
                records.flush()
    if not ranks.main:
        return ScoreSummary()
    keep_latest_scores(run_dir)  # one record per (prompt, metric): the latest
    if sets is not None:
        summary.set_scores = score_sets(run_dir, items, ref_folder, set_names, preset, built.extractors, progress,
                                        options, sets)
    return summary


#: A per-prompt metric's work: (item, cache key, error found up front or None) for each item not up to date.
Plan = list[tuple[ScoreItem, tuple, "MetricResult | None"]]


def _plan(run_dir: Path, name: str, metric: PromptMetric, items: list[tuple[ScoreItem, dict | None]], done: set,
          preset: RenderPreset, summary: ScoreSummary) -> Plan:
    """The items ``metric`` still has to score (the others are counted as skipped in ``summary``)."""
    chash = metric.config_hash()
    plan: Plan = []
    for item, render in items:
        sha = (render or {}).get("asset_sha256")
        if sha is None and metric.needs == "asset" and _hashable(item.asset_path):
            sha = file_sha256(item.asset_path)  # asset metrics need no render to be cached
        key = (item.prompt_id, name, chash, preset.hash if metric.needs == "renders" else None, sha)
        if sha is not None and key in done:
            summary.skipped[name] += 1
        elif metric.needs == "renders" and item.render_dir is None:
            plan.append((item, key, MetricResult(error=f"not rendered with preset {preset.tag}; run `mme3dr "
                                                       f"render {run_dir} --preset {preset.name}` first")))
        else:
            plan.append((item, key, None))
    return plan


class Recorder:
    """Where scored items go: appended (and fsynced) to ``scores.jsonl`` as they come (one process), or kept until
    :meth:`flush` gathers every rank's on rank 0, which appends them in prompt order (:mod:`mme3dr.distributed`).
    Rank 0 counts them in ``summary``."""

    def __init__(self, run_dir: Path, metrics: dict[str, PromptMetric], summary: ScoreSummary,
                 ranks: Ranks = Ranks()) -> None:
        self.run_dir, self.metrics, self.summary, self.ranks = run_dir, metrics, summary, ranks
        self._pending: list[tuple[int, str, ScoreItem, tuple, MetricResult, float]] = []

    def add(self, order: int, name: str, item: ScoreItem, key: tuple, result: MetricResult, seconds: float) -> None:
        """The result of metric ``name`` on ``item`` (``order``: the item's place in the metric's plan)."""
        if self.ranks.world == 1:
            self._write(name, item, key, result, seconds)
        else:
            self._pending.append((order, name, item, key, result, seconds))

    def flush(self) -> None:
        """Every rank: hand the kept results to rank 0, which writes them in order (a no-op for one process)."""
        if self.ranks.world == 1:
            return
        gathered, self._pending = self.ranks.gather(self._pending), []
        place = {name: i for i, name in enumerate(self.metrics)}
        for _, name, item, key, result, seconds in sorted((row for part in gathered or () for row in part),
                                                          key=lambda row: (row[0], place[row[1]])):
            self._write(name, item, key, result, seconds)

    def _write(self, name: str, item: ScoreItem, key: tuple, result: MetricResult, seconds: float) -> None:
        metric = self.metrics[name]
        append_score(self.run_dir, ScoreRecord(item.prompt_id, key[1], item.category, key[2], metric.config(),
                                               key[3], key[4], dict(metric.directions), **asdict(result),
                                               seconds=round(seconds, 4)))
        if result.error:
            self.summary.errors[key[1]].append((item.prompt_id, result.error))
        else:
            self.summary.scored[key[1]] += 1


def score_images(run_dir: Path, prompt: dict[str, tuple[Any, Plan]], items: list[tuple[ScoreItem, dict | None]],
                 sets: SetInputs | None, extractors: dict[str, Any], options: ScoreOptions, records: Recorder,
                 progress: bool = True) -> None:
    """One image pass (:func:`~mme3dr.metrics.image_pass.run_image_pass`) over the views that any image metric
    still needs: the metrics in ``prompt`` (name -> (metric, plan); ``PromptMetric.in_image_pass``, e.g.
    :class:`~mme3dr.metrics.clip.ClipScore`) get their records appended, in
    prompt order, as soon as all views of a prompt are embedded; the feature caches in ``sets`` get the features of
    the generated and reference views they lack (saved at the end). A view that cannot be read gives its prompt's
    error in the CLIP records; its features stay missing (:func:`score_sets` then names the file). The ``seconds``
    of such a record is the wall time from the previous prompt's result to its own: its share of the batched pass.

    Several ranks (``records.ranks``): each takes its share of the objects; the records go through ``records`` and
    the features are gathered on rank 0, which stores them in the caches and saves them."""
    from mme3dr.metrics.image_pass import ViewJob, run_image_pass

    todo = {name: {item.prompt_id: (key, failed) for item, key, failed in plan} for name, (_, plan) in prompt.items()}
    jobs: list[ViewJob] = []
    for item, _ in items:
        clip = tuple(n for n in prompt if item.prompt_id in todo[n] and todo[n][item.prompt_id][1] is None)
        label = f"gen:{item.prompt_id}"
        kinds = sets.missing(label) if sets is not None else ()
        if not clip:  # features only (or nothing: the job passes through undecoded)
            jobs.append(ViewJob(sets.views(label)[0] if kinds else (), kinds))
            continue
        try:
            jobs.append(ViewJob(tuple(item.view_paths()), clip + kinds))
        except ValueError as exc:  # rendered, but no views: the CLIP records carry the error
            jobs.append(ViewJob((), clip, exc))
    refs = [label for label in sets.ref if sets.missing(label)] if sets is not None else []
    jobs += [ViewJob(sets.views(label)[0], sets.missing(label)) for label in refs]
    texts = {}
    for name, (metric, _) in prompt.items():
        rows = [i for i, (item, _) in enumerate(items) if name in jobs[i].models]
        emb = metric.clip.embed_text([items[i][0].prompt for i in rows]) if rows else np.zeros((0, 0))
        texts[name] = dict(zip(rows, emb))
    models = {name: metric.clip for name, (metric, _) in prompt.items()}
    models.update({k: extractors[k] for k in (sets.caches if sets is not None else {})})
    ranks = records.ranks
    mine = [i for i in range(len(jobs)) if ranks.mine(i)]
    features: list[tuple[str, str, np.ndarray]] = []  # (object label, extractor kind, features)
    bar = tqdm(total=len(jobs), desc="images", unit="object", disable=not progress or not ranks.main)
    try:
        for res in run_image_pass([jobs[i] for i in mine], models, options.batch_size, options.decode_workers):
            res = dataclasses.replace(res, index=mine[res.index])
            item = items[res.index][0] if res.index < len(items) else None
            for name, (metric, _) in prompt.items():
                if item is None or item.prompt_id not in todo[name]:
                    continue
                key, failed = todo[name][item.prompt_id]
                exc = res.error or res.failed.get(name)
                if failed is None and exc is not None:
                    failed = MetricResult.failed(exc)
                result = failed or metric.result(item, res.embeddings[name], texts[name][res.index])
                records.add(res.index, name, item, key, result, res.seconds if failed is None else 0.0)
            if sets is not None and res.error is None:
                label = f"gen:{item.prompt_id}" if item is not None else refs[res.index - len(items)]
                for kind in res.job.models:
                    if kind in sets.caches and kind in res.embeddings:
                        features.append((label, kind, res.embeddings[kind]))
                        if ranks.world == 1:
                            sets.store(*features.pop())
            bar.update(ranks.world)
    finally:
        bar.close()
        records.flush()
        if sets is not None:
            for part in ranks.gather(features) or ():
                for label, kind, feats in part:
                    sets.store(label, kind, feats)
            if ranks.main:
                sets.save()


def _results(metric: PromptMetric, items: list[ScoreItem], workers: int,
             pools: ExitStack) -> Iterator[tuple[MetricResult, float]]:
    """``(result, seconds)`` of each item, in the order of ``items``: ``metric.score_many`` on ``metric.batch_items``
    items at a time (one item's failure is its own error), each item's seconds being its call's time over the
    number of items in the call.

    With ``workers > 1``, a metric that is pure CPU work (``metric.in_processes``) and more than one item, the
    items are scored in a :func:`~mme3dr.processes.spawn_pool` of ``min(workers, len(items))`` processes, each
    holding a copy of ``metric`` and loading assets through its own budgeted loader
    (:func:`mme3dr.assets.load_asset`): the pool starts at once (it is closed with ``pools``) and scores while the
    caller does other work (the image pass); the results come back in order. Otherwise the items are scored in
    this process as the results are read.
    """
    if workers <= 1 or len(items) <= 1 or not metric.in_processes:
        return _in_process(metric, items)
    from mme3dr.processes import spawn_pool

    pool = pools.enter_context(spawn_pool(min(workers, len(items)), _init_scorer, (metric, os.getpid())))
    return pool.imap(_score_in_worker, items)


def _in_process(metric: PromptMetric, items: list[ScoreItem]) -> Iterator[tuple[MetricResult, float]]:
    size = max(1, metric.batch_items)
    for first in range(0, len(items), size):
        chunk = items[first:first + size]
        start = time.perf_counter()
        results = metric.score_many(chunk)
        seconds = (time.perf_counter() - start) / len(chunk)
        yield from ((result, seconds) for result in results)


_scorer: dict[str, PromptMetric] = {}


def _init_scorer(metric: PromptMetric, parent: int) -> None:
    from mme3dr.processes import tie_to_parent

    tie_to_parent(parent)
    _scorer["metric"] = metric


def _score_in_worker(item: ScoreItem) -> tuple[MetricResult, float]:
    start = time.perf_counter()
    [result] = _scorer["metric"].score_many([item])
    return result, time.perf_counter() - start


def _reference_folder(reference: Path | str, preset: RenderPreset) -> Path:
    folder = Path(reference) / preset.tag
    if not (folder / REFERENCE_FILE).exists():
        have = sorted(p.parent.name for p in Path(reference).glob(f"*/{REFERENCE_FILE}"))
        raise MissingInputError(f"reference set {reference} has no renders with preset {preset.tag} (it has: "
                                f"{', '.join(have) or 'none'}); build it with `mme3dr references build --preset "
                                f"{preset.name} --out {reference} ...`")
    return folder


@dataclass
class SetInputs:
    """What the set metrics compare: the generated objects (``gen:<prompt id>``, one per rendered prompt) and the
    reference objects (``ref:<id>``), each as (category, render folder, asset sha256), and the feature caches of
    each extractor kind asked for: (generated side in the run's render folder, reference side in the reference
    set's). A view's cache key is ``<render folder>/<NNN.png>@<sha256[:12]>``."""

    gen: dict[str, tuple[str | None, Path, str]]
    ref: dict[str, tuple[str | None, Path, str]]
    caches: dict[str, tuple[Any, Any]]
    _views: dict[str, tuple[tuple[Path, ...], list[str]]] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path, items: list[tuple[ScoreItem, dict | None]], ref_folder: Path, preset: RenderPreset,
             extractors: dict[str, Any], names: Sequence[str]) -> SetInputs:
        from mme3dr.metrics.features import FeatureCache

        ref = read_json(ref_folder / REFERENCE_FILE, "build the reference set again (`mme3dr references build`)")
        gen = {f"gen:{it.prompt_id}": (it.category, it.render_dir, r["asset_sha256"]) for it, r in items if r}
        refs = {}
        for o in ref["objects"]:
            if not o.get("ok"):
                continue
            d = child_path(ref_folder, str(o["id"]), what=f"{ref_folder / REFERENCE_FILE}: object id")
            refs[f"ref:{o['id']}"] = (o.get("category"), d, (read_render_record(d) or {}).get("asset_sha256", o["id"]))
        gen_cache = run_dir / runfiles.RENDERS_DIR / preset.tag / runfiles.FEATURES_DIR
        caches = {k: (FeatureCache(gen_cache, extractors[k]), FeatureCache(ref_folder / runfiles.FEATURES_DIR,
                                                                           extractors[k]))
                  for k in dict.fromkeys(get_metric(n).extractor for n in names)}
        return cls(gen, refs, caches)

    def views(self, label: str) -> tuple[tuple[Path, ...], list[str]]:
        """The view files of object ``label`` and their cache keys."""
        if label not in self._views:
            _, d, sha = self.gen[label] if label in self.gen else self.ref[label]
            paths = tuple(sorted(Path(d).glob("[0-9][0-9][0-9].png")))
            self._views[label] = paths, [f"{d}/{p.name}@{sha[:12]}" for p in paths]
        return self._views[label]

    def keys(self, objs: dict[str, tuple]) -> tuple[list[str], np.ndarray]:
        """The cache keys of the views of ``objs`` (``gen`` or ``ref``) and the object label of each."""
        keys, labels = [], []
        for label in objs:
            k = self.views(label)[1]
            keys += k
            labels += [label] * len(k)
        return keys, np.array(labels)

    def _cache(self, label: str, kind: str):
        return self.caches[kind][0 if label in self.gen else 1]

    def missing(self, label: str) -> tuple[str, ...]:
        """The extractor kinds whose cache lacks a view of object ``label`` (none for an unknown label)."""
        if label not in self.gen and label not in self.ref:
            return ()
        return tuple(k for k in self.caches if self._cache(label, k).missing(self.views(label)[1]))

    def store(self, label: str, kind: str, features: np.ndarray) -> None:
        self._cache(label, kind).put(self.views(label)[1], features)

    def save(self) -> None:
        for caches in self.caches.values():
            for cache in caches:
                cache.save()

    def release(self, kind: str) -> None:
        """Drop the in-memory caches of ``kind`` (saved first), once their features have been read."""
        for cache in self.caches.pop(kind):
            cache.save()


def fill_features(sets: SetInputs, extractors: dict[str, Any], options: ScoreOptions | None = None,
                  progress: bool = True) -> None:
    """Compute the features the caches of ``sets`` lack (one image pass over those objects) and save them. A view
    that cannot be read raises :class:`~mme3dr.errors.InputError` naming its object."""
    from mme3dr.metrics.image_pass import ViewJob, run_image_pass

    options = options or ScoreOptions()
    labels = [label for label in (*sets.gen, *sets.ref) if sets.missing(label)]
    jobs = [ViewJob(sets.views(label)[0], sets.missing(label)) for label in labels]
    try:
        for res in tqdm(run_image_pass(jobs, {k: extractors[k] for k in sets.caches}, options.batch_size,
                                       options.decode_workers), total=len(jobs), desc="features", unit="object",
                        disable=not progress):
            if res.error is not None or res.failed:
                _, d, _ = sets.gen.get(labels[res.index]) or sets.ref[labels[res.index]]
                if res.error is None:
                    kind, exc = next(iter(res.failed.items()))
                    raise InputError(f"{d}: the {kind} features of its views failed ({describe(exc)})") from exc
                raise InputError(f"{d}: a view cannot be read ({describe(res.error)}); render this object again "
                                 "(`mme3dr render` / `mme3dr references build`) before scoring set metrics")
            for kind in res.job.models:
                sets.store(labels[res.index], kind, res.embeddings[kind])
    finally:
        sets.save()


def _on(device: str, x: np.ndarray) -> torch.Tensor:
    """``x`` as a tensor on ``device`` (sharing its memory on the CPU)."""
    import torch

    return torch.from_numpy(x).to(device)


def score_sets(run_dir: Path, items: list[tuple[ScoreItem, dict | None]], ref_folder: Path, names: Sequence[str],
               preset: RenderPreset, extractors: dict[str, Any], progress: bool = True,
               options: ScoreOptions | None = None, sets: SetInputs | None = None) -> dict[str, SetMetricRecord]:
    """KID/FID of the run's views against the reference views, overall and per category; writes set_scores.json.
    ``extractors``: the loaded feature extractors by kind (:attr:`BuiltMetrics.extractors`). Features missing from
    the caches are computed first (:func:`fill_features`, batch size and decoding processes from ``options``);
    ``sets``: the :class:`SetInputs` of a caller that already loaded them.

    Objects are the generated assets (one per prompt) and the reference objects; every view of an object carries
    its label, so KID leaves out same-object pairs and FID draws whole objects (see :mod:`mme3dr.metrics.fidelity`).
    A category is compared with the reference objects of that MME-3DR category, or with the whole reference set
    when it has none (``reference_subset`` says which). The distances are computed on the scoring device
    (``options.device``; None: :func:`~mme3dr.metrics.features.default_device`, where the image models run).
    """
    import torch

    from mme3dr.metrics.features import default_device
    from mme3dr.metrics.fidelity import ObjectKernel, cap_objects, default_subset_size, fid_by_object, kid_from_features

    sets = sets if sets is not None else SetInputs.load(run_dir, items, ref_folder, preset, extractors, names)
    fill_features(sets, extractors, options, progress)
    device = (options.device if options is not None else None) or default_device()
    gen_objs, ref_objs = sets.gen, sets.ref
    groups = {"overall": list(gen_objs)}
    groups.update({c: [k for k, v in gen_objs.items() if v[0] == c] for c in CATEGORIES})
    groups = {g: objs for g, objs in groups.items() if objs or g == "overall"}
    ref_all = list(ref_objs)
    ref_subsets = {c: [k for k, v in ref_objs.items() if v[0] == c] for c in CATEGORIES}
    # the kernel pool of the object-aware KID: at most kid_max_objects objects per side, drawn by object
    kid_pool = set(cap_objects(list(gen_objs), DEFAULTS.kid_max_objects)) | set(cap_objects(ref_all,
                                                                                             DEFAULTS.kid_max_objects))

    (gen_keys, gen_labels), (ref_keys, ref_labels) = sets.keys(gen_objs), sets.keys(ref_objs)
    stored = read_set_scores(run_dir)  # the other set metrics' records are kept
    feats: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
    kernels: dict[str, ObjectKernel] = {}
    settings = {k: getattr(DEFAULTS, k) for k in ("kid_bootstrap", "kid_seed", "kid_max_objects", "kid_pooled_subsets",
                                                  "kid_pooled_max_subset", "fid_objects", "fid_draws")}
    records: dict[str, SetMetricRecord] = {}
    for name in names:
        kind, dist = get_metric(name).extractor, get_metric(name).distance
        if kind not in feats:
            ext = extractors[kind]
            # float32 as the models computed them, gathered on the device (the host keeps no copy on a GPU); the
            # distances work in float64 there
            gen_cache, ref_cache = sets.caches[kind]
            gen_feats, ref_feats = gen_cache.get(gen_keys, device), ref_cache.get(ref_keys, device)
            sets.release(kind)  # the stacked features are all that is used from here on
            width = max(gen_feats.shape[1], ref_feats.shape[1])  # an empty side comes back as (0, 0)
            feats[kind] = (ext.weights_id, gen_feats.reshape(-1, width), ref_feats.reshape(-1, width))
        weights_id, g_all, r_all = feats[kind]
        if dist == "kid" and kind not in kernels:
            labels = np.concatenate([gen_labels, ref_labels])
            rows = np.isin(labels, list(kid_pool))
            kernels[kind] = ObjectKernel(torch.cat([g_all, r_all])[_on(device, rows)], labels[rows], device=device)
        per_group: dict[str, SetScore] = {}
        for group, gen_ids in tqdm(groups.items(), desc=name, disable=not progress):
            ref_ids = ref_all if group == "overall" or not ref_subsets[group] else ref_subsets[group]
            g_rows, r_rows = np.isin(gen_labels, gen_ids), np.isin(ref_labels, ref_ids)
            g = g_all if g_rows.all() else g_all[_on(device, g_rows)]  # no copy of the whole set for "overall"
            r = r_all if r_rows.all() else r_all[_on(device, r_rows)]
            entry = SetScore("all" if ref_ids is ref_all else group, len(gen_ids), len(g), len(ref_ids), len(r))
            try:
                if dist == "kid":
                    est = kernels[kind].kid([o for o in gen_ids if o in kid_pool], [o for o in ref_ids if o in kid_pool])
                    size = default_subset_size(len(g), len(r))
                    pooled, spread = kid_from_features(g, r, subset_size=size, device=device)
                    entry = dataclasses.replace(entry, gen_objects=est.objects_a, gen_views=est.views_a,
                                                ref_objects=est.objects_b, ref_views=est.views_b, value=est.value,
                                                se=est.se, ci_low=est.ci_low, ci_high=est.ci_high,
                                                paper_value=pooled, paper_std=spread, paper_subset_size=size)
                else:
                    est = fid_by_object(g, r, gen_labels[g_rows], ref_labels[r_rows],
                                        device=device)
                    entry = dataclasses.replace(entry, value=est.value, value_objects=est.n_objects,
                                                paper_value=est.value_all_views)
            except ValueError as exc:
                entry.error = str(exc)
            per_group[group] = entry
        overall = per_group.pop("overall")
        records[name] = SetMetricRecord(name, weights_id, preset.hash, str(ref_folder), overall, per_group, settings)
        stored.records[name] = records[name]
        stored.unreadable.pop(name, None)
    write_set_scores(run_dir, stored)
    return records
