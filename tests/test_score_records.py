"""The typed score records and their one reader: round trip on a real run folder, files of older versions, and the
report, `mme3dr paper` and `mme3dr evaluate` reading through it."""

import json
import warnings

import numpy as np
import pytest
import trimesh

from mme3dr import runfiles
from mme3dr.data import load_benchmark
from mme3dr.errors import InputError
from mme3dr.evaluate import _metric_configs, evaluate
from mme3dr.render.presets import get_preset
from mme3dr.report import paper
from mme3dr.report.tables import load_run
from mme3dr.score_records import (ScoreRecord, SetMetricRecord, SetScore, SetScores, append_score,
                                  keep_latest_scores, read_scores, read_set_scores, repair_scores, write_set_scores)

PRESET = get_preset("canonical").with_overrides(resolution=32, n_views=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real run folder: two generated boxes, rendered and scored with the geometry metric."""
    root = tmp_path_factory.mktemp("records")
    for i, r in enumerate(load_benchmark(limit=2)):
        m = trimesh.creation.box(extents=(1, 0.5, 0.2 + 0.3 * i))
        m.visual.vertex_colors = np.tile([200, 80, 40, 255], (len(m.vertices), 1))
        m.export(root / f"{r.id}.glb")
    out = root / "RUN"
    evaluate("folder", out, {"root": str(root)}, ["geometry"], limit=2, preset=PRESET, report=False, progress=False)
    return out


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_round_trip_through_the_one_reader(run, tmp_path):
    raw = _lines(run / "scores.jsonl")
    records = read_scores(run)
    assert len(records) == len(raw) == 2 and all(isinstance(r, ScoreRecord) for r in records)
    for r, line in zip(records, raw):
        # the typed record holds what the line says, and writes the line back key for key, in the same order
        assert (r.prompt_id, r.metric, r.category, r.values) == (line["prompt_id"], "geometry", line["category"],
                                                                 line["values"])
        assert r.cache_key() == (line["prompt_id"], "geometry", line["config_hash"], None, line["asset_sha256"])
        assert list(r.to_json().items()) == list(line.items())
    # the writer: appending then compacting keeps one record per (prompt, metric), the latest
    copy = tmp_path / "COPY"
    copy.mkdir()
    for r in records:
        append_score(copy, r)
    newer = ScoreRecord(records[0].prompt_id, "geometry", records[0].category, values={"watertight": 0.0})
    append_score(copy, newer)
    keep_latest_scores(copy)
    again = read_scores(copy)
    assert [r.prompt_id for r in again] == [r.prompt_id for r in records]
    assert again[0] == newer and again[1] == records[1]


def test_set_scores_round_trip_and_keep_an_unreadable_entry(tmp_path):
    score = SetScore("all", 2, 48, 40, 960, value=0.0005, se=0.0001, ci_low=0.0003, ci_high=0.0007, paper_value=0.002)
    kid = SetMetricRecord("kid", "inception", "h", "REF", score, {"spatial": score}, {"kid_seed": 2020})
    old = {"metric": "fid", "extractor": "inception", "value": 12.0}  # format 1: no "format" field
    write_set_scores(tmp_path, SetScores({"kid": kid}, unreadable={"fid": old}))
    on_disk = json.loads((tmp_path / "set_scores.json").read_text())
    assert on_disk["fid"] == old and on_disk["kid"]["overall"]["value"] == 0.0005 and on_disk["kid"]["format"] == 2
    back = read_set_scores(tmp_path)
    assert back.records == {"kid": kid} and back.unreadable == {"fid": old}
    assert len(back.problems) == 1 and "older mme3dr (format 1" in back.problems[0]
    assert read_set_scores(tmp_path / "none") == SetScores()


def test_an_older_scores_file_with_a_torn_tail_reads(tmp_path):
    old = [{"prompt_id": "spatial-001", "category": "spatial", "metric": "clip", "config_hash": "abc",
            "values": {"clip": 25.0}, "error": None},  # before preset_hash, asset_sha256, config, directions
           {"prompt_id": "spatial-002", "metric": "geometry"}]
    torn = b'{"prompt_id": "spatial-003", "metr'
    (tmp_path / "scores.jsonl").write_bytes("".join(json.dumps(r) + "\n" for r in old).encode() + torn)
    with pytest.warns(UserWarning, match="torn last line"):
        records = read_scores(tmp_path)
    assert records[0] == ScoreRecord("spatial-001", "clip", "spatial", "abc", values={"clip": 25.0})
    assert records[0].cache_key() == ("spatial-001", "clip", "abc", None, None)
    assert records[1] == ScoreRecord("spatial-002", "geometry")
    with pytest.warns(UserWarning, match="removed a torn last line"):
        assert repair_scores(tmp_path) == len(torn)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_scores(tmp_path) == records


def test_a_line_that_is_not_a_score_record_is_named(tmp_path):
    (tmp_path / "scores.jsonl").write_text('{"prompt_id": "a", "metric": "clip"}\n{"metric": "clip"}\n')
    with pytest.raises(InputError, match=r"scores.jsonl, record 2: not a score record .*remove that line"):
        read_scores(tmp_path)


def test_report_paper_and_evaluate_read_through_the_one_reader(run, tmp_path, monkeypatch):
    calls = []
    original = ScoreRecord.from_json.__func__

    def counting(cls, d):
        calls.append(d["prompt_id"])
        return original(cls, d)

    monkeypatch.setattr(ScoreRecord, "from_json", classmethod(counting))
    readers = {"report": lambda: load_run(run), "paper numbers": lambda: paper.run_numbers(run),
               "paper notes": lambda: paper.run_notes(run), "evaluate": lambda: _metric_configs(run)}
    for name, read in readers.items():
        calls.clear()
        read()
        assert sorted(set(calls)) == sorted(r.id for r in load_benchmark(limit=2)), \
            f"{name} does not read scores.jsonl through mme3dr.score_records"
    assert _metric_configs(run)["geometry"]["config_hash"] == read_scores(run)[0].config_hash
    # and all of them stop on a damaged record with the reader's message, not a KeyError of their own
    monkeypatch.undo()
    bad = tmp_path / "BAD"
    bad.mkdir()
    for name in (runfiles.GENERATIONS, runfiles.RUN_INFO):
        (bad / name).write_bytes((run / name).read_bytes())
    (bad / runfiles.SCORES).write_text('{"category": "spatial", "metric": "geometry", "values": {}}\n')
    for name, read in {"report": lambda: load_run(bad), "paper": lambda: paper.run_numbers(bad),
                       "evaluate": lambda: _metric_configs(bad)}.items():
        with pytest.raises(InputError, match="record 1: not a score record"):
            read()
