"""Report figures (matplotlib, saved as PNG and SVG): per-category radar, grouped bars with 95% intervals, and
per-prompt distributions, one figure of each kind per metric value."""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mme3dr.categories import CATEGORIES  # noqa: E402
from mme3dr.paths import child_path  # noqa: E402

SHORT = {"spatial": "Spatial", "mechanical": "Mechanical", "biological": "Biological",
         "world-knowledge": "World-knowl.", "stylized": "Stylized"}


def _literal_text(fn):
    """Draw with ``text.parse_math`` off: run names and metric keys come from run folders, and a ``$...$`` in one
    would otherwise be parsed as mathtext (and a malformed one stop the report)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)
    return wrapper


def file_stem(stem: str) -> str:
    """``stem`` as a file name: characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_`` and
    the name is cut to 80 characters; a changed stem gets 8 hex digits of its sha256. Metric keys from a foreign
    ``scores.jsonl`` (which may hold ``/``, ``..`` or a kilobyte of text) can neither leave the plots folder, nor
    exceed the file system's name limit, nor collide."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem).strip(".")[:80] or "_"
    return safe if safe == stem else f"{safe}-{hashlib.sha256(stem.encode()).hexdigest()[:8]}"


def _save(fig, folder: Path, stem: str) -> list[Path]:
    name = file_stem(stem)
    paths = [child_path(folder, f"{name}.png", what="plot"), child_path(folder, f"{name}.svg", what="plot")]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


@_literal_text
def radar(board: pd.DataFrame, key: str, folder: Path) -> list[Path]:
    """Category means of ``key``, one polygon per run."""
    sub = board[(board["key"] == key) & board["column"].isin(list(CATEGORIES))]
    cats = [c for c in CATEGORIES if c in set(sub["column"])]
    if len(cats) < 3:
        return []
    angles = np.linspace(0, 2 * np.pi, len(cats), endpoint=False).tolist()
    fig, ax = plt.subplots(figsize=(5, 5), subplot_kw={"polar": True})
    for run, g in sub.groupby("run", sort=False):
        vals = [float(g.loc[g["column"] == c, "value"].iloc[0]) if (g["column"] == c).any() else np.nan for c in cats]
        ax.plot(angles + angles[:1], vals + vals[:1], marker="o", label=run)
        ax.fill(angles + angles[:1], vals + vals[:1], alpha=0.1)
    ax.set_xticks(angles, [SHORT[c] for c in cats])
    ax.set_title(f"{key} by category", pad=18)
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.12), fontsize=8)
    return _save(fig, folder, f"radar_{key}")


@_literal_text
def grouped_bars(board: pd.DataFrame, key: str, folder: Path) -> list[Path]:
    """Bars per category (and overall micro) per run, with bootstrap 95% intervals."""
    sub = board[board["key"] == key]
    groups = ["micro"] + [c for c in CATEGORIES if c in set(sub["column"])]
    runs = list(dict.fromkeys(sub["run"]))
    if not runs:
        return []
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(1.3 * len(groups) + 2, 3.6))
    for i, run in enumerate(runs):
        v = dict(zip(sub.loc[sub["run"] == run, "column"], sub.loc[sub["run"] == run, "value"]))
        mean = np.array([v.get(g, np.nan) for g in groups], float)
        lo = np.array([v.get(f"{g}_lo", np.nan) for g in groups], float)
        hi = np.array([v.get(f"{g}_hi", np.nan) for g in groups], float)
        err = np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)])
        ax.bar(np.arange(len(groups)) + i * width - 0.4 + width / 2, mean, width, yerr=err, capsize=3, label=run)
    ax.set_xticks(np.arange(len(groups)), ["overall"] + [SHORT[g] for g in groups[1:]])
    ax.set_ylabel(key)
    ax.set_title(f"{key}: mean with 95% bootstrap interval")
    ax.legend(fontsize=8)
    return _save(fig, folder, f"bars_{key}")


@_literal_text
def distributions(values: dict[str, pd.Series], key: str, folder: Path) -> list[Path]:
    """Box plot of per-prompt values of ``key``, one box per run."""
    data = {run: s.dropna().to_numpy() for run, s in values.items() if s.notna().any()}
    if not data:
        return []
    fig, ax = plt.subplots(figsize=(1.5 * len(data) + 2, 3.4))
    ax.boxplot(list(data.values()), showmeans=True)
    ax.set_xticks(range(1, len(data) + 1), list(data))
    for i, arr in enumerate(data.values(), 1):
        ax.scatter(np.full(len(arr), i) + np.random.default_rng(i).uniform(-0.12, 0.12, len(arr)), arr, s=6, alpha=0.4)
    ax.set_ylabel(key)
    ax.set_title(f"{key}: per-prompt distribution")
    return _save(fig, folder, f"dist_{key}")
