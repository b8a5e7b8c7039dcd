"""A self-contained HTML report: sortable leaderboard, plots, and a per-prompt gallery (contact sheets with their
scores and the VLM judge's checklist answers). Images are embedded (base64), so the file stands alone.

Every value that reaches the page comes from run folders, which may be someone else's (run names, model
arguments, prompts, checklists, judge answers, errors, metric keys, file names, warnings), so each one goes
through :func:`esc` (HTML escaping of ``& < > " '``), in text and in attributes alike; the page's only markup and
script are the constants of this module."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mme3dr import runfiles
from mme3dr.paths import UnsafePathError, child_path
from mme3dr.report.tables import FAILURE_POLICY, RunData

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute('data-dir') !== 'asc';
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-v') || a.cells[col].textContent;
        var y = b.cells[col].getAttribute('data-v') || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
      th.setAttribute('data-dir', asc ? 'asc' : 'desc');
    });
  });
});
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; cursor: pointer; } th[data-dir=asc]::after { content: ' \\25B2'; }
th[data-dir=desc]::after { content: ' \\25BC'; } td:first-child, th:first-child { text-align: left; }
.policy { background: #fff8e0; padding: 8px 12px; border-left: 4px solid #e0b000; }
.plots img { max-width: 480px; margin: 4px; border: 1px solid #ddd; vertical-align: top; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 380px; border: 1px solid #ddd; padding: 8px; font-size: 12px; }
.card img { width: 100%; } .ok { color: #070; } .bad { color: #b00; } .meta { color: #666; }
"""


def esc(value: object) -> str:
    """``str(value)`` escaped for HTML text and quoted attribute values (``& < > " '``)."""
    return html.escape(str(value), quote=True)


def _num(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4g}"


def _img_data(path: Path, width: int | None = None, fmt: str = "JPEG") -> str:
    img = Image.open(path).convert("RGB")
    if width and img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, fmt, quality=75) if fmt == "JPEG" else img.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def table(df: pd.DataFrame, caption: str = "") -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for v in r:
            if isinstance(v, (float, np.floating)):
                cells.append(f'<td data-v="{"" if np.isnan(v) else esc(v)}">{esc(_num(float(v)))}</td>')
            else:
                cells.append(f"<td>{esc(v)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<table class="sortable">{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _sheet(folder: Path | None, prompt_id: str) -> Path | None:
    """The prompt's contact sheet under ``folder`` (None when there is no folder or the id would lead out of it)."""
    if folder is None:
        return None
    try:
        return child_path(folder, str(prompt_id), runfiles.CONTACT_SHEET, what="prompt id")
    except UnsafePathError:
        return None


def _card(run: RunData, row: pd.Series, sheet: Path | None) -> str:
    pid = row["prompt_id"]
    vals = run.values[run.values["prompt_id"] == pid]
    score_txt = ", ".join(f"{k}={_num(v)}" for k, v in zip(vals["key"], vals["value"]))
    parts = [f"<b>{esc(pid)}</b> <span class='meta'>{esc(row['category'])}</span>",
             f"<div>{esc(row['prompt'])}</div>"]
    if not row["generated"]:
        parts.append("<div class='bad'>generation failed</div>")
    elif sheet is not None and sheet.exists():
        parts.append(f"<img alt='{esc(pid)}' src='{esc(_img_data(sheet, 380))}'>")
    parts.append(f"<div class='meta'>{esc(score_txt) or 'no scores'}</div>")
    for (p, metric), rec in run.details.items():
        if p != pid:
            continue
        if rec.get("error"):
            parts.append(f"<div class='bad'>{esc(metric)}: {esc(rec['error'])}</div>")
        details = rec.get("details")
        checks = details.get("checklist") if isinstance(details, dict) else None
        for check in checks if isinstance(checks, list) else []:
            if not isinstance(check, dict):
                continue
            correct = check.get("correct")
            mark = "ok" if correct is True else "bad" if correct is False else "meta"
            parts.append(f"<div class='{mark}'>{esc(check.get('question'))} expected {esc(check.get('expected'))}, "
                         f"judge: {esc(check.get('answer'))}</div>")
    return "<div class='card'>" + "".join(parts) + "</div>"


def render_html(runs: list[RunData], wide: pd.DataFrame, detail_tables: dict[str, pd.DataFrame],
                plots: list[Path], sheets: dict[str, Path | None], title: str = "MME-3DR report",
                warnings: list[str] | None = None, paired: pd.DataFrame | None = None) -> str:
    """The whole page. ``sheets`` maps a run name to its render folder (None: no gallery images); ``warnings``
    (comparability) and ``paired`` (paired differences between runs) come from :mod:`mme3dr.report.tables`."""
    head = pd.DataFrame([{"run": r.name, "prompts": len(r.prompts), "success": r.prompts["generated"].mean(),
                          "toolkit": r.info.get("toolkit_version", ""), "commit": (r.info.get("git_commit") or "")[:12],
                          "preset": (r.info.get("preset") or {}).get("tag", "")} for r in runs])
    micro_cols = [c for c in wide.columns if c.endswith((":micro", ":micro:reference_subset"))]
    board = wide[micro_cols].rename(columns=lambda c: c.replace(":micro:reference_subset", " reference")
                                    .removesuffix(":micro")).reset_index()
    body = [f"<h1>{esc(title)}</h1>", table(head, "runs"),
            f"<p class='policy'>{esc(FAILURE_POLICY)}</p>"]
    if warnings:
        body.append("<div class='policy'><b>Warnings</b><ul>"
                    + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul></div>")
    body += ["<h2>Leaderboard (overall micro means; click a header to sort)</h2>", table(board)]
    for key, df in detail_tables.items():
        body += [f"<h3>{esc(key)}</h3>", table(df)]
    if paired is not None and not paired.empty:
        body += ["<h2>Paired differences (a - b) on the prompts both runs attempted</h2>",
                 table(paired, "95% interval (lo, hi): paired bootstrap over prompts")]
    if plots:
        body.append("<h2>Plots</h2><div class='plots'>")
        body += [f"<img alt='{esc(p.stem)}' src='{esc(_img_data(p, fmt='PNG'))}'>" for p in plots if p.suffix == ".png"]
        body.append("</div>")
    for run in runs:
        folder = sheets.get(run.name)
        body.append(f"<h2>Gallery: {esc(run.name)}</h2><div class='gallery'>")
        body += [_card(run, row, _sheet(folder, row["prompt_id"])) for _, row in run.prompts.iterrows()]
        body.append("</div>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}<script>{SORT_JS}</script></body></html>")
