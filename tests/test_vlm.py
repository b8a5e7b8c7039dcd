"""VLM judge: parsing, value computation, the transformers backend on a tiny random Qwen2.5-VL, the HTTP backend."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from mme3dr.data import ChecklistItem
from mme3dr.metrics.base import HIGHER, ScoreItem, pick_views
from mme3dr.metrics.vlm import (
    CATEGORY_KEYS,
    PROMPT_VERSION,
    OpenAIVLM,
    TransformersVLM,
    VLMJudge,
    VLMRequestError,
    checklist_prompt,
)
from mme3dr.metrics.vlm_parse import parse_json_answer
from mme3dr.metrics.weights import MissingWeightsError
from tiny_qwen import build_tiny_qwen25_vl

PROMPT = "Dark brown wooden rocking chair with curved armrests and spindle backrest."
CHECKLIST = (
    ChecklistItem("part", "Does the chair have curved armrests?", "yes"),
    ChecklistItem("count", "Does the chair have four legs on the ground?", "no"),
    ChecklistItem("colour", "Is the chair dark brown?", "yes"),
    ChecklistItem("material", "Is the chair made of metal?", "no"),
)


def make_item(folder: Path, n_views: int = 8, checklist: tuple[ChecklistItem, ...] = CHECKLIST) -> ScoreItem:
    """A ScoreItem whose render folder holds ``n_views`` small RGBA views (a coloured square on transparency)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_views):
        img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        img.paste((30 * i % 256, 80, 200, 255), (16, 16, 48, 48))
        img.save(folder / f"{i:03d}.png")
    return ScoreItem("spatial-001", "spatial", PROMPT, checklist, render_dir=folder)


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
    # Random weights answer gibberish: every value is unknown, never 0, and every query is a counted failure.
    assert result.values == {"vlm_consistency": None, "vlm_category": None, "vlm_appearance": None,
                             "vlm_checklist": None}
    assert result.details["parse_failures"] == 4
    assert set(result.details["queries"]) == {"consistency", "category", "appearance", "checklist"}
    for query in result.details["queries"].values():
        assert isinstance(query["response"], str)
        assert query["parse_failed"] is True and query["parsed"] is None and query["reason"]
    assert result.details["views"] == pick_views(8, 6)
    assert [c["answer"] for c in result.details["checklist"]] == [None] * 4


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


class CannedVLM:
    """Answers each query from a dict keyed by the query's first schema key; records what it was asked."""

    kind, model, max_new_tokens = "canned", "canned-vlm", 64

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, str]] = []

    def generate(self, images: list[Image.Image], text: str) -> str:
        assert all(img.mode == "RGB" for img in images)
        self.calls.append((len(images), text))
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
                             "vlm_checklist": 0.5}
    assert result.details["parse_failures"] == 0
    assert [c["correct"] for c in result.details["checklist"]] == [True, True, False, False]
    assert [c["answer"] for c in result.details["checklist"]] == ["yes", "no", "no", "yes"]
    assert result.details["queries"]["category"]["method"] == "fenced"
    assert [n for n, _ in backend.calls] == [6, 6, 6, 6]
    texts = [text for _, text in backend.calls]
    assert sum(PROMPT in t for t in texts) == 1  # only the category query names the prompt
    assert all(c.question in texts[-1] for c in CHECKLIST)


def test_failed_query_is_none_not_zero(tmp_path: Path) -> None:
    answers = {**ANSWERS, "color_smoothness": '{"color_smoothness": 1.5, "material": 1, "texture": 1}',
               "category_match": "I cannot tell."}
    result = VLMJudge(CannedVLM(answers), views=3).score(make_item(tmp_path, n_views=2, checklist=()))

    assert result.values == {"vlm_consistency": 2.5, "vlm_category": None, "vlm_appearance": None,
                             "vlm_checklist": None}
    assert result.details["parse_failures"] == 2
    assert "checklist" not in result.details["queries"]
    assert "1.5" in result.details["queries"]["appearance"]["reason"]
    assert result.details["views"] == [0, 1]


def test_config_and_directions() -> None:
    judge = VLMJudge(CannedVLM(ANSWERS), views=4)
    assert judge.config() == {"backend": "canned", "model": "canned-vlm", "views": 4, "max_new_tokens": 64,
                              "prompt_version": PROMPT_VERSION}
    assert judge.config_hash() != VLMJudge(CannedVLM(ANSWERS), views=6).config_hash()
    assert set(judge.directions.values()) == {HIGHER} and len(judge.directions) == 4
    assert VLMJudge(TransformersVLM("some-org/some-vlm")).config()["backend"] == "transformers"
    assert '"q2": "yes" or "no"' in checklist_prompt(["A?", "B?"], 6)


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
    assert not parse_json_answer("q10: yes", ("q1",), "yesno").ok
    with pytest.raises(ValueError, match="unknown answer kind"):
        parse_json_answer("{}", ("a",), "likert")  # type: ignore[arg-type]


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
