"""Leaderboard tables from one or more runs.

Per run (= one model) and per ranked value (e.g. ``clip``, ``stable``, ``vlm_checklist``) of a metric the run
scored; a run's numbers never depend on which other runs share the report:

- per category: mean over the category's prompts that have the value, with a bootstrap 95% interval
  (``<category>_lo``/``_hi``);
- ``micro``: mean over all prompts that have the value; ``micro_lo``/``micro_hi``: its bootstrap 95% interval
  (prompts resampled with replacement, ``DEFAULTS.report_bootstrap`` times, seed ``DEFAULTS.report_seed``;
  2.5th and 97.5th percentiles); ``n`` prompts with the value, ``n_missing`` without;
- ``micro_worst``: the mean over all the run's prompts, every prompt without a value (failed generation, render or
  metric) counted as the value's fixed worst value (``mme3dr.defaults.WORST_VALUES``);
  ``<category>_worst``: the same within a category;
- ``macro``: the mean of ``<category>_worst`` over all five categories, so a category whose prompts all failed
  counts as the worst value instead of being skipped. Empty when the run did not attempt all five categories.
  For a value without a fixed worst (an unbounded count) ``micro_worst`` is empty and ``macro`` is the mean of the
  five category means, empty unless every category has a value.

Set metrics come from each run's ``set_scores.json`` (:mod:`mme3dr.score_records`), overall (in ``micro``) and
per category, each with the reference subset and the counts of objects and views it was computed from
(:func:`set_details`): ``kid_x100`` (object-aware, with its bootstrap-over-objects 95% interval ``_lo``/``_hi`` and
standard error ``_se``), ``fid`` (at a fixed number of generated objects), and the paper-style
``kid_pooled_x100`` (with ``_std``, the standard deviation over subsets: a spread, not an interval) and
``fid_all_views``; likewise with ``_dinov2``. :func:`report_warnings` flags runs whose set metrics were computed
from different counts or references. :func:`paired_differences` gives, for every pair of runs, the difference
of their means on the prompts both attempted with a paired bootstrap 95% interval.
``success`` is the share of the run's prompts that produced an asset.
Some values are printed beside another's table too (:data:`mme3dr.metrics.vlm.REPORT_BESIDE`: the all-yes and
all-no baselines and the unparsed answers beside ``vlm_checklist``), as their micro means (:func:`beside`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mme3dr import runfiles
from mme3dr.categories import CATEGORIES
from mme3dr.defaults import DEFAULTS, WORST_VALUES
from mme3dr.errors import MissingInputError
from mme3dr.generation import read_generations
from mme3dr.metrics.vlm import REPORT_BESIDE
from mme3dr.runinfo import read_run_info
from mme3dr.score_records import SetMetricRecord, read_scores, read_set_scores

FAILURE_POLICY = ("Failed prompts (no asset, or a metric that could not be computed) are reported three ways: "
                  "`success` is the share of prompts with an asset; `micro` and the category columns average over "
                  "the prompts that have a value; `micro (failures as worst)` and `macro` count every missing value "
                  "as the metric's fixed worst value (mme3dr.defaults.WORST_VALUES: e.g. 0 for CLIP and the VLM "
                  "scores), and `macro` averages all five categories, so failing a whole category is never "
                  "rewarded. Set metrics (KID, FID) use the assets that exist; read them beside `success`.")

#: set_scores.json metric -> (leaderboard key of the main value, key of the paper-style value, scale)
SET_KEYS = {"kid": ("kid_x100", "kid_pooled_x100", 100.0),
            "kid_dinov2": ("kid_dinov2_x100", "kid_dinov2_pooled_x100", 100.0),
            "fid": ("fid", "fid_all_views", 1.0), "fid_dinov2": ("fid_dinov2", "fid_dinov2_all_views", 1.0)}
SET_INFO_COLUMNS = ("reference_subset", "gen_objects", "gen_views", "ref_objects", "ref_views", "value_objects")


@dataclass
class RunData:
    """Everything a report needs from one run folder."""

    path: Path
    name: str
    info: dict[str, Any]
    prompts: pd.DataFrame  # prompt_id, category, prompt, generated
    values: pd.DataFrame  # prompt_id, category, metric, key, value
    directions: dict[str, str]
    details: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (prompt_id, metric) -> details
    set_scores: dict[str, SetMetricRecord] = field(default_factory=dict)
    #: value keys of the metrics this run scored (from every record, failed ones included), first-seen order
    keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what could not be read


def load_run(path: Path | str, name: str | None = None) -> RunData:
    path = Path(path)
    gens = read_generations(path)
    if not gens:
        raise MissingInputError(f"{path}: no {runfiles.GENERATIONS}; is this a run folder?")
    info = read_run_info(path)
    model = info.get("model", {}).get("name") or next(iter(gens.values())).model.get("name", path.name)
    prompts = pd.DataFrame([{"prompt_id": g.prompt_id, "category": g.category, "prompt": g.prompt,
                             "generated": g.ok} for g in gens.values()])
    rows, directions, details, keys = [], {}, {}, {}
    for r in read_scores(path):
        details[(r.prompt_id, r.metric)] = {"details": r.details, "error": r.error, "values": r.values}
        directions.update(r.directions)
        keys.update(dict.fromkeys([*r.directions, *r.values]))
        for key, value in r.values.items():
            rows.append({"prompt_id": r.prompt_id, "category": r.category, "metric": r.metric, "key": key,
                         "value": np.nan if value is None else float(value)})
    values = pd.DataFrame(rows, columns=["prompt_id", "category", "metric", "key", "value"])
    sets = read_set_scores(path)
    return RunData(path, name or model, info, prompts, values, directions, details, sets.records, list(keys),
                   sets.problems)


def bootstrap_ci(x: np.ndarray, reps: int = DEFAULTS.report_bootstrap,
                 seed: int = DEFAULTS.report_seed) -> tuple[float, float]:
    """95% percentile interval of the mean of ``x`` (NaN-free) by resampling with replacement."""
    if len(x) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(reps, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def metric_keys(runs: list[RunData]) -> list[str]:
    """Value keys scored in any run, in first-seen order."""
    seen: dict[str, None] = {}
    for run in runs:
        seen.update(dict.fromkeys(run.keys))
    return list(seen)


def _ranked(run: RunData, key: str) -> bool:
    return run.directions.get(key, "higher") in ("higher", "lower")


def prompt_values(run: RunData, key: str) -> pd.DataFrame:
    """One row per prompt of the run (prompt_id index): category, value (NaN when missing), value with failures
    counted as the fixed worst (NaN when the key has none)."""
    per_prompt = run.values[run.values["key"] == key].drop_duplicates("prompt_id", keep="last")
    full = run.prompts.set_index("prompt_id")[["category"]].join(per_prompt.set_index("prompt_id")["value"])
    worst = WORST_VALUES.get(key)
    full["penalised"] = full["value"].fillna(worst) if worst is not None else np.nan
    return full


def _prompt_rows(run: RunData, key: str) -> list[dict[str, Any]]:
    full = prompt_values(run, key)
    have = full["value"].dropna()
    by_cat = {c: g for c, g in full.groupby("category")}
    rows: dict[str, float] = {}
    for cat, g in by_cat.items():
        if g["value"].notna().any():
            rows[cat] = float(g["value"].mean())
            rows[f"{cat}_lo"], rows[f"{cat}_hi"] = bootstrap_ci(g["value"].dropna().to_numpy())
        if WORST_VALUES.get(key) is not None:
            rows[f"{cat}_worst"] = float(g["penalised"].mean())
    lo, hi = bootstrap_ci(have.to_numpy())
    rows.update({"micro": have.mean() if len(have) else np.nan, "micro_lo": lo, "micro_hi": hi,
                 "n": float(len(have)), "n_missing": float(len(full) - len(have))})
    if WORST_VALUES.get(key) is not None:
        rows["micro_worst"] = float(full["penalised"].mean())
        per_cat = [rows.get(f"{c}_worst") for c in CATEGORIES]
    else:
        per_cat = [rows.get(c) for c in CATEGORIES]
    rows["macro"] = float(np.mean(per_cat)) if all(v is not None for v in per_cat) else np.nan
    return [{"run": run.name, "key": key, "column": c, "value": v} for c, v in rows.items()]


def _set_rows(run: RunData) -> list[dict[str, Any]]:
    rows = []
    for name, rec in run.set_scores.items():
        main, paper, scale = SET_KEYS.get(name, (name, f"{name}_paper", 1.0))
        for group, e in rec.groups().items():
            col = "micro" if group == "overall" else group
            if e.value is not None:
                rows.append({"run": run.name, "key": main, "column": col, "value": scale * e.value})
                for suffix, v in (("lo", e.ci_low), ("hi", e.ci_high), ("se", e.se)):
                    if v is not None:
                        rows.append({"run": run.name, "key": main, "column": f"{col}_{suffix}", "value": scale * v})
            if e.paper_value is not None:
                rows.append({"run": run.name, "key": paper, "column": col, "value": scale * e.paper_value})
                if e.paper_std is not None:
                    rows.append({"run": run.name, "key": paper, "column": f"{col}_std",
                                 "value": scale * e.paper_std})
    return rows


def leaderboard(runs: list[RunData]) -> pd.DataFrame:
    """Long table: run, metric key, column (category / micro / macro / ...), value."""
    rows = []
    for run in runs:
        rows.append({"run": run.name, "key": "success", "column": "micro", "value": run.prompts["generated"].mean()})
        for cat in CATEGORIES:
            sub = run.prompts[run.prompts["category"] == cat]
            if len(sub):
                rows.append({"run": run.name, "key": "success", "column": cat, "value": sub["generated"].mean()})
        for key in metric_keys(runs):
            if key in run.keys:  # unranked values (no direction) too: they are printed, never ranked
                rows += _prompt_rows(run, key)
        rows += _set_rows(run)
    return pd.DataFrame(rows, columns=["run", "key", "column", "value"])


def beside(board: pd.DataFrame, key: str) -> pd.DataFrame:
    """Rows = runs; one column per value printed beside ``key`` (``REPORT_BESIDE``, labelled), holding that
    value's micro mean. Empty when ``key`` has none."""
    micro = board[board["column"] == "micro"]
    return pd.DataFrame({label: micro[micro["key"] == other].set_index("run")["value"]
                         for other, label in REPORT_BESIDE.get(key, ())})


def set_details(runs: list[RunData]) -> pd.DataFrame:
    """Per run, set-metric key and group: the reference folder, the reference subset and the counts behind it."""
    rows = []
    for run in runs:
        for name, rec in run.set_scores.items():
            main, paper, _ = SET_KEYS.get(name, (name, f"{name}_paper", 1.0))
            for group, e in rec.groups().items():
                base = {"run": run.name, "group": "micro" if group == "overall" else group,
                        "reference": rec.reference, **{c: getattr(e, c) for c in SET_INFO_COLUMNS}}
                rows.append({**base, "key": main})
                rows.append({**base, "key": paper, "value_objects": None})
    return pd.DataFrame(rows, columns=["run", "key", "group", "reference", *SET_INFO_COLUMNS], dtype=object)


#: What a set value depends on besides the assets: the main KID only on the reference; FID also on the number of
#: generated objects per draw; the paper-style values also on the numbers of generated objects and views.
_DEPENDS = {"kid_x100": (), "fid": ("value_objects",), "paper": ("gen_objects", "gen_views")}


def report_warnings(runs: list[RunData], details: pd.DataFrame) -> list[str]:
    """Comparability warnings: set values computed from different counts or references, unreadable records,
    ranked values without a fixed worst value."""
    out = [p for run in runs for p in run.problems]
    for key in metric_keys(runs):
        if key not in WORST_VALUES and any(key in r.keys and _ranked(r, key) for r in runs):
            out.append(f"{key}: no fixed worst value, so its failures are not penalised (micro_worst empty); add it "
                       f"to mme3dr.defaults.WORST_VALUES")
    if len(runs) < 2 or details.empty:
        return out
    for key, g in details.groupby("key", sort=False):
        kind = "paper" if key.endswith(("_pooled_x100", "_all_views")) else key.replace("_dinov2", "")
        cols = ["reference", "reference_subset", "ref_objects", "ref_views", *_DEPENDS.get(kind, ())]
        differ = [grp for grp, gg in g.groupby("group", sort=False)
                  if len(gg["run"].unique()) > 1 and len(gg[cols].astype(str).drop_duplicates()) > 1]
        if differ:
            parts = "; ".join(f"{r.run}: " + ", ".join(f"{c}={getattr(r, c)}" for c in cols[1:])
                              for r in g[g["group"] == differ[0]].itertuples())
            names = [_group_name(d) for d in differ]
            out.append(f"{key}: runs were computed from different counts or references in {', '.join(names)} "
                       f"({names[0]}: {parts}); {key} depends on them, so these runs do not compare directly")
    return out


def paired_differences(runs: list[RunData], reps: int = DEFAULTS.report_bootstrap,
                       seed: int = DEFAULTS.report_seed) -> pd.DataFrame:
    """For every pair of runs (a before b in the report) and every ranked value both scored: mean(a) - mean(b) over
    the prompts both attempted, with failures counted as the fixed worst value (``basis`` "failures as worst"),
    or over the prompts both have a value for when the value has no fixed worst ("both scored"); the 95%
    interval resamples those prompts with replacement, the same prompts for both runs (paired bootstrap).
    ``favours`` names the better run when the interval excludes 0."""
    rows = []
    for a, b in itertools.combinations(runs, 2):
        for key in metric_keys(runs):
            if not (key in a.keys and key in b.keys and _ranked(a, key)):
                continue
            va, vb = prompt_values(a, key), prompt_values(b, key)
            both = va.merge(vb, how="inner", left_index=True, right_index=True, suffixes=("_a", "_b"))
            basis = "failures as worst" if WORST_VALUES.get(key) is not None else "both scored"
            col = "penalised" if basis == "failures as worst" else "value"
            both = both[[f"{col}_a", f"{col}_b"]].dropna()
            if len(both) < 2:
                continue
            d = (both[f"{col}_a"] - both[f"{col}_b"]).to_numpy()
            lo, hi = bootstrap_ci(d, reps, seed)
            sign = 1 if a.directions.get(key, "higher") == "higher" else -1
            favours = a.name if sign * lo > 0 and sign * hi > 0 else b.name if sign * lo < 0 and sign * hi < 0 else ""
            rows.append({"run_a": a.name, "run_b": b.name, "key": key, "basis": basis, "n_prompts": len(d),
                         "mean_a": float(both[f"{col}_a"].mean()), "mean_b": float(both[f"{col}_b"].mean()),
                         "difference": float(d.mean()), "lo": lo, "hi": hi, "favours": favours})
    return pd.DataFrame(rows, columns=["run_a", "run_b", "key", "basis", "n_prompts", "mean_a", "mean_b",
                                       "difference", "lo", "hi", "favours"])


def wide(board: pd.DataFrame, details: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run, one column per ``key:column``; with ``details``, the set metrics' reference subset and
    counts as ``key:group:reference_subset``, ``key:group:gen_objects`` and so on."""
    if board.empty:
        return pd.DataFrame()
    w = board.assign(col=board["key"] + ":" + board["column"]).pivot_table(
        index="run", columns="col", values="value", aggfunc="first", sort=False)
    w = w.reindex(columns=list(dict.fromkeys(board["key"] + ":" + board["column"])))
    if details is None or details.empty:
        return w
    extra = {}
    for r in details.itertuples():
        for c in SET_INFO_COLUMNS:
            v = getattr(r, c)
            if v is not None and not (isinstance(v, float) and np.isnan(v)):
                extra.setdefault(f"{r.key}:{r.group}:{c}", {})[r.run] = v
    return pd.concat([w, pd.DataFrame(extra, dtype=object).reindex(w.index)], axis=1)


def directions(runs: list[RunData]) -> dict[str, str]:
    out = {"success": "higher"}
    for run in runs:
        out.update(run.directions)
        for name in run.set_scores:
            out.update(dict.fromkeys(SET_KEYS.get(name, (name, f"{name}_paper", 1.0))[:2], "lower"))
    return out


def reference_label(details: pd.DataFrame, run: str, key: str, group: str) -> str:
    """``spatial (40 vs 12 objects)``: the reference subset, generated and reference objects behind a set value."""
    r = details[(details["run"] == run) & (details["key"] == key) & (details["group"] == group)]
    if r.empty:
        return ""
    r = r.iloc[0]
    return f"{r['reference_subset']} ({r['gen_objects']} vs {r['ref_objects']} objects)"


def _group_name(column: str) -> str:
    return "overall" if column == "micro" else column


def _ci(v: dict[str, float]) -> str:
    lo, hi = v.get("micro_lo"), v.get("micro_hi")
    return "" if lo is None or hi is None or np.isnan(lo) or np.isnan(hi) else f"[{_fmt(lo)}, {_fmt(hi)}]"


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4g}"


SET_TITLES = {"kid_x100": "object-aware KID x100; 95% CI: bootstrap over objects",
              "kid_pooled_x100": "paper-style KID x100, views pooled as independent samples (biased upwards for "
                                 "multi-view sets; for comparison with published tables only)",
              "fid": f"FID at {DEFAULTS.fid_objects} generated objects (mean of {DEFAULTS.fid_draws} draws)",
              "fid_all_views": "paper-style FID on all views (depends on the numbers of views)"}


def _set_title(key: str) -> str:
    return SET_TITLES.get(key.replace("_dinov2", ""), "").replace("KID", "KID (DINOv2)" if "dinov2" in key else "KID")


def markdown(board: pd.DataFrame, dirs: dict[str, str], details: pd.DataFrame | None = None,
             paired: pd.DataFrame | None = None, warnings: list[str] | None = None) -> str:
    """One Markdown table per value. Per-prompt values: rows = runs; micro [95% CI], micro (failures as worst),
    macro, categories. Set values: overall [95% CI], categories, and under each run the reference subset and
    object counts of every column. Then the warnings and the paired differences."""
    details = details if details is not None else pd.DataFrame(columns=["run", "key", "group", *SET_INFO_COLUMNS])
    out = [f"> {FAILURE_POLICY}\n"]
    if warnings:
        out += ["**Warnings**\n", *[f"- {w}" for w in warnings], ""]
    set_keys = set(details["key"])
    for key in dict.fromkeys(board["key"]):
        sub = board[board["key"] == key]
        arrow = {"higher": " (higher is better)", "lower": " (lower is better)"}.get(dirs.get(key, ""), "")
        cats = [c for c in CATEGORIES if c in set(sub["column"])]
        if key in set_keys:
            header = ["run", "overall", "95% CI", *cats]
            out += [f"### {key}{arrow}\n", f"{_set_title(key)}.\n", "| " + " | ".join(header) + " |",
                    "|" + "---|" * len(header)]
            for run, g in sub.groupby("run", sort=False):
                v = dict(zip(g["column"], g["value"]))
                out.append("| " + " | ".join([run, _fmt(v.get("micro")), _ci(v), *[_fmt(v.get(c)) for c in cats]])
                           + " |")
                refs = [reference_label(details, run, key, c) for c in ("micro", *cats)]
                out.append("| " + " | ".join([f"{run}: reference (gen vs ref objects)", refs[0], "", *refs[1:]]) + " |")
        else:
            extra = beside(board, key)
            header = ["run", "micro", "95% CI", "micro (failures as worst)", "macro", *cats, *extra.columns]
            out += [f"### {key}{arrow}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for run, g in sub.groupby("run", sort=False):
                v = dict(zip(g["column"], g["value"]))
                out.append("| " + " | ".join([run, _fmt(v.get("micro")), _ci(v), _fmt(v.get("micro_worst")),
                                              _fmt(v.get("macro")), *[_fmt(v.get(c)) for c in cats],
                                              *[_fmt(extra[c].get(run)) for c in extra.columns]]) + " |")
        out.append("")
    if paired is not None and not paired.empty:
        out += ["### Paired differences (a - b) on the prompts both runs attempted\n",
                "95% interval: paired bootstrap over prompts. `favours`: the better run when the interval "
                "excludes 0.\n",
                "| key | run a | run b | basis | prompts | mean a | mean b | a - b | 95% CI | favours |",
                "|" + "---|" * 10]
        out += [f"| {r.key} | {r.run_a} | {r.run_b} | {r.basis} | {r.n_prompts} | {_fmt(r.mean_a)} | "
                f"{_fmt(r.mean_b)} | {_fmt(r.difference)} | [{_fmt(r.lo)}, {_fmt(r.hi)}] | {r.favours} |"
                for r in paired.itertuples()]
        out.append("")
    return "\n".join(out)
