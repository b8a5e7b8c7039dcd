"""The published MME-3DR tables (arXiv 2512.10949, rebuilt from the paper's text) beside a run's numbers.

Table 4 columns: CLIP score (cosine x100, higher is better), KD_incep x100, KD_dinov2 x100, FD_incep (lower is
better). A run contributes CLIP (micro mean of ``clip``) and the *paper-style* set values, computed the way
published tables compute them: KID x100 with every view an independent sample (the pooled estimator of
:func:`mme3dr.metrics.fidelity.kid_from_features`; ``kid``, ``kid_dinov2``) and FID on all views (``fid``). These
are for this comparison only: they depend on the numbers of objects and views (``gen_objects``/``gen_views``), and
the pooled KID favours generators whose views differ from each other; the leaderboard ranks with the
object-aware KID and the fixed-count FID. ``reference`` names the reference subset and its object count.
The ``d_*`` columns are the run's value minus each published row's.
"""

from __future__ import annotations

from importlib.resources import files
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mme3dr import runfiles
from mme3dr.errors import InputError, MissingInputError
from mme3dr.runinfo import read_run_info
from mme3dr.score_records import read_scores, read_set_scores

TABLES = {"4": "table4_main.csv", "1": "table1_rewards.csv", "2": "table2_algorithms.csv",
          "5": "table5_hi_grpo_rewards.csv", "6": "table6_paradigms.csv"}
TABLE4_COLUMNS = ("clip_score", "kd_incep_x100", "kd_dinov2_x100", "fd_incep")


def published(table: str = "4") -> pd.DataFrame:
    if table not in TABLES:
        raise InputError(f"no published table {table!r}; available: {', '.join(TABLES)}")
    return pd.read_csv(StringIO(files("mme3dr").joinpath(f"data/paper/{TABLES[table]}").read_text()))


def run_numbers(run_dir: Path | str) -> dict[str, Any]:
    """A run's numbers in Table 4's columns (NaN where the run lacks the metric), with the counts and the reference
    behind its set values (``problems``: set_scores records that could not be read)."""
    run_dir = Path(run_dir)
    clip = [r.values.get("clip") for r in read_scores(run_dir) if r.metric == "clip"]
    clip = [c for c in clip if c is not None]
    stored = read_set_scores(run_dir)
    sets, problems = stored.records, stored.problems

    def overall(name: str, scale: float) -> float:
        v = sets[name].overall.paper_value if name in sets else None
        return np.nan if v is None else scale * v

    first = next((r.overall for r in sets.values()), None)
    return {"clip_score": float(np.mean(clip)) if clip else np.nan, "kd_incep_x100": overall("kid", 100.0),
            "kd_dinov2_x100": overall("kid_dinov2", 100.0), "fd_incep": overall("fid", 1.0),
            "gen_objects": first.gen_objects if first else np.nan, "gen_views": first.gen_views if first else np.nan,
            "reference": f"{first.reference_subset} ({first.ref_objects} objects)" if first else "",
            "problems": problems}


def _check_run(run_dir: Path) -> None:
    if not (run_dir / runfiles.GENERATIONS).is_file():
        raise MissingInputError(f"{run_dir} is not a run folder (no {runfiles.GENERATIONS}); pass the --out folder "
                                "of `mme3dr evaluate` or `mme3dr generate`")


def run_notes(run_dir: Path | str) -> list[str]:
    """Why a run's Table 4 row may be empty: which of its columns the run has not scored, and how to score them."""
    run_dir = Path(run_dir)
    _check_run(run_dir)
    nums = run_numbers(run_dir)
    empty = [c for c in TABLE4_COLUMNS if np.isnan(nums[c])]
    if not empty:
        return []
    scored = sorted({r.metric for r in read_scores(run_dir)})
    needs = {"clip_score": "clip", "kd_incep_x100": "kid", "kd_dinov2_x100": "kid_dinov2", "fd_incep": "fid"}
    return [f"{run_dir}: no {', '.join(needs[c] for c in empty)} scores (it has: {', '.join(scored) or 'none'}), so "
            f"its {', '.join(empty)} cells are empty; add them with `mme3dr score {run_dir} --metrics "
            f"{','.join(needs[c] for c in empty)} --reference REF`"]


def run_label(run_dir: Path | str) -> str:
    """The model name recorded in ``run.json`` (the folder name when there is none)."""
    info = read_run_info(run_dir)
    return info.get("model", {}).get("name") or Path(run_dir).name


def table4_with_runs(run_dirs: list[Path | str] | None = None, names: list[str] | None = None,
                     benchmark: str | None = None) -> pd.DataFrame:
    """Table 4 (optionally only ``benchmark``'s rows), plus one row per run (benchmark "MME-3DR (this toolkit)").

    With exactly one run, ``d_<column>`` holds the run's value minus each published row's.
    """
    t = published("4")
    if benchmark is not None:
        t = t[t["benchmark"] == benchmark].reset_index(drop=True)
    t.insert(2, "source", "published")
    run_dirs = [Path(r) for r in run_dirs or []]
    for r in run_dirs:
        _check_run(r)
    names = list(names or []) + [run_label(r) for r in run_dirs[len(names or []):]]
    rows = []
    for run, name in zip(run_dirs, names):
        nums = run_numbers(run)
        note = "prompt set authored by this toolkit; not the official item list; KD/FD paper-style (pooled views)"
        problems = nums.pop("problems")
        rows.append({"benchmark": "MME-3DR (this toolkit)", "method": name, "source": str(run), **nums,
                     "note": note + "".join(f"; {p}" for p in problems)})
    if len(rows) == 1:
        for col in TABLE4_COLUMNS:
            t[f"d_{col}"] = rows[0][col] - t[col]
    return pd.concat([t, pd.DataFrame(rows)], ignore_index=True) if rows else t


def markdown_table(df: pd.DataFrame) -> str:
    """Markdown of ``df`` with ``source`` last; columns that are empty in every row are left out."""
    df = df.dropna(axis=1, how="all")
    cols = [c for c in df.columns if c != "source"] + ["source"]
    fmt = lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:g}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df[cols].itertuples(index=False)]
    return "\n".join(lines)
