"""A run's score records, typed, with the one reader and writer of ``RUN/scores.jsonl`` and ``RUN/set_scores.json``.

The scoring stage (:mod:`mme3dr.scoring`) writes them; the report, ``mme3dr paper`` and ``mme3dr evaluate`` read them
through :func:`read_scores` and :func:`read_set_scores` only, so the files' layout is spelled out here once.

``scores.jsonl``: one :class:`ScoreRecord` per line, one per (prompt, metric) after a scoring pass (appended and
fsynced as each prompt is scored, then compacted to the latest record of each pair). A line torn by a crash is cut
off before the next append (:func:`mme3dr.jsonl.repair_tail`) and skipped by the reader with a warning.
Records written by older versions may lack fields; they read with the defaults below.

``set_scores.json``: a JSON object mapping a set metric's name (``kid``, ``fid``, ``kid_dinov2``, ``fid_dinov2``) to
a :class:`SetMetricRecord`: the feature extractor, the preset hash, the reference folder, the settings, and a
:class:`SetScore` overall and per category. Values are raw (KID is *not* multiplied by 100 here; tables show it
x100). Every value comes with the counts it was computed from (objects and views of both sets), because FID and
the pooled KID depend on them. An entry in an older layout is kept on disk as it is and reported as a problem.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mme3dr import runfiles
from mme3dr.errors import InputError
from mme3dr.jsonl import append_jsonl, atomic_write_text, read_json, read_jsonl, repair_tail, write_jsonl

#: Version of the set_scores.json layout; files without it were written before KID became object-aware.
FORMAT = 2
#: What to do about a damaged set_scores.json.
SET_SCORES_REMEDY = "delete it and run `mme3dr score RUN` with the set metrics again"
#: What to do about a scores.jsonl record that is not a score record.
SCORES_REMEDY = "remove that line (its prompt is scored again by `mme3dr score RUN`)"


@dataclass
class ScoreRecord:
    """One per-prompt metric result of a run: a line of ``scores.jsonl``.

    ``config_hash``, ``preset_hash`` (None for metrics that read the asset, not its renders) and ``asset_sha256``
    make the cache key (:meth:`cache_key`): a record whose key is unchanged is not scored again.
    """

    prompt_id: str
    metric: str
    category: str | None = None
    config_hash: str | None = None
    #: Everything that changes the metric's numbers (model ids, weights, parameters).
    config: dict[str, Any] = field(default_factory=dict)
    preset_hash: str | None = None
    asset_sha256: str | None = None
    #: For each key of ``values``: "higher", "lower" or "none".
    directions: dict[str, str] = field(default_factory=dict)
    values: dict[str, float | None] = field(default_factory=dict)
    per_view: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def cache_key(self) -> tuple[str, str, str | None, str | None, str | None]:
        """(prompt, metric, metric config hash, render preset hash, asset sha256)."""
        return (self.prompt_id, self.metric, self.config_hash, self.preset_hash, self.asset_sha256)

    def to_json(self) -> dict[str, Any]:
        """The line's JSON object, keys in the order ``scores.jsonl`` has always had."""
        d = asdict(self)
        order = ("prompt_id", "category", "metric", "config_hash", "config", "preset_hash", "asset_sha256",
                 "directions", "values", "per_view", "details", "error", "seconds")
        return {k: d[k] for k in order}

    @classmethod
    def from_json(cls, d: Any) -> ScoreRecord:
        """A record from a parsed line; missing optional fields take their defaults, unknown keys are ignored.
        Raises ``ValueError`` when ``d`` is not an object with a ``prompt_id`` and a ``metric``."""
        if not isinstance(d, dict) or not isinstance(d.get("prompt_id"), str) or not isinstance(d.get("metric"), str):
            raise ValueError("not a score record (needs a prompt_id and a metric)")
        kwargs = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for name in ("config", "directions", "values", "per_view", "details"):
            if kwargs.get(name) is None:
                kwargs.pop(name, None)
            elif not isinstance(kwargs[name], dict):
                raise ValueError(f"{name} is {type(kwargs[name]).__name__}, not an object")
        return cls(**kwargs)


def scores_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / runfiles.SCORES


def read_scores(run_dir: Path | str) -> list[ScoreRecord]:
    """Every record of ``RUN/scores.jsonl`` in file order ([] when there is none). A torn last line is skipped
    with a warning; a line that is not a score record raises :class:`~mme3dr.errors.InputError` naming it."""
    path = scores_path(run_dir)
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
        try:
            out.append(ScoreRecord.from_json(row))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}, record {i}: {exc}; {SCORES_REMEDY}") from None
    return out


def repair_scores(run_dir: Path | str) -> int:
    """Cut a line torn by a crash off ``RUN/scores.jsonl`` (its record is scored again); bytes dropped."""
    return repair_tail(scores_path(run_dir))


def append_score(run_dir: Path | str, record: ScoreRecord) -> None:
    """Append ``record`` to ``RUN/scores.jsonl``, durable before this returns."""
    append_jsonl(scores_path(run_dir), record.to_json())


def keep_latest_scores(run_dir: Path | str) -> None:
    """Rewrite ``RUN/scores.jsonl`` (atomically) with one record per (prompt, metric): the latest."""
    path = scores_path(run_dir)
    if path.exists():
        latest = {(r.prompt_id, r.metric): r for r in read_scores(run_dir)}
        write_jsonl(path, [r.to_json() for r in latest.values()])


@dataclass
class SetScore:
    """One set-metric value for one group of prompts (all of them, or one category)."""

    #: MME-3DR category of the reference objects compared against, or "all" (the whole reference set: the
    #: reference has no objects of this category).
    reference_subset: str
    gen_objects: int
    gen_views: int
    ref_objects: int
    ref_views: int
    #: KID: the object-aware estimate (:func:`mme3dr.metrics.fidelity.kid_by_object`). FID: the mean over draws of
    #: ``value_objects`` generated objects against every reference view
    #: (:func:`~mme3dr.metrics.fidelity.fid_by_object`).
    value: float | None = None
    #: KID: bootstrap standard error over objects and the 95% percentile interval.
    se: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    #: FID: generated objects per draw (below the default when the group has fewer objects).
    value_objects: int | None = None
    #: Paper-style value for comparison with published tables. KID: views pooled as independent samples
    #: (torch-fidelity subsets of ``paper_subset_size`` views); FID: every generated view against every reference
    #: view. Both depend on the counts above.
    paper_value: float | None = None
    #: KID pooled: standard deviation over subsets (a spread, not an interval). FID: spread over the draws.
    paper_std: float | None = None
    paper_subset_size: int | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SetScore:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class SetMetricRecord:
    """A set metric of one run: overall and per-category :class:`SetScore` with how they were computed."""

    metric: str
    extractor: str
    preset_hash: str
    reference: str
    overall: SetScore
    per_category: dict[str, SetScore] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT

    def groups(self) -> dict[str, SetScore]:
        """``{"overall": ..., category: ...}``."""
        return {"overall": self.overall, **self.per_category}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> SetMetricRecord:
        if d.get("format") != FORMAT:
            raise InputError(f"set metric {name!r} was written by an older mme3dr (format {d.get('format', 1)}, "
                             f"need {FORMAT}); re-run `mme3dr score RUN --metrics {name} --reference REF`")
        return cls(d["metric"], d["extractor"], d["preset_hash"], d["reference"], SetScore.from_json(d["overall"]),
                   {c: SetScore.from_json(e) for c, e in d.get("per_category", {}).items()}, d.get("settings", {}))


@dataclass
class SetScores:
    """The whole of ``RUN/set_scores.json``: the readable records by metric name, one message per entry that could
    not be read (``problems``), and those entries as found (``unreadable``), kept when the file is written again."""

    records: dict[str, SetMetricRecord] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unreadable: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.unreadable, **{name: rec.to_json() for name, rec in self.records.items()}}


def set_scores_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / runfiles.SET_SCORES


def read_set_scores(run_dir: Path | str) -> SetScores:
    """The run's set-metric records (empty when the run has none). A file that is not valid JSON raises
    :class:`~mme3dr.errors.InputError` saying what to do; an entry in an older layout becomes a problem."""
    path = set_scores_path(run_dir)
    raw = read_json(path, SET_SCORES_REMEDY) if path.exists() else {}
    if not isinstance(raw, dict):
        raise InputError(f"{path} is not a JSON object of set metrics; {SET_SCORES_REMEDY}")
    out = SetScores()
    for name, d in raw.items():
        try:
            out.records[name] = SetMetricRecord.from_json(name, d)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            out.problems.append(f"{path}: {exc}")
            out.unreadable[name] = d
    return out


def write_set_scores(run_dir: Path | str, scores: SetScores) -> None:
    """Replace ``RUN/set_scores.json`` atomically with ``scores`` (its unreadable entries kept as they were)."""
    atomic_write_text(set_scores_path(run_dir), json.dumps(scores.to_json(), indent=1))
