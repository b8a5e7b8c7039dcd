"""What a crash (SIGKILL, a full disk) can leave in a run folder, injected at deterministic points into a copy of a
finished run: every rerun of `evaluate` finishes with the results of the uninterrupted run, with no manual step.

A kill during an append leaves a torn tail (part of one line, or a whole record without its newline); a kill between
two appends loses the records not yet written; a kill while a file or render folder is being replaced leaves a
temporary file or folder; a file damaged outside mme3dr (a truncated PNG) no longer matches render.json."""

import shutil
import warnings
from pathlib import Path

import pytest

from mme3dr.evaluate import evaluate
from mme3dr.jsonl import append_jsonl, read_jsonl, remove_stale_temps, repair_tail
from mme3dr.report import build_report
from test_evaluate import LIMIT, PRESET, make_assets

RENDERS = Path("renders") / PRESET.tag
LOGS = {"generations": Path("generations.jsonl"), "renders": RENDERS / "renders.jsonl",
        "scores": Path("scores.jsonl")}


def run_evaluate(run: Path, assets: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the repair notices
        return evaluate("folder", run, {"root": str(assets)}, ["geometry"], limit=LIMIT, preset=PRESET,
                        progress=False, report=False)


def outcome(run: Path) -> dict:
    """Everything a run's results consist of: generations, scores, every view's PNG bytes and the leaderboard."""
    gens = {r["prompt_id"]: (r["asset_path"], r["error"]) for r in read_jsonl(run / "generations.jsonl")}
    rows = read_jsonl(run / "scores.jsonl")
    scores = {(r["prompt_id"], r["metric"]): (r["values"], r["asset_sha256"], r["error"]) for r in rows}
    assert len(scores) == len(rows)  # one record per (prompt, metric)
    views = {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / RENDERS).glob("*/[0-9][0-9][0-9].png"))}
    board = build_report([run], run / "board", plots=False).csv.read_text()
    return {"generations": gens, "scores": scores, "views": views, "leaderboard": board}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (7 of 8 prompts with an asset) and its outcome."""
    base = tmp_path_factory.mktemp("finished")
    make_assets(base / "assets")
    run_evaluate(base / "RUN", base / "assets")
    return base / "RUN", base / "assets", outcome(base / "RUN")


@pytest.fixture
def copy(finished, tmp_path):
    run, assets, expected = finished
    shutil.copytree(run, tmp_path / "RUN", ignore=shutil.ignore_patterns("board"))
    return tmp_path / "RUN", assets, expected


def cut_last_line(path: Path, keep: str) -> None:
    """The state a kill during the last append leaves: ``keep`` of the last line's bytes."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    line = data[start:]
    kept = {"one byte": line[:1], "half": line[:len(line) // 2], "all but the newline": line[:-1]}[keep]
    path.write_bytes(data[:start] + kept)


def drop_last_lines(path: Path, n: int) -> None:
    """The state a kill before the last ``n`` appends leaves."""
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-n]))


@pytest.mark.parametrize("keep", ["one byte", "half", "all but the newline"])
@pytest.mark.parametrize("log", list(LOGS))
def test_a_kill_during_an_append_to_any_log_is_repaired(copy, log, keep):
    run, assets, expected = copy
    cut_last_line(run / LOGS[log], keep)
    run_evaluate(run, assets)
    assert (run / LOGS[log]).read_bytes().endswith(b"\n")
    assert outcome(run) == expected


@pytest.mark.parametrize("log", list(LOGS))
def test_a_kill_between_appends_loses_only_work_that_is_done_again(copy, log):
    run, assets, expected = copy
    drop_last_lines(run / LOGS[log], 2)
    run_evaluate(run, assets)
    assert outcome(run) == expected


def test_a_torn_line_followed_by_a_kill_during_the_next_append(copy):
    """Two crashes in a row: the scores log ends torn twice over; the second rerun still repairs it."""
    run, assets, expected = copy
    cut_last_line(run / LOGS["scores"], "half")
    drop_last_lines(run / LOGS["renders"], 1)
    run_evaluate(run, assets)
    cut_last_line(run / LOGS["scores"], "one byte")
    run_evaluate(run, assets)
    assert outcome(run) == expected


def test_leftover_temporaries_are_removed_and_nothing_else(copy, tmp_path):
    """A kill while a log is compacted, run.json or a render folder is replaced, or a render folder is half-way
    through its replacement (the old folder gone, the new one still under its temporary name)."""
    run, assets, expected = copy
    views = run / RENDERS
    victim = sorted(p for p in views.iterdir() if p.is_dir())[0]
    leftovers = [run / ".scores.jsonl.0a1b2c3d.mme3dr-tmp", run / ".run.json.abcdefgh.tmp",  # an older mme3dr's
                 views / ".renders.jsonl.12345678.mme3dr-tmp", views / f".{victim.name}.99887766.mme3dr-tmp"]
    for p in leftovers[:3]:
        p.write_text('{"prompt_id": "x", "half wri')
    victim.rename(leftovers[3])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the run's")
    kept = [run / "notes.tmp", run / ".hidden", views / "my.mme3dr-tmp"]  # not names mme3dr gives temporaries
    kept[0].write_text("user file")
    kept[1].mkdir()
    kept[2].write_text("no leading dot")
    (run / ".link.1234abcd.mme3dr-tmp").symlink_to(outside)
    run_evaluate(run, assets)
    assert not any(p.exists() for p in leftovers) and not (run / ".link.1234abcd.mme3dr-tmp").is_symlink()
    assert all(p.exists() for p in kept) and (outside / "keep.txt").read_text() == "not the run's"
    assert outcome(run) == expected


@pytest.mark.parametrize("damage", ["truncated", "deleted", "emptied"])
def test_a_damaged_view_is_rendered_again(copy, damage):
    run, assets, expected = copy
    png = sorted((run / RENDERS).glob("*/002.png"))[0]
    if damage == "truncated":
        png.write_bytes(png.read_bytes()[:len(png.read_bytes()) // 2])
    elif damage == "deleted":
        png.unlink()
    else:
        png.write_bytes(b"")
    summary = run_evaluate(run, assets)
    assert summary.render.rendered == 1 and summary.work_done == 1
    assert outcome(run) == expected


def test_repair_tail_keeps_whole_records_and_cuts_torn_ones(tmp_path):
    log = tmp_path / "x.jsonl"
    assert repair_tail(log) == 0 and not log.exists()
    append_jsonl(log, {"a": 1})
    log.write_bytes(log.read_bytes() + '{"b": "é'.encode()[:-1])  # torn inside a two-byte character
    with pytest.warns(UserWarning, match="torn last line"):
        assert repair_tail(log) == len('{"b": "é'.encode()) - 1
    assert log.read_bytes() == b'{"a": 1}\n'
    log.write_bytes(b'{"a": 1}\n{"b": 2}')  # a whole record without its newline is kept
    assert repair_tail(log) == 0 and log.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    log.write_bytes(b'{"a": 1')  # a torn first line
    with pytest.warns(UserWarning):
        append_jsonl(log, {"c": 3})
    assert read_jsonl(log) == [{"c": 3}]


def test_remove_stale_temps_does_not_follow_links(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / ".a.1234abcd.mme3dr-tmp").write_text("outside the run")
    run = tmp_path / "run"
    run.mkdir()
    (run / "sub").symlink_to(target)  # a linked folder is not walked
    assert remove_stale_temps(run) == []
    assert (target / ".a.1234abcd.mme3dr-tmp").exists()
