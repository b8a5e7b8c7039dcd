"""VLM judge: view choice, parsing, value computation, failures and baselines (also in reports), the transformers
backend on a tiny random Qwen2.5-VL, the HTTP backend."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from mme3dr.adapters import Generator, ModelSpec
from mme3dr.data import ChecklistItem, load_benchmark
from mme3dr.generation import generate_run
from mme3dr.metrics.base import HIGHER, LOWER, NONE, ScoreItem
from mme3dr.metrics.vlm import (
    CATEGORY_KEYS,
    PROMPT_VERSION,
    OpenAIVLM,
    TransformersVLM,
    VLMJudge,
    VLMRequestError,
    checklist_prompt,
    checklist_schema,
    judge_views,
)
from mme3dr.metrics.vlm_parse import parse_json_answer
from mme3dr.render.cameras import sphere_hammersley, transforms_dict
from mme3dr.render.presets import RenderPreset, get_preset
from mme3dr.render.runs import render_run
from mme3dr.report import build_report
from mme3dr.scoring import score_run
from mme3dr.scoring import BuiltMetrics
from mme3dr.weights import MissingWeightsError
from tiny_qwen import build_tiny_qwen25_vl

PROMPT = "Dark brown wooden rocking chair with curved armrests and spindle backrest."
CHECKLIST = (
    ChecklistItem("part", "Does the chair have curved armrests?", "yes"),
    ChecklistItem("count", "Does the chair have four legs on the ground?", "no"),
    ChecklistItem("colour", "Is the chair dark brown?", "yes"),
    ChecklistItem("material", "Is the chair made of metal?", "no"),
)


CANONICAL = get_preset("canonical")


def make_item(folder: Path, preset: RenderPreset = CANONICAL,
              checklist: tuple[ChecklistItem, ...] = CHECKLIST) -> ScoreItem:
    """A ScoreItem whose render folder holds one small RGBA view per camera of ``preset`` (a square whose red
    channel is 10 x the view index, on transparency) and the preset's ``transforms.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    cameras = preset.camera_set()
    names = [f"{i:03d}.png" for i in range(len(cameras))]
    for i, name in enumerate(names):
        img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        img.paste((10 * i, 80, 200, 255), (16, 16, 48, 48))
        img.save(folder / name)
    (folder / "transforms.json").write_text(json.dumps(transforms_dict(cameras, names)))
    return ScoreItem("spatial-001", "spatial", PROMPT, checklist, render_dir=folder)


def view_index(img: Image.Image) -> int:
    """The view an image came from (see :func:`make_item`)."""
    return img.getpixel((32, 32))[0] // 10


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A $MME3DR_WEIGHTS-style folder holding one tiny Qwen2.5-VL as ``tiny-org--tiny-vlm``."""
    root = tmp_path_factory.mktemp("weights")
    build_tiny_qwen25_vl(root / "tiny-org--tiny-vlm")
    return root


# ---- end to end with the tiny random model -------------------------------------------------------------------


def test_tiny_model_end_to_end_counts_parse_failures(weights_root: Path, tmp_path: Path) -> None:
    item = make_item(tmp_path / "renders")
    judge = VLMJudge(TransformersVLM(str(weights_root / "tiny-org--tiny-vlm"), max_new_tokens=8))
    [result] = judge.score_many([item])

    assert result.error is None
    # Random weights answer gibberish: every query is a counted failure and scores the worst value.
    assert result.values == {"vlm_consistency": 0.0, "vlm_category": 0.0, "vlm_appearance": 0.0,
                             "vlm_checklist": 0.0, "vlm_unparsed": 1.0, "vlm_checklist_all_yes": 0.5,
                             "vlm_checklist_all_no": 0.5}
    assert result.details["parse_failures"] == 4
    assert set(result.details["queries"]) == {"consistency", "category", "appearance", "checklist"}
    for query in result.details["queries"].values():
        assert isinstance(query["response"], str)
        assert query["parse_failed"] is True and query["parsed"] is None and query["reason"]
    assert len(result.details["views"]) == 6
    assert [c["answer"] for c in result.details["checklist"]] == [None] * 4
    assert [c["correct"] for c in result.details["checklist"]] == [False] * 4


def test_tiny_model_is_greedy_and_loads_from_weights_env(weights_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MME3DR_WEIGHTS", str(weights_root))
    backend = TransformersVLM("tiny-org/tiny-vlm", max_new_tokens=6)  # a hub id found under $MME3DR_WEIGHTS
    images = [Image.new("RGB", (40, 56), (200, 10 * i, 0)) for i in range(6)]
    start = time.perf_counter()
    first = backend.generate(images, "Describe the object.")
    assert backend.generate(images, "Describe the object.") == first
    assert time.perf_counter() - start < 10


def test_missing_model_raises_with_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MME3DR_WEIGHTS", str(tmp_path))
    backend = TransformersVLM("nobody-org/no-such-vlm")  # cheap: nothing loads before first use
    with pytest.raises(MissingWeightsError, match=r"nobody-org/no-such-vlm.*MME3DR_WEIGHTS/nobody-org--no-such-vlm"):
        backend.load()
    with pytest.raises(MissingWeightsError, match="does not exist"):
        TransformersVLM(str(tmp_path / "absent")).load()


def test_tiny_builder_adds_extra_tokens(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    extra = ("<mesh-start>", "<mesh0>", "<mesh1>", "<mesh-end>")
    folder = build_tiny_qwen25_vl(tmp_path / "tiny", extra_tokens=extra)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.encode("".join(extra), add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids) == list(extra)
    assert tok.decode(ids, skip_special_tokens=True) == "".join(extra)
    assert AutoConfig.from_pretrained(folder).text_config.vocab_size == len(tok)


# ---- value computation with canned answers -------------------------------------------------------------------


class FakeVLM:
    """A backend answering each query with ``self.generate(images, text)``; records the size of each call."""

    kind, model, max_new_tokens, queries_per_call = "fake", "fake-vlm", 64, 4

    def generate(self, images: list[Image.Image], text: str) -> str:
        raise NotImplementedError

    def generate_many(self, queries) -> list[str | Exception]:
        self.__dict__.setdefault("call_sizes", []).append(len(queries))
        return [self.generate(images, text) for images, text in queries]


class CannedVLM(FakeVLM):
    """Answers each query from a dict keyed by the query's first schema key; records what it was asked and
    which views it was shown."""

    kind, model, max_new_tokens = "canned", "canned-vlm", 64

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, str]] = []
        self.shown: list[list[int]] = []

    def generate(self, images: list[Image.Image], text: str) -> str:
        assert all(img.mode == "RGB" for img in images)
        self.calls.append((len(images), text))
        self.shown.append([view_index(img) for img in images])
        return next(answer for key, answer in self.answers.items() if f'"{key}"' in text)


ANSWERS = {
    "shape": '{"shape": 1, "appearance": 0.5, "parts": 1}',
    "category_match": '```json\n{"category_match": 1}\n```',
    "color_smoothness": 'Here is my judgment: {"color_smoothness": 0, "material": 1, "texture": 0.25}.',
    "q1": '{"q1": "Yes", "q2": "no", "q3": "NO", "q4": true}',  # right, right (a "no"), wrong, wrong
}


def test_values_from_canned_answers(tmp_path: Path) -> None:
    backend = CannedVLM(ANSWERS)
    result = VLMJudge(backend).score(make_item(tmp_path))

    assert result.values == {"vlm_consistency": 2.5, "vlm_category": 1.0, "vlm_appearance": 1.25,
                             "vlm_checklist": 0.5, "vlm_unparsed": 0.0, "vlm_checklist_all_yes": 0.5,
                             "vlm_checklist_all_no": 0.5}
    assert result.details["parse_failures"] == 0
    assert [c["correct"] for c in result.details["checklist"]] == [True, True, False, False]
    assert [c["answer"] for c in result.details["checklist"]] == ["yes", "no", "no", "yes"]
    assert result.details["queries"]["category"]["method"] == "fenced"
    assert [n for n, _ in backend.calls] == [6, 6, 6, 6]
    texts = [text for _, text in backend.calls]
    assert sum(PROMPT in t for t in texts) == 1  # only the category query names the prompt
    assert all(c.question in texts[-1] for c in CHECKLIST)


def test_failed_answers_count_as_failures(tmp_path: Path) -> None:
    """An unreadable answer is a failed judgment: its worst value, counted in ``vlm_unparsed``, never left out."""
    answers = {**ANSWERS, "color_smoothness": '{"color_smoothness": 1.5, "material": 1, "texture": 1}',
               "category_match": "I cannot tell."}
    two_views = CANONICAL.with_overrides(n_views=2)
    result = VLMJudge(CannedVLM(answers), views=3).score(make_item(tmp_path, two_views, checklist=()))

    assert result.values == {"vlm_consistency": 2.5, "vlm_category": 0.0, "vlm_appearance": 0.0,
                             "vlm_checklist": None, "vlm_unparsed": 2 / 3, "vlm_checklist_all_yes": None,
                             "vlm_checklist_all_no": None}
    assert result.details["parse_failures"] == 2
    assert "checklist" not in result.details["queries"]
    assert "1.5" in result.details["queries"]["appearance"]["reason"]
    assert result.details["views"] == [0, 1]


def test_unreadable_checklist_is_wrong_not_left_out(tmp_path: Path) -> None:
    backend = CannedVLM({**ANSWERS, "q1": "All four answers are yes, I think."})
    result = VLMJudge(backend).score(make_item(tmp_path))
    assert result.values["vlm_checklist"] == 0.0  # was None: the item dropped out of the mean
    assert result.values["vlm_unparsed"] == 0.25
    assert [c["correct"] for c in result.details["checklist"]] == [False] * 4


def test_config_and_directions() -> None:
    judge = VLMJudge(CannedVLM(ANSWERS), views=4)
    assert judge.config() == {"backend": "canned", "model": "canned-vlm", "views": 4, "view_elevation_deg": 20.0,
                              "max_new_tokens": 64, "prompt_version": PROMPT_VERSION}
    assert judge.config_hash() != VLMJudge(CannedVLM(ANSWERS), views=6).config_hash()
    assert judge.config_hash() != VLMJudge(CannedVLM(ANSWERS), views=4, view_elevation_deg=0.0).config_hash()
    assert judge.directions == {"vlm_consistency": HIGHER, "vlm_category": HIGHER, "vlm_appearance": HIGHER,
                                "vlm_checklist": HIGHER, "vlm_unparsed": LOWER, "vlm_checklist_all_yes": NONE,
                                "vlm_checklist_all_no": NONE}
    assert VLMJudge(TransformersVLM("some-org/some-vlm")).config()["backend"] == "transformers"
    assert checklist_prompt(["A?", "B?"], 6).endswith('{"q1": "<answer>", "q2": "<answer>"}')


# ---- which views the judge sees ------------------------------------------------------------------------------


def largest_azimuth_gap(azimuths_deg) -> float:
    """The widest empty arc (degrees) between neighbouring azimuths on the circle."""
    a = np.sort(np.asarray(azimuths_deg) % 360.0)
    return float(np.max(np.diff(np.r_[a, a[0] + 360.0])))


def test_judge_sees_the_canonical_object_from_all_round(tmp_path: Path) -> None:
    """Six of the 24 canonical views, every azimuth gap below 90 deg (1.5 x the even 60). Every 4th view
    (0, 4, ..., 20), the old choice, spans yaw 180-247.5 deg only: a 292.5 deg gap."""
    backend = CannedVLM(ANSWERS)
    result = VLMJudge(backend).score(make_item(tmp_path))
    chosen = result.details["views"]
    yaw, pitch = np.degrees(sphere_hammersley(24, CANONICAL.offset, CANONICAL.remap)).T  # the preset's own formula
    assert len(set(chosen)) == 6
    assert largest_azimuth_gap(yaw[chosen]) < 90.0
    assert largest_azimuth_gap(yaw[[0, 4, 8, 12, 16, 20]]) == pytest.approx(292.5)
    assert all(0.0 < p < 45.0 for p in pitch[chosen])  # from the side, slightly above: no view from below
    np.testing.assert_allclose(result.details["view_azimuth_deg"], yaw[chosen] % 360, atol=1e-6)
    np.testing.assert_allclose(result.details["view_elevation_deg"], pitch[chosen], atol=1e-3)
    assert backend.shown == [chosen] * 4  # these images, in this order, in every query
    assert np.all(np.diff(result.details["view_azimuth_deg"]) > 0)  # shown in azimuth order


@pytest.mark.parametrize(("name", "n", "bound"), [("canonical", 4, 135.0), ("canonical", 8, 67.5),
                                                  ("orbit8", 6, 90.0), ("reward6", 6, 74.0)])
def test_judge_view_coverage_of_other_presets_and_counts(name: str, n: int, bound: float) -> None:
    positions = get_preset(name).camera_set().poses[:, :3, 3]
    chosen = judge_views(positions, n)
    assert len(set(chosen)) == min(n, len(positions))
    assert largest_azimuth_gap(np.degrees(np.arctan2(positions[chosen, 1], positions[chosen, 0]))) <= bound + 1e-9
    if name == "reward6":
        assert chosen == list(range(6))  # the authors' six reward views, all of them, in order


def test_judge_views_hit_the_targets_when_views_allow() -> None:
    """36 views every 10 deg at elevation 20 contain the six targets exactly; views at other elevations lose."""
    ring = [(np.cos(np.radians(a)), np.sin(np.radians(a))) for a in range(0, 360, 10)]
    positions = [(x * np.cos(np.radians(e)), y * np.cos(np.radians(e)), np.sin(np.radians(e)))
                 for e in (-40.0, 20.0, 70.0) for x, y in ring]
    chosen = judge_views(np.array(positions) * 2.0, 6, elevation_deg=20.0)
    assert chosen == [36 + k for k in range(0, 36, 6)]


def test_judge_needs_the_camera_poses(tmp_path: Path) -> None:
    item = make_item(tmp_path)
    (tmp_path / "transforms.json").unlink()
    [result] = VLMJudge(CannedVLM(ANSWERS)).score_many([item])
    assert "transforms.json is missing" in result.error and "mme3dr render" in result.error
    assert f"delete {tmp_path}" in result.error  # a render folder with its render.json counts as up to date


# ---- a judge that cannot be gamed ----------------------------------------------------------------------------


class TemplateCopier(FakeVLM):
    """A judge that answers every query by copying the answer form it was shown (the query's last line)."""

    kind, model, max_new_tokens = "copier", "copier", 64

    def generate(self, images: list[Image.Image], text: str) -> str:
        return text.strip().splitlines()[-1]


def test_copying_the_answer_template_scores_nothing(tmp_path: Path) -> None:
    result = VLMJudge(TemplateCopier()).score(make_item(tmp_path))
    assert result.values["vlm_checklist"] == 0.0  # the old template `"yes" or "no"` read as all "yes": 0.5 here
    assert result.values["vlm_consistency"] == result.values["vlm_category"] == result.values["vlm_appearance"] == 0
    assert result.values["vlm_unparsed"] == 1.0
    assert all("template" in q["reason"] for q in result.details["queries"].values())


class ConstantJudge(FakeVLM):
    """Answers every checklist question with one word and scores everything else 1."""

    kind, model, max_new_tokens = "constant", "constant", 64

    def __init__(self, word: str) -> None:
        self.word = word

    def generate(self, images: list[Image.Image], text: str) -> str:
        keys = [k for k in ("shape", "appearance", "parts", "category_match", "color_smoothness", "material",
                            "texture") if f'"{k}"' in text]
        keys += [f"q{i}" for i in range(1, 50) if f'"q{i}"' in text]
        return json.dumps({k: self.word if k.startswith("q") else 1 for k in keys})


def test_constant_answers_score_the_baselines(tmp_path: Path) -> None:
    """3 expected "yes" and 1 "no": a judge saying "yes" to all scores 0.75, one saying "no" to all 0.25,
    and both baselines are reported with the item whatever the judge says."""
    checklist = CHECKLIST[:2] + (ChecklistItem("colour", "Is the seat brown?", "yes"), CHECKLIST[0])
    assert [c.answer for c in checklist] == ["yes", "no", "yes", "yes"]
    for word, score in (("yes", 0.75), ("no", 0.25)):
        result = VLMJudge(ConstantJudge(word)).score(make_item(tmp_path / word, checklist=checklist))
        assert result.values["vlm_checklist"] == score
        assert result.values["vlm_checklist_all_yes"] == 0.75 and result.values["vlm_checklist_all_no"] == 0.25
        assert result.values["vlm_unparsed"] == 0.0


class Box(Generator):
    def generate_one(self, request):
        trimesh.creation.box(extents=(1.0, 0.6, 0.4)).export(request.output_dir / "mesh.ply")
        return request.output_dir / "mesh.ply"


def test_reports_print_baselines_and_failures_beside_checklist_accuracy(tmp_path: Path) -> None:
    """A judge that says "yes" to every question scores exactly the all-yes baseline, and every report shows
    that baseline (and the all-no one, and the unparsed answers) beside the checklist accuracy."""
    prompts = load_benchmark(limit=3)
    expected = [c.answer for r in prompts for c in r.checklist]
    yes_rate = np.mean([np.mean([c.answer == "yes" for c in r.checklist]) for r in prompts])
    assert 0 < yes_rate < 1 and set(expected) == {"yes", "no"}
    run, preset = tmp_path / "RUN", CANONICAL.with_overrides(resolution=16, n_views=8)
    generate_run(Box(), prompts, run, model_spec=ModelSpec("box"), progress=False)
    render_run(run, preset, progress=False)
    score_run(run, ["vlm"], preset, built=BuiltMetrics({"vlm": VLMJudge(ConstantJudge("yes"))}, {}), progress=False)
    files = build_report([run], tmp_path / "report", plots=False)

    md = files.markdown.read_text()
    table = md.split("### vlm_checklist (higher is better)\n\n")[1].split("\n\n")[0].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    row = dict(zip(header, (c.strip() for c in table[2].strip("|").split("|"))))
    assert float(row["micro"]) == pytest.approx(yes_rate, abs=1e-3)
    assert float(row["all-yes baseline"]) == pytest.approx(yes_rate, abs=1e-3)
    assert float(row["all-no baseline"]) == pytest.approx(1 - yes_rate, abs=1e-3)
    assert float(row["unparsed answers"]) == 0.0
    page = files.html.read_text()
    detail = page[page.index("<h3>vlm_checklist</h3>"):].split("</table>")[0]
    cells = dict(zip(re.findall(r"<th>(.*?)</th>", detail), re.findall(r"<td[^>]*>(.*?)</td>", detail)))
    assert float(cells["micro"]) == float(cells["all-yes baseline"]) == pytest.approx(yes_rate, abs=1e-3)
    assert float(cells["all-no baseline"]) == pytest.approx(1 - yes_rate, abs=1e-3)
    assert float(cells["unparsed answers"]) == 0.0


# ---- answer parsing ------------------------------------------------------------------------------------------

KEYS = ("shape", "appearance", "parts")


@pytest.mark.parametrize(("text", "method"), [
    ('{"shape": 1, "appearance": 0, "parts": 0.5}', "strict"),
    ('The views agree. {"shape": 1, "appearance": 0, "parts": 0.5, "reason": "a {brace} in text"} Done.', "block"),
    ('```json\n{"shape": 1, "appearance": 0, "parts": 0.5}\n```', "fenced"),
    ("{'Shape': 1, 'appearance': 0, 'parts': '0.5'}", "block"),
    ('{"shape": 1, "appearance": 0, "parts": 0.5', "key-value"),  # truncated
    ("shape: 1\nappearance = 0\nparts: 0.5", "key-value"),
])
def test_parse_valid_scores(text: str, method: str) -> None:
    result = parse_json_answer(text, KEYS, "score")
    assert result.ok and result.error is None and result.method == method
    assert result.value == {"shape": 1.0, "appearance": 0.0, "parts": 0.5}


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("The object looks fine to me.", "no JSON object"),
    ('{"shape": 1, "appearance": 0}', "missing key"),
    ('{"shape": 1.2, "appearance": 0, "parts": 1}', "1.2"),
    ('{"shape": -0.1, "appearance": 0, "parts": 1}', "-0.1"),
    ('{"shape": true, "appearance": 0, "parts": 1}', "True"),
    ('{"shape": "high", "appearance": 0, "parts": 1}', "high"),
    ('{"shape": NaN, "appearance": 0, "parts": 1}', "nan"),
])
def test_parse_failures_have_reasons(text: str, reason: str) -> None:
    result = parse_json_answer(text, KEYS, "score")
    assert not result.ok and result.value is None
    assert reason.lower() in result.error.lower()


@pytest.mark.parametrize(("raw", "expected"), [
    ("1", 1.0), ("0", 0.0), ("1.0", 1.0), ('"1"', 1.0), ("true", 1.0), ('"No"', 0.0),
    ("0.5", None), ("2", None), ('"maybe"', None),
])
def test_parse_binary(raw: str, expected: float | None) -> None:
    result = parse_json_answer(f'{{"category_match": {raw}}}', CATEGORY_KEYS, "binary")
    assert (result.value["category_match"] if result.ok else None) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ('"yes"', "yes"), ('"YES"', "yes"), ('" No "', "no"), ("true", "yes"), ("false", "no"), ('"False"', "no"),
    ('"y"', None), ("1", None), ('"unsure"', None),
])
def test_parse_yes_no(raw: str, expected: str | None) -> None:
    result = parse_json_answer(f'{{"q1": {raw}}}', ("q1",), "yesno")
    assert (result.value["q1"] if result.ok else None) == expected


def test_parse_yes_no_lines_and_unknown_kind() -> None:
    assert parse_json_answer("q1: Yes\nq2: no\nq10: yes", ("q1", "q2"), "yesno").value == {"q1": "yes", "q2": "no"}
    assert parse_json_answer("q1: yes. q2: 'no'; q3 = true", ("q1", "q2", "q3"), "yesno").value == {
        "q1": "yes", "q2": "no", "q3": "yes"}
    assert not parse_json_answer("q10: yes", ("q1",), "yesno").ok
    with pytest.raises(ValueError, match="unknown answer kind"):
        parse_json_answer("{}", ("a",), "likert")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", [
    '{"q1": "yes" or "no", "q2": "yes" or "no"}',  # the old answer template, copied
    "q1: yes or no\nq2: yes or no",
    '{"q1": "yes/no", "q2": "no"}',
    '{"q1": "<answer>", "q2": "<answer>"}',
])
def test_answers_naming_both_options_or_a_placeholder_fail(text: str) -> None:
    result = parse_json_answer(text, ("q1", "q2"), "yesno")
    assert not result.ok and result.value is None


@pytest.mark.parametrize("text", [
    '{"q1": "<answer>", "q2": "<answer>"}',
    '  {"q1":"<answer>",\n "q2": "<ANSWER>"}  ',
    'Sure:\n```json\n{"q1": "<answer>", "q2": "<answer>"}\n```',
])
def test_answer_identical_to_the_template_is_refused(text: str) -> None:
    result = parse_json_answer(text, ("q1", "q2"), "yesno", template=checklist_schema(2))
    assert not result.ok and "template" in result.error
    assert parse_json_answer('{"q1": "yes", "q2": "no"}', ("q1", "q2"), "yesno", template=checklist_schema(2)).ok


# ---- OpenAI-compatible HTTP backend --------------------------------------------------------------------------

REPLY = {"choices": [{"message": {"role": "assistant", "content": '{"category_match": 1}'}}]}


class ScriptedServer:
    """An HTTP server on 127.0.0.1 answering each POST with the next scripted step: a status code or "hang"."""

    def __init__(self, script: list[int | str]) -> None:
        self.script, self.requests, self.release = list(script), [], threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((self.path, dict(self.headers), json.loads(body)))
                step = outer.script.pop(0)
                if step == "hang":
                    outer.release.wait(5)
                    return
                payload = json.dumps(REPLY if step == 200 else {"error": "boom"}).encode()
                self.send_response(int(step))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator:
    servers: list[ScriptedServer] = []

    def start(*script: int | str) -> ScriptedServer:
        servers.append(ScriptedServer(list(script)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_openai_request_body(serve) -> None:
    server = serve(200)
    backend = OpenAIVLM(server.url, "Qwen/Qwen2.5-VL-7B-Instruct", api_key="k", max_new_tokens=32)
    images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(3)]
    assert backend.generate(images, "Is it a chair?") == '{"category_match": 1}'

    [(path, headers, body)] = server.requests
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer k"
    assert body["temperature"] == 0 and body["max_tokens"] == 32 and body["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    [message] = body["messages"]
    parts = message["content"]
    assert message["role"] == "user" and [p["type"] for p in parts] == ["image_url"] * 3 + ["text"]
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in parts[:3])
    assert parts[3]["text"] == "Is it a chair?"


def test_openai_retries_after_server_error(serve) -> None:
    server = serve(500, 200)
    assert OpenAIVLM(server.url, "m", retries=2, backoff_s=0.01).generate([], "hi") == '{"category_match": 1}'
    assert len(server.requests) == 2


def test_openai_client_error_is_not_retried(serve) -> None:
    server = serve(400, 200)
    with pytest.raises(VLMRequestError, match="HTTP 400"):
        OpenAIVLM(server.url, "m", retries=3, backoff_s=0.01).generate([], "hi")
    assert len(server.requests) == 1


def test_openai_timeout_fails_clearly_after_retries(serve) -> None:
    server = serve("hang", "hang")
    start = time.perf_counter()
    with pytest.raises(VLMRequestError, match=r"failed after 2 attempt\(s\).*timed out"):
        OpenAIVLM(server.url, "m", timeout=0.2, retries=2, backoff_s=0.01).generate([], "hi")
    assert time.perf_counter() - start < 3 and len(server.requests) == 2


def test_openai_connection_refused_fails_clearly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(VLMRequestError, match="failed after 2 attempt"):
        OpenAIVLM(f"http://127.0.0.1:{port}", "m", timeout=0.5, retries=2, backoff_s=0.01).generate([], "hi")
