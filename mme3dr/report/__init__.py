"""Leaderboards and reports from run folders: CSV, Markdown, JSON, HTML and plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mme3dr import runfiles
from mme3dr.categories import CATEGORIES
from mme3dr.defaults import WORST_VALUES
from mme3dr.errors import InputError
from mme3dr.jsonl import atomic_write_text
from mme3dr.paths import UnsafePathError, child_path
from mme3dr.report import plots as P
from mme3dr.report.html import render_html
from mme3dr.report.tables import (FAILURE_POLICY, SET_INFO_COLUMNS, RunData, beside, directions, leaderboard,
                                  load_run, markdown, metric_keys, paired_differences, reference_label,
                                  report_warnings, set_details, wide)


@dataclass
class ReportFiles:
    folder: Path
    csv: Path
    markdown: Path
    json: Path
    html: Path
    paired: Path
    plots: list[Path]


def _render_folder(run: RunData) -> Path | None:
    """The run's render folder of its preset (``run.json``), else its first one; never a folder outside the run."""
    tag = (run.info.get("preset") or {}).get("tag")
    try:
        folder = child_path(run.path, runfiles.RENDERS_DIR, str(tag), what="run.json preset tag") if tag else None
    except UnsafePathError:
        folder = None
    if folder is not None and folder.is_dir():
        return folder
    renders = run.path / runfiles.RENDERS_DIR
    for found in sorted(renders.glob("*/")) if renders.is_dir() else []:
        try:  # a link out of the run is skipped
            return child_path(run.path, runfiles.RENDERS_DIR, found.name, what="render folder")
        except UnsafePathError:
            continue
    return None


DETAIL_COLUMNS = ("micro", "micro_lo", "micro_hi", "micro_se", "micro_std", "micro_worst", "macro", "n", "n_missing")


def _detail_table(g: pd.DataFrame, details: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """Rows = runs; the summary columns, then the categories in the paper's order (intervals stay in the plots);
    the values printed beside this one (``extra``, from :func:`beside`); for a set metric, the reference subset and
    object counts of every column."""
    t = g.pivot_table(index="run", columns="column", values="value", aggfunc="first", sort=False)
    cols = [c for c in (*DETAIL_COLUMNS, *CATEGORIES) if c in t.columns]
    t = t[cols].join(extra).reset_index()
    key = g["key"].iloc[0]
    if key in set(details["key"]):
        groups = [c for c in ("micro", *CATEGORIES) if c in cols]
        t["reference (gen vs ref objects)"] = [
            "; ".join(f"{'overall' if c == 'micro' else c}: {reference_label(details, run, key, c)}" for c in groups)
            for run in t["run"]]
    return t


def _unique_names(runs: list[RunData]) -> None:
    """Runs of the same model get their folder name appended, so every row is distinct."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    for run in runs:
        if counts[run.name] > 1:
            run.name = f"{run.name} ({run.path.name})"


def build_report(run_dirs: list[Path | str], out: Path | str, title: str = "MME-3DR report",
                 plots: bool = True, names: list[str] | None = None) -> ReportFiles:
    """Write leaderboard.{csv,md,json}, paired_differences.csv, report.html and plots/ for ``run_dirs`` into ``out``.
    ``names`` labels the rows in order (default: each run's model name, made unique with its folder name)."""
    names = list(names or [])
    if len(names) > len(run_dirs):
        raise InputError(f"{len(names)} --name values for {len(run_dirs)} runs")
    out = Path(out)
    runs = [load_run(p, names[i] if i < len(names) else None) for i, p in enumerate(run_dirs)]
    _unique_names(runs)
    out.mkdir(parents=True, exist_ok=True)
    board = leaderboard(runs)
    dirs = directions(runs)
    details = set_details(runs)
    warnings = report_warnings(runs, details)
    paired = paired_differences(runs)
    w = wide(board, details)
    csv_path, md_path, json_path = out / "leaderboard.csv", out / "leaderboard.md", out / "leaderboard.json"
    paired_path = out / "paired_differences.csv"
    atomic_write_text(csv_path, w.to_csv())
    atomic_write_text(paired_path, paired.to_csv(index=False))
    atomic_write_text(md_path, f"# {title}\n\n" + markdown(board, dirs, details, paired, warnings))

    def entry(run: str, key: str, g2: pd.DataFrame) -> dict:
        d: dict = {c: (None if pd.isna(v) else float(v)) for c, v in zip(g2["column"], g2["value"])}
        refs = details[(details["run"] == run) & (details["key"] == key)]
        if len(refs):
            d["reference"] = {r["group"]: {c: (None if pd.isna(r[c]) else r[c]) for c in ("reference", *SET_INFO_COLUMNS)}
                              for r in refs.to_dict("records")}
        return d

    atomic_write_text(json_path, json.dumps({
        "failure_policy": FAILURE_POLICY, "worst_values": dict(WORST_VALUES), "directions": dirs,
        "warnings": warnings, "runs": {r.name: {"path": str(r.path), "run_info": r.info} for r in runs},
        "leaderboard": {run: {k: entry(run, k, g2) for k, g2 in g.groupby("key", sort=False)}
                        for run, g in board.groupby("run", sort=False)},
        "paired_differences": paired.to_dict("records"),
    }, indent=1, default=_json_default))
    figures: list[Path] = []
    if plots:
        (out / "plots").mkdir(exist_ok=True)
        for key in ["success", *metric_keys(runs)]:
            figures += P.grouped_bars(board, key, out / "plots")
            figures += P.radar(board, key, out / "plots")
            if key != "success":
                figures += P.distributions({r.name: r.values.loc[r.values["key"] == key, "value"] for r in runs},
                                           key, out / "plots")
    tables = {key: _detail_table(g, details, beside(board, key)) for key, g in board.groupby("key", sort=False)}
    page = render_html(runs, w, tables, figures, {r.name: _render_folder(r) for r in runs}, title, warnings, paired)
    html_path = out / "report.html"
    atomic_write_text(html_path, page)
    return ReportFiles(out, csv_path, md_path, json_path, html_path, paired_path, figures)


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


__all__ = ["FAILURE_POLICY", "ReportFiles", "build_report", "leaderboard", "load_run"]
