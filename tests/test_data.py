import json
import re

import pytest

import mme3dr
from mme3dr.categories import CATEGORIES, CHECK_TYPES
from mme3dr.data import BenchmarkFormatError, load_benchmark

# Published example prompts (paper appendix, arXiv 2512.10949), copied from DESIGN.md section 2.
PAPER_PROMPTS = {
    "spatial": ["Metallic helmet with side ear discs and textured details.",
                "Dark brown wooden rocking chair with curved armrests and spindle backrest."],
    "biological": ["A deep red rose, with smooth curled petals on a slender green stem.",
                   "White 3D model of standing elephant with large ears and tusks."],
    "stylized": ["Stylized, lowpoly teal frog with triangular mouth, no eyes, and white oval markings.",
                 "White oval abstract chicken with pink eyes, light brown beak, wavy pink comb, brown tail and beige feet."],
    "mechanical": ["Electric guitar with green asymmetrical body, white pickguard, yellow neck.",
                   "Office chair with gray padding, curved backrest, black framed, five legs, adjustable height."],
    "world-knowledge": ["Parrot fish 3D object with elongated shape, multiple fins, and color transition from "
                        "yellowish-orange to white.",
                        "Low-poly, white chess pawn with spherical top, disc middle, and wide base."],
}


@pytest.fixture(scope="module")
def bench():
    return load_benchmark()


def test_counts_per_category_are_the_papers(bench):
    assert len(bench) == 249
    assert dict(bench.counts()) == {"spatial": 40, "mechanical": 54, "biological": 53, "world-knowledge": 38,
                                    "stylized": 64}
    assert {k: c.count for k, c in CATEGORIES.items()} == dict(bench.counts())


def test_ids_unique_stable_and_ordered(bench):
    ids = [r.id for r in bench]
    assert len(set(ids)) == 249
    for cat in CATEGORIES:
        own = [i for i in ids if i.startswith(cat + "-") and re.fullmatch(rf"{cat}-\d{{3}}", i)]
        assert own == [f"{cat}-{n:03d}" for n in range(1, CATEGORIES[cat].count + 1)]


def test_published_prompts_verbatim_and_marked(bench):
    for cat, texts in PAPER_PROMPTS.items():
        for text in texts:
            matches = [r for r in bench if r.prompt == text]
            assert len(matches) == 1, text
            assert matches[0].category == cat and matches[0].source == "paper"
    assert sum(r.source == "paper" for r in bench) == 10
    assert {r.source for r in bench} == {"paper", "authored"}


def test_records_follow_the_caption_style_and_checklist_rules(bench):
    for r in bench:
        assert 6 <= len(r.prompt.split()) <= 25, r.id
        assert re.fullmatch(r"[a-z][a-z0-9_]*", r.object_class), r.id
        assert 3 <= len(r.checklist) <= 8, r.id
        for item in r.checklist:
            assert item.type in CHECK_TYPES and item.answer in ("yes", "no") and item.question.endswith("?")
        assert any(c.answer == "no" for c in r.checklist), r.id
    answers = [c.answer for r in bench for c in r.checklist]
    assert 0.15 < answers.count("no") / len(answers) < 0.4  # "no" items guard against yes-bias


def test_to_dataset(bench):
    ds = bench.to_dataset()
    assert ds.num_rows == 249
    assert ds[0]["id"] == bench[0].id
    assert ds[0]["checklist"][0]["question"] == bench[0].checklist[0].question
    assert set(ds.column_names) == {"id", "category", "prompt", "object_class", "source", "checklist"}


def test_public_api_entry_point():
    assert mme3dr.load_benchmark().to_dataset().num_rows == 249


def test_category_filter_limit_and_names():
    assert len(load_benchmark(categories="world-knowledge")) == 38
    assert len(load_benchmark(categories=["World-Knowledge Rare Objects", "spatial"])) == 78
    head = load_benchmark(limit=7)
    assert len(head) == 7
    assert set(head.counts()) == set(CATEGORIES)  # spread over all five categories
    assert [r.id for r in load_benchmark(categories="spatial", limit=3)] == ["spatial-001", "spatial-002", "spatial-003"]
    with pytest.raises(ValueError, match="Did you mean 'spatial'"):
        load_benchmark(categories="spatail")


def _write(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(**over):
    row = {"id": "x-1", "category": "spatial", "prompt": "A red cube with two handles.", "object_class": "cube",
           "source": "official", "checklist": [{"type": "count", "question": "Two handles?", "answer": "yes"}] * 3}
    row.update(over)
    return row


def test_other_file_sources(tmp_path):
    rows = [_row(), _row(id="x-2", category="Stylized Representation", checklist=[])]
    b = load_benchmark(source=_write(tmp_path, rows))
    assert [r.id for r in b] == ["x-1", "x-2"] and b[1].category == "stylized" and b[1].checklist == ()
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"prompts": rows}))
    assert len(load_benchmark(source=j)) == 2


def test_dataset_folder_sources_use_the_datasets_loaders(tmp_path):
    bench = load_benchmark(categories="spatial")
    folder = tmp_path / "hubstyle"
    folder.mkdir()
    _write(folder, [r.to_dict() for r in bench], "train.jsonl")
    loaded = load_benchmark(source=str(folder))  # datasets.load_dataset, the hub-id code path
    assert [r.to_dict() for r in loaded] == [r.to_dict() for r in bench]
    saved = tmp_path / "saved"
    bench.to_dataset().save_to_disk(str(saved))
    assert [r.id for r in load_benchmark(source=str(saved))] == [r.id for r in bench]


def test_unreachable_hub_id_gives_actionable_error():
    with pytest.raises(BenchmarkFormatError, match="hub id"):
        load_benchmark(source="nobody-here/no-such-dataset")


@pytest.mark.parametrize("bad, message", [
    ({"prompt": ""}, r"row 2 \(id 'x-2'\): field 'prompt' must be a non-empty string"),
    ({"category": "spatal"}, r"row 2 \(id 'x-2'\): field 'category'.*Did you mean 'spatial'"),
    ({"checklist": [{"type": "count", "question": "q?", "answer": "maybe"}] * 3}, r"row 2.*answer must be 'yes' or 'no'"),
    ({"checklist": [{"type": "smell", "question": "q?", "answer": "yes"}] * 3}, r"row 2.*type 'smell'"),
    ({"checklist": [{"type": "count", "question": "q?", "answer": "yes"}] * 9}, r"row 2.*9 items; expected 3-8"),
    ({"object_class": None}, r"row 2.*object_class"),
])
def test_schema_errors_name_the_bad_row(tmp_path, bad, message):
    path = _write(tmp_path, [_row(), _row(id="x-2", **bad)])
    with pytest.raises(BenchmarkFormatError, match=message):
        load_benchmark(source=path)


def test_missing_field_duplicate_id_and_broken_json(tmp_path):
    row = _row()
    del row["checklist"]
    with pytest.raises(BenchmarkFormatError, match=r"row 1 \(id 'x-1'\): missing field\(s\) \['checklist'\]"):
        load_benchmark(source=_write(tmp_path, [row]))
    with pytest.raises(BenchmarkFormatError, match="row 2: id 'x-1' repeats row 1"):
        load_benchmark(source=_write(tmp_path, [_row(), _row()]))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(_row()) + "\n{not json\n")
    with pytest.raises(BenchmarkFormatError, match="line 2: not valid JSON"):
        load_benchmark(source=broken)
