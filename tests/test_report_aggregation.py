"""Issue 12, point 8: failure policy and aggregation of the leaderboard, and what reports show beside set metrics.

Run folders are written by hand (generations.jsonl, scores.jsonl, set_scores.json), so every number is known.
"""

import csv
import io
import json

import numpy as np
import pandas as pd
import pytest

from mme3dr.categories import CATEGORIES
from mme3dr.defaults import WORST_VALUES
from mme3dr.report import build_report
from mme3dr.report.tables import leaderboard, load_run, paired_differences

DIRECTIONS = {"clip": "higher", "vlm_checklist": "higher", "components": "lower", "watertight": "higher"}
METRIC_OF = {"clip": "clip", "vlm_checklist": "vlm", "components": "geometry", "watertight": "geometry"}


def make_run(folder, model, prompts, scores=None, set_scores=None):
    """prompts: [(prompt_id, category, generated)]; scores: {prompt_id: {key: value}} (None: the metric failed)."""
    folder.mkdir(parents=True)
    gens = [{"prompt_id": pid, "category": cat, "prompt": pid, "seed": 0, "model": {"name": model},
             "asset_path": f"assets/{pid}/mesh.ply" if ok else None, "error": None if ok else "generation failed",
             "up_axis": "+z", "seconds": 0.0} for pid, cat, ok in prompts]
    (folder / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))
    cats = {pid: cat for pid, cat, _ in prompts}
    lines = []
    for pid, values in (scores or {}).items():
        by_metric = {}
        for key, v in values.items():
            by_metric.setdefault(METRIC_OF[key], {})[key] = v
        for metric, vals in by_metric.items():
            failed = all(v is None for v in vals.values())
            lines.append({"prompt_id": pid, "category": cats[pid], "metric": metric,
                          "values": {} if failed else vals, "error": "metric failed" if failed else None,
                          "directions": {k: d for k, d in DIRECTIONS.items() if METRIC_OF[k] == metric}})
    (folder / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if set_scores is not None:
        (folder / "set_scores.json").write_text(json.dumps(set_scores))
    return folder


def value(board, run, key, column):
    sel = board[(board["run"] == run) & (board["key"] == key) & (board["column"] == column)]["value"]
    return float(sel.iloc[0]) if len(sel) else None


def test_a_run_does_not_change_with_the_runs_beside_it(tmp_path):
    """Issue 12: A's one failure cost 0 alone (it counted as A's own worst value, 50) and 50 once B (which scored 0
    somewhere) joined the report. With a fixed worst value (CLIP: 0) it costs the same either way; and a metric only
    B ran adds nothing to A's rows."""
    a = make_run(tmp_path / "A", "A", [("p1", "spatial", True), ("p2", "spatial", False)], {"p1": {"clip": 50.0}})
    b = make_run(tmp_path / "B", "B", [("p1", "spatial", True), ("p2", "spatial", True)],
                 {"p1": {"clip": 0.0, "components": 3.0}, "p2": {"clip": 30.0, "components": 1.0}})
    alone = leaderboard([load_run(a)])
    both = leaderboard([load_run(a), load_run(b)])
    assert value(alone, "A", "clip", "micro_worst") == pytest.approx(25.0)  # (50 + fixed worst 0) / 2
    assert value(both, "A", "clip", "micro_worst") == pytest.approx(25.0)
    rows = lambda board: board[board["run"] == "A"].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows(alone), rows(both))
    assert "components" not in set(rows(both)["key"])


def test_failing_a_whole_category_does_not_beat_a_complete_run(tmp_path):
    """Issue 12: the old macro skipped categories without values, so Y (0.50 in four categories, every prompt of the
    fifth failed) beat X (0.44 everywhere). Over all five categories, failures at the fixed worst (0), Y has 0.40."""
    prompts = [(f"{c}-{i}", c, True) for c in CATEGORIES for i in range(2)]
    x = make_run(tmp_path / "X", "X", prompts, {pid: {"vlm_checklist": 0.44} for pid, _, _ in prompts})
    failed = "world-knowledge"
    y_prompts = [(pid, c, c != failed) for pid, c, _ in prompts]
    y = make_run(tmp_path / "Y", "Y", y_prompts, {pid: {"vlm_checklist": 0.50} for pid, c, _ in prompts if c != failed})
    board = leaderboard([load_run(x), load_run(y)])
    assert value(board, "X", "vlm_checklist", "macro") == pytest.approx(0.44)
    assert value(board, "Y", "vlm_checklist", "macro") == pytest.approx(0.40)
    assert value(board, "Y", "vlm_checklist", "micro") == pytest.approx(0.50)  # successes only, as labelled
    assert value(board, "Y", "vlm_checklist", f"{failed}_worst") == pytest.approx(0.0)
    # a value with no fixed worst (a count): macro needs all five categories
    z = make_run(tmp_path / "Z", "Z", y_prompts, {pid: {"components": 1.0} for pid, c, _ in prompts if c != failed})
    zb = leaderboard([load_run(z)])
    assert np.isnan(value(zb, "Z", "components", "macro")) and value(zb, "Z", "components", "micro_worst") is None
    # a run that did not attempt every category has no five-category macro
    part = make_run(tmp_path / "P", "P", prompts[:4], {pid: {"vlm_checklist": 1.0} for pid, _, _ in prompts[:4]})
    assert np.isnan(value(leaderboard([load_run(part)]), "P", "vlm_checklist", "macro"))


def test_every_ranked_value_of_every_metric_has_a_fixed_worst_value():
    from mme3dr.metrics.clip import ClipScore
    from mme3dr.metrics.compat import Ar3dCompatClip, Ar3dCompatKD
    from mme3dr.metrics.geometry import GeometryMetric
    from mme3dr.metrics.vlm import VLMJudge

    for cls in (ClipScore, VLMJudge, GeometryMetric, Ar3dCompatClip, Ar3dCompatKD):
        for key, direction in cls.directions.items():
            if direction in ("higher", "lower"):
                assert key in WORST_VALUES, f"{cls.__name__}.{key}: add a fixed worst value to WORST_VALUES"
    for key, worst in WORST_VALUES.items():
        assert worst is None or np.isfinite(worst)


def test_paired_bootstrap_differences(tmp_path):
    rng = np.random.default_rng(0)
    prompts = [(f"spatial-{i}", "spatial", True) for i in range(40)]
    hardness = rng.normal(0, 10, 40)  # shared by both runs: large per-prompt spread, small constant gap
    a = make_run(tmp_path / "A", "A", prompts, {p: {"clip": 25 + h + 0.5} for (p, _, _), h in zip(prompts, hardness)})
    b = make_run(tmp_path / "B", "B", prompts + [("spatial-x", "spatial", True)],
                 {**{p: {"clip": 25 + h} for (p, _, _), h in zip(prompts, hardness)}, "spatial-x": {"clip": 99.0}})
    runs = [load_run(a), load_run(b)]
    [row] = paired_differences(runs).to_dict("records")
    assert row["n_prompts"] == 40  # spatial-x: B only, left out
    assert (row["difference"], row["lo"], row["hi"]) == pytest.approx((0.5, 0.5, 0.5))
    assert row["favours"] == "A" and row["basis"] == "failures as worst"
    board = leaderboard(runs)  # the unpaired intervals overlap widely
    assert value(board, "A", "clip", "micro_lo") < value(board, "B", "clip", "micro_hi")

    # A fails two prompts: they count as 0 for A on the prompts both attempted
    a2 = make_run(tmp_path / "A2", "A2", prompts,
                  {p: {"clip": 25 + h + 0.5 + rng.normal()} for (p, _, _), h in list(zip(prompts, hardness))[2:]})
    [row] = paired_differences([load_run(a2), runs[1]]).to_dict("records")
    recs = [json.loads(line) for line in (a2 / "scores.jsonl").read_text().splitlines()]
    scores_a = {r["prompt_id"]: r["values"]["clip"] for r in recs}
    d = np.array([scores_a.get(p, 0.0) - (25 + h) for (p, _, _), h in zip(prompts, hardness)])
    means = [d[idx].mean() for idx in np.random.default_rng(0).integers(0, 40, size=(1000, 40))]  # same draws
    assert row["difference"] == pytest.approx(d.mean())
    assert (row["lo"], row["hi"]) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert row["favours"] == ("B" if row["hi"] < 0 else "")


def set_record(metric, gen_objects, ref_subsets, value_, reference="REF/canonical-abc"):
    """A set_scores.json entry (format 2) with an overall and a spatial value."""
    def score(group, subset):
        ref_objects = 4000 if subset == "all" else 40
        return {"reference_subset": subset, "gen_objects": gen_objects, "gen_views": 24 * gen_objects,
                "ref_objects": ref_objects, "ref_views": 24 * ref_objects, "value": value_,
                "se": 0.001 if metric.startswith("kid") else None,
                "ci_low": value_ - 0.002 if metric.startswith("kid") else None,
                "ci_high": value_ + 0.002 if metric.startswith("kid") else None,
                "value_objects": min(38, gen_objects) if metric.startswith("fid") else None,
                "paper_value": 3 * value_, "paper_std": 0.01, "paper_subset_size": 500, "error": None}
    return {"metric": metric, "extractor": "inception", "preset_hash": "abc", "reference": reference, "format": 2,
            "settings": {}, "overall": score("overall", "all"),
            "per_category": {"spatial": score("spatial", ref_subsets)}}


def test_reports_show_the_reference_subset_and_warn_on_different_counts(tmp_path):
    prompts = [("spatial-1", "spatial", True), ("spatial-2", "spatial", True)]
    sc = {"spatial-1": {"clip": 20.0}, "spatial-2": {"clip": 22.0}}
    a = make_run(tmp_path / "A", "A", prompts, sc, {"kid": set_record("kid", 240, "spatial", 0.004),
                                                    "fid": set_record("fid", 240, "spatial", 30.0)})
    b = make_run(tmp_path / "B", "B", prompts, sc, {"kid": set_record("kid", 200, "spatial", 0.005),
                                                    "fid": set_record("fid", 30, "spatial", 31.0)})
    old = make_run(tmp_path / "OLD", "OLD", prompts, sc, {"kid": {"overall": {"value": 0.1, "std": 0.2}}})
    files = build_report([a, b, old], tmp_path / "rep", plots=False)

    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(files.csv.read_text()))}
    assert rows["A"]["kid_x100:spatial:reference_subset"] == "spatial"
    assert rows["A"]["kid_x100:micro:reference_subset"] == "all" and rows["A"]["kid_x100:micro:ref_objects"] == "4000"
    assert float(rows["A"]["kid_x100:micro"]) == pytest.approx(0.4)
    assert float(rows["A"]["kid_x100:micro_lo"]) == pytest.approx(0.2)
    assert float(rows["A"]["kid_pooled_x100:micro_std"]) == pytest.approx(1.0)  # the std keeps its own name
    assert rows["B"]["fid:micro:value_objects"] == "30"

    md = files.markdown.read_text()
    assert "| A: reference (gen vs ref objects) | all (240 vs 4000 objects) |  | spatial (240 vs 40 objects) |" in md
    assert "| A | 0.4 | [0.2, 0.6] |" in md  # the kid interval is the bootstrap interval ...
    pooled = md[md.index("### kid_pooled_x100"):].split("\n###")[0]
    assert "| A | 1.2 |  |" in pooled and "std" not in pooled.split("|---")[1]  # ... and no std under "95% CI"
    warnings = md[md.index("**Warnings**"):md.index("###")]
    assert "fid: runs were computed from different counts" in warnings and "value_objects=30" in warnings
    assert "kid_x100:" not in warnings  # same reference: the object-aware KID does not depend on the counts
    assert "kid_pooled_x100: runs were computed from different counts" in warnings
    assert "OLD" in warnings and "older mme3dr" in warnings

    j = json.loads(files.json.read_text())
    assert j["leaderboard"]["A"]["kid_x100"]["reference"]["spatial"]["reference_subset"] == "spatial"
    assert j["leaderboard"]["A"]["fid"]["reference"]["micro"]["value_objects"] == 38
    assert j["worst_values"]["clip"] == 0.0 and any("fid:" in w for w in j["warnings"])
    page = files.html.read_text()
    assert "overall: all (240 vs 4000 objects); spatial: spatial (240 vs 40 objects)" in page
    assert "kid_x100 reference" in page and "Warnings" in page
    assert {r["key"] for r in j["paired_differences"]} == {"clip"} and files.paired.exists()
