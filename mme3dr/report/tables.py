"""Leaderboard tables from one or more runs.

Per run (= one model) and per metric value (e.g. ``clip``, ``stable``, ``vlm_checklist``):

- per category: mean over the category's prompts that have the value;
- ``micro``: mean over all prompts that have the value; ``micro_lo``/``micro_hi``: its bootstrap 95% interval
  (prompts resampled with replacement, 1000 times, seed 0; 2.5th and 97.5th percentiles);
- ``macro``: mean of the category means;
- ``micro_worst``: the micro mean when every prompt without a value (failed generation, render or metric)
  counts as the worst value of that metric seen in any run of the report (minimum if higher is better,
  maximum if lower is better), so a model cannot gain by failing on hard prompts.
Set metrics (KID x100, FID) come from each run's ``set_scores.json``: overall and per category, with KID's std.
``success`` is the share of the run's prompts that produced an asset.
Some values are printed beside another's table too (:data:`mme3dr.metrics.vlm.REPORT_BESIDE`: the all-yes and
all-no baselines and the unparsed answers beside ``vlm_checklist``), as their micro means (:func:`beside`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mme3dr.categories import CATEGORIES
from mme3dr.defaults import DEFAULTS
from mme3dr.generation import read_generations
from mme3dr.jsonl import read_jsonl
from mme3dr.metrics.vlm import REPORT_BESIDE
from mme3dr.runinfo import RUN_FILE

FAILURE_POLICY = ("Failed prompts (no asset, or a metric that could not be computed) are reported three ways: "
                  "`success` is the share of prompts with an asset; `micro`, `macro` and the category columns "
                  "average over the prompts that have a value; `micro_worst` counts every missing value as the "
                  "worst value of that metric seen in any run of this report.")
BOOTSTRAP_REPS, BOOTSTRAP_SEED = 1000, 0


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
    set_scores: dict[str, Any] = field(default_factory=dict)


def load_run(path: Path | str, name: str | None = None) -> RunData:
    path = Path(path)
    gens = read_generations(path)
    if not gens:
        raise FileNotFoundError(f"{path}: no {DEFAULTS.generations_file}; is this a run folder?")
    info = json.loads((path / RUN_FILE).read_text()) if (path / RUN_FILE).exists() else {}
    model = info.get("model", {}).get("name") or next(iter(gens.values())).model.get("name", path.name)
    prompts = pd.DataFrame([{"prompt_id": g.prompt_id, "category": g.category, "prompt": g.prompt,
                             "generated": g.ok} for g in gens.values()])
    rows, directions, details = [], {}, {}
    for r in read_jsonl(path / DEFAULTS.scores_file):
        details[(r["prompt_id"], r["metric"])] = {"details": r.get("details", {}), "error": r.get("error"),
                                                   "values": r.get("values", {})}
        directions.update(r.get("directions", {}))
        for key, value in (r.get("values") or {}).items():
            rows.append({"prompt_id": r["prompt_id"], "category": r["category"], "metric": r["metric"], "key": key,
                         "value": np.nan if value is None else float(value)})
    values = pd.DataFrame(rows, columns=["prompt_id", "category", "metric", "key", "value"])
    sets_path = path / DEFAULTS.set_scores_file
    sets = json.loads(sets_path.read_text()) if sets_path.exists() else {}
    return RunData(path, name or model, info, prompts, values, directions, details, sets)


def bootstrap_ci(x: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% percentile interval of the mean of ``x`` (NaN-free) by resampling with replacement."""
    if len(x) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(reps, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def metric_keys(runs: list[RunData]) -> list[str]:
    """Value keys present in any run, in first-seen order."""
    seen: dict[str, None] = {}
    for run in runs:
        for key in run.values["key"]:
            seen.setdefault(key, None)
    return list(seen)


def worst_values(runs: list[RunData]) -> dict[str, float]:
    out = {}
    for key in metric_keys(runs):
        vals = pd.concat([r.values.loc[r.values["key"] == key, "value"] for r in runs]).dropna()
        direction = next((r.directions.get(key) for r in runs if key in r.directions), "higher")
        if len(vals) and direction in ("higher", "lower"):
            out[key] = float(vals.min() if direction == "higher" else vals.max())
    return out


def leaderboard(runs: list[RunData]) -> pd.DataFrame:
    """Long table: run, metric key, column (category / micro / macro / ...), value."""
    worst = worst_values(runs)
    rows = []
    for run in runs:
        n = len(run.prompts)
        rows.append({"run": run.name, "key": "success", "column": "micro", "value": run.prompts["generated"].mean()})
        for cat in CATEGORIES:
            sub = run.prompts[run.prompts["category"] == cat]
            if len(sub):
                rows.append({"run": run.name, "key": "success", "column": cat, "value": sub["generated"].mean()})
        for key in metric_keys(runs):
            per_prompt = run.values[run.values["key"] == key].set_index("prompt_id")["value"]
            full = run.prompts.set_index("prompt_id").join(per_prompt.rename("value"))
            have = full["value"].dropna()
            cat_means = {c: float(g.mean()) for c, g in full.groupby("category")["value"] if g.notna().any()}
            for cat, mean in cat_means.items():
                rows.append({"run": run.name, "key": key, "column": cat, "value": mean})
            lo, hi = bootstrap_ci(have.to_numpy())
            stats = {"micro": have.mean() if len(have) else np.nan, "micro_lo": lo, "micro_hi": hi,
                     "macro": float(np.mean(list(cat_means.values()))) if cat_means else np.nan,
                     "n": float(len(have)), "n_missing": float(n - len(have))}
            if key in worst:
                stats["micro_worst"] = float(full["value"].fillna(worst[key]).mean())
            rows += [{"run": run.name, "key": key, "column": c, "value": v} for c, v in stats.items()]
            for cat in cat_means:  # per-category intervals for the bar plots
                lo, hi = bootstrap_ci(full.loc[full["category"] == cat, "value"].dropna().to_numpy())
                rows += [{"run": run.name, "key": key, "column": f"{cat}_lo", "value": lo},
                         {"run": run.name, "key": key, "column": f"{cat}_hi", "value": hi}]
        for name, res in run.set_scores.items():
            scale = 100.0 if name.startswith("kid") else 1.0
            label = f"{name}_x100" if scale == 100.0 else name
            for group, entry in [("micro", res.get("overall", {})), *res.get("per_category", {}).items()]:
                if entry.get("value") is not None:
                    rows.append({"run": run.name, "key": label, "column": group, "value": scale * entry["value"]})
                    if "std" in entry:
                        rows.append({"run": run.name, "key": label, "column": f"{group}_std",
                                     "value": scale * entry["std"]})
    return pd.DataFrame(rows, columns=["run", "key", "column", "value"])


def beside(board: pd.DataFrame, key: str) -> pd.DataFrame:
    """Rows = runs; one column per value printed beside ``key`` (``REPORT_BESIDE``, labelled), holding that
    value's micro mean. Empty when ``key`` has none."""
    micro = board[board["column"] == "micro"]
    return pd.DataFrame({label: micro[micro["key"] == other].set_index("run")["value"]
                         for other, label in REPORT_BESIDE.get(key, ())})


def wide(board: pd.DataFrame) -> pd.DataFrame:
    """One row per run, one column per ``key:column``."""
    if board.empty:
        return pd.DataFrame()
    w = board.assign(col=board["key"] + ":" + board["column"]).pivot_table(
        index="run", columns="col", values="value", aggfunc="first", sort=False)
    return w.reindex(columns=list(dict.fromkeys(board["key"] + ":" + board["column"])))


def directions(runs: list[RunData]) -> dict[str, str]:
    out = {"success": "higher"}
    for run in runs:
        out.update(run.directions)
        for name in run.set_scores:
            out[f"{name}_x100" if name.startswith("kid") else name] = "lower"
    return out


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4g}"


def markdown(board: pd.DataFrame, dirs: dict[str, str]) -> str:
    """One Markdown table per metric value: rows = runs; micro [95% CI], micro_worst, macro, categories."""
    out = [f"> {FAILURE_POLICY}\n"]
    for key in dict.fromkeys(board["key"]):
        sub = board[board["key"] == key]
        arrow = {"higher": " (higher is better)", "lower": " (lower is better)"}.get(dirs.get(key, ""), "")
        cats = [c for c in CATEGORIES if c in set(sub["column"])]
        extra = beside(board, key)
        header = ["run", "micro", "95% CI", "micro (failures as worst)", "macro", *cats, *extra.columns]
        out += [f"### {key}{arrow}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for run, g in sub.groupby("run", sort=False):
            v = dict(zip(g["column"], g["value"]))
            ci = f"[{_fmt(v.get('micro_lo'))}, {_fmt(v.get('micro_hi'))}]" if "micro_lo" in v else (
                f"+- {_fmt(v['micro_std'])} (std)" if "micro_std" in v else "")
            out.append("| " + " | ".join([run, _fmt(v.get("micro")), ci, _fmt(v.get("micro_worst")),
                                          _fmt(v.get("macro")), *[_fmt(v.get(c)) for c in cats],
                                          *[_fmt(extra[c].get(run)) for c in extra.columns]]) + " |")
        out.append("")
    return "\n".join(out)
