"""The batched VLM judge: left-padded transformers batches answer as single queries do, the HTTP backend keeps
several requests in flight and matches answers to queries, and batched records equal one-at-a-time records (also
through the scoring stage)."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import trimesh
from PIL import Image

from mme3dr.adapters import Generator, ModelSpec
from mme3dr.data import load_benchmark
from mme3dr.generation import generate_run
from mme3dr.metrics.base import ScoreItem
from mme3dr.metrics.vlm import OpenAIVLM, TransformersVLM, VLMJudge, VLMRequestError
from mme3dr.render.presets import get_preset
from mme3dr.render.runs import render_run
from mme3dr.score_records import read_scores
from mme3dr.scoring import BuiltMetrics, score_run
from test_vlm import ANSWERS, CHECKLIST, make_item
from tiny_qwen import build_tiny_qwen25_vl

MAX_NEW = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The tiny random Qwen2.5-VL (float32, CPU) with its weights scaled x3, so that greedy answers differ from
    query to query (unscaled, every query with images answers the end token at once)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = build_tiny_qwen25_vl(tmp_path_factory.mktemp("tiny") / "vlm")
    processor = AutoProcessor.from_pretrained(folder)
    net = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in net.parameters():
            param.mul_(3.0)
    return processor, net


def reference_ids(processor, net, images: list[Image.Image], text: str) -> list[int]:
    """One query alone, the plain transformers way (pixels into ``generate``, no padding), up to its end token."""
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                           tokenize=False)
    inputs = processor(text=[prompt], images=images or None, return_tensors="pt")
    with torch.inference_mode():
        out = net.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False, temperature=None, top_p=None, top_k=None)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def view_sets() -> list[list[Image.Image]]:
    """Three sets of six views of different sizes (so different numbers of image tokens: padding is needed)."""
    return [[Image.new("RGB", (40 + 8 * k, 56), (200, 30 * i + k, 7 * k)) for i in range(6)] for k in range(3)]


TEXTS = ["Describe the object.", "Is it a chair? Answer yes or no with a JSON object please.", "q1: yes"]


def test_batched_answers_equal_single_answers(tiny: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    processor, net = tiny
    sets = view_sets()
    queries = [(sets[k], TEXTS[(k + j) % 3]) for k in range(3) for j in range(2)] + [([], "Just text, no views.")]
    backend = TransformersVLM.from_loaded(processor, net, "tiny", max_new_tokens=MAX_NEW, batch_size=3)
    encoded: list[int] = []
    encode = net.model.get_image_features

    def counting(pixel_values, image_grid_thw, **kwargs):
        encoded.append(len(image_grid_thw))
        return encode(pixel_values, image_grid_thw, **kwargs)

    monkeypatch.setattr(net.model, "get_image_features", counting)
    got = backend.answer_ids(queries)
    monkeypatch.undo()

    expected = [reference_ids(processor, net, images, text) for images, text in queries]
    assert got == expected  # same token ids, in the order of the queries
    assert len({tuple(ids) for ids in expected}) >= 5  # the answers differ: a real check
    ends = set(net.generation_config.eos_token_id)
    assert any(len(ids) < MAX_NEW and ids[-1] in ends for ids in expected)  # one stopped early: trimmed alike
    assert any(len(ids) == MAX_NEW for ids in expected)
    assert encoded == [6, 6, 6]  # each set of views encoded once, though asked twice (in two different batches)
    texts = backend.generate_many(queries)
    assert texts == [processor.decode(ids, skip_special_tokens=True) for ids in expected]
    assert backend.generate(*queries[2]) == texts[2]


def test_a_failing_query_fails_alone(tiny: tuple) -> None:
    """A query whose view cannot be processed (aspect ratio over 200) is that query's error; its batch is answered
    again one query at a time."""
    processor, net = tiny
    sets = view_sets()
    bad = [Image.new("RGB", (28 * 201, 28), (0, 0, 0))]
    queries = [(sets[0], TEXTS[0]), (bad, TEXTS[1]), (sets[1], TEXTS[2])]
    answers = TransformersVLM.from_loaded(processor, net, "tiny", max_new_tokens=MAX_NEW, batch_size=3
                                          ).answer_ids(queries)
    assert isinstance(answers[1], ValueError) and "aspect ratio" in str(answers[1])
    assert answers[0] == reference_ids(processor, net, *queries[0])
    assert answers[2] == reference_ids(processor, net, *queries[2])


# ---- the judge: batched records equal one-at-a-time records ---------------------------------------------------


class ItemAnswers:
    """Answers from :data:`test_vlm.ANSWERS`, but the consistency query's from its views (the first view's centre
    red / 255); a query whose text names ``fail_prompt`` fails. Records the size of every call."""

    kind, model, max_new_tokens, queries_per_call = "items", "item-answers", 64, 8

    def __init__(self, fail_prompt: str | None = None) -> None:
        self.fail_prompt = fail_prompt
        self.call_sizes: list[int] = []

    def generate_many(self, queries) -> list[str | Exception]:
        self.call_sizes.append(len(queries))
        out: list[str | Exception] = []
        for images, text in queries:
            if self.fail_prompt and self.fail_prompt in text:
                out.append(VLMRequestError(f"POST http://judge: HTTP 400 refused {self.fail_prompt}"))
            elif '"shape"' in text:
                centre = images[0].getpixel((images[0].width // 2, images[0].height // 2))
                out.append(json.dumps({"shape": round(centre[0] / 255, 2), "appearance": 1,
                                       "parts": len(images) % 2}))
            else:
                out.append(next(answer for key, answer in ANSWERS.items() if f'"{key}"' in text))
        return out


def judge_items(tmp_path: Path) -> list[ScoreItem]:
    """Five items: different prompts and checklists (one without), one whose camera poses are missing."""
    items = []
    for k in range(5):
        item = make_item(tmp_path / f"item{k}", checklist=CHECKLIST[:k])
        items.append(dataclasses.replace(item, prompt_id=f"p-{k}", prompt=f"{item.prompt} Number {k}."))
    (tmp_path / "item3" / "transforms.json").unlink()
    return items


@pytest.mark.parametrize("fail_prompt", [None, "Number 1."])
def test_batched_records_equal_unbatched(tmp_path: Path, fail_prompt: str | None) -> None:
    items = judge_items(tmp_path)
    single = ItemAnswers(fail_prompt)
    alone = [dataclasses.asdict(VLMJudge(single).score_many([item])[0]) for item in items]
    batched = ItemAnswers(fail_prompt)
    together = [dataclasses.asdict(r) for r in VLMJudge(batched).score_many(items)]

    assert together == alone
    assert batched.call_sizes == [3 + 4 + 4 + 4]  # one call: item 0 has no checklist, item 3 no poses
    assert max(single.call_sizes) == 4
    assert "transforms.json is missing" in together[3]["error"]
    if fail_prompt:  # the failing query fails its own item only, worded as before
        assert together[1]["error"] == "VLMRequestError: POST http://judge: HTTP 400 refused Number 1."
        assert [r["error"] is None for r in together] == [True, False, True, False, True]
    else:
        assert [r["error"] is None for r in together] == [True, True, True, False, True]
        assert len({r["values"]["vlm_checklist"] for r in together if r["error"] is None}) > 1


def test_judge_batch_items_follow_the_backend() -> None:
    assert VLMJudge(ItemAnswers()).batch_items == 2  # 8 queries a call, 4 per item
    assert VLMJudge(TransformersVLM("some-org/some-vlm", batch_size=30)).batch_items == 8
    assert VLMJudge(OpenAIVLM("http://127.0.0.1:9", "m", concurrency=5)).batch_items == 2
    assert VLMJudge(ItemAnswers(), batch_items=5).batch_items == 5


class Box(Generator):
    def generate_one(self, request):
        trimesh.creation.box(extents=(1.0, 0.6, 0.4)).export(request.output_dir / "mesh.ply")
        return request.output_dir / "mesh.ply"


def test_scoring_stage_hands_the_judge_several_items(tmp_path: Path) -> None:
    """``score_run`` calls ``score_many`` on ``batch_items`` items at a time, in order; the records are those of
    one item at a time."""
    run, preset = tmp_path / "RUN", get_preset("canonical").with_overrides(resolution=16, n_views=8)
    generate_run(Box(), load_benchmark(limit=5), run, model_spec=ModelSpec("box"), progress=False)
    render_run(run, preset, progress=False)
    records = {}
    for batch_items in (1, 2):
        (run / "scores.jsonl").unlink(missing_ok=True)
        backend = ItemAnswers()
        judge = VLMJudge(backend, batch_items=batch_items)
        summary = score_run(run, ["vlm"], preset, built=BuiltMetrics({"vlm": judge}, {}), progress=False)
        assert summary.scored["vlm"] == 5
        assert [n // 4 for n in backend.call_sizes] == ([1] * 5 if batch_items == 1 else [2, 2, 1])
        records[batch_items] = [{k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"}
                                for r in read_scores(run)]
    assert [r["prompt_id"] for r in records[2]] == [r.id for r in load_benchmark(limit=5)]
    assert records[2] == records[1]


# ---- OpenAI-compatible server: several requests in flight ------------------------------------------------------


class ConcurrentServer:
    """Answers ``answer to: TEXT`` to each request; a text containing ``FAIL`` gets HTTP 400. It records the most
    requests in flight at once, and answers out of order: a request waits until a second one is in flight (or
    ``total`` requests have come), and the first request also waits until another request has been answered."""

    def __init__(self, total: int) -> None:
        self.total, self.arrived, self.in_flight, self.max_in_flight = total, 0, 0, 0
        self.answered: list[str] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][0]["content"][-1]["text"]
                with outer.cond:
                    arrival = outer.arrived
                    outer.arrived += 1
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    outer.cond.notify_all()
                    outer.cond.wait_for(lambda: outer.in_flight >= 2 or outer.arrived >= outer.total, timeout=5)
                    if arrival == 0:
                        outer.cond.wait_for(lambda: bool(outer.answered), timeout=5)
                failed = "FAIL" in text
                payload = json.dumps({"error": "bad"} if failed else
                                     {"choices": [{"message": {"content": f"answer to: {text}"}}]}).encode()
                self.send_response(400 if failed else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                with outer.cond:
                    outer.in_flight -= 1
                    outer.answered.append(text)
                    outer.cond.notify_all()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def concurrent_server() -> Iterator:
    servers: list[ConcurrentServer] = []

    def start(total: int) -> ConcurrentServer:
        servers.append(ConcurrentServer(total))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_openai_requests_in_flight_are_bounded_and_matched(concurrent_server) -> None:
    texts = [f"query {i}" for i in range(9)] + ["query FAIL"]
    server = concurrent_server(len(texts))
    backend = OpenAIVLM(server.url, "m", retries=1, concurrency=3)
    images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(2)]
    answers = backend.generate_many([(images, t) for t in texts])

    assert answers[:-1] == [f"answer to: {t}" for t in texts[:-1]]  # each answer with its own query
    assert isinstance(answers[-1], VLMRequestError) and "HTTP 400" in str(answers[-1])  # its own failure only
    assert 1 < server.max_in_flight <= 3
    assert server.answered != texts  # answered out of order, returned in order
    assert backend.generate(images, "query 3") == "answer to: query 3"
