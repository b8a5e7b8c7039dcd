"""Typed records of the set metrics (KID, FID) that ``mme3dr score`` writes to ``RUN/set_scores.json``.

The file maps a set metric's name (``kid``, ``fid``, ``kid_dinov2``, ``fid_dinov2``) to a :class:`SetMetricRecord`:
the feature extractor, the preset hash, the reference folder, the settings, and a :class:`SetScore` overall and
per category. Values are raw (KID is *not* multiplied by 100 here; tables show it x100). Every value comes with
the counts it was computed from (objects and views of both sets), because FID and the pooled KID depend on them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mme3dr import runfiles
from mme3dr.errors import InputError
from mme3dr.jsonl import read_json

#: Version of the set_scores.json layout; files without it were written before KID became object-aware.
FORMAT = 2
#: What to do about a damaged set_scores.json.
SET_SCORES_REMEDY = "delete it and run `mme3dr score RUN` with the set metrics again"


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
    #: ``value_objects`` generated objects against every reference view (:func:`~mme3dr.metrics.fidelity.fid_by_object`).
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


def read_set_scores(run_dir: Path | str) -> tuple[dict[str, SetMetricRecord], list[str]]:
    """The run's set-metric records, and one warning per record that could not be read (older format)."""
    path = Path(run_dir) / runfiles.SET_SCORES
    raw = read_json(path, SET_SCORES_REMEDY) if path.exists() else {}
    records, problems = {}, []
    for name, d in raw.items():
        try:
            records[name] = SetMetricRecord.from_json(name, d)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path}: {exc}")
    return records, problems
