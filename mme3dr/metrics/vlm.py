"""VLM judge: a vision-language model looks at renders from all round an asset and answers four questions.

The judgments follow the rewards of the AR3D-R1 authors (Qwen2.5-VL-7B on 6 views), as evaluation numbers:

- ``vlm_consistency`` in [0, 3]: 3D consistency across the views, the sum of three 0-1 scores: the shape outline
  agrees across views, the appearance (colours, textures) agrees, the object's parts agree.
- ``vlm_category`` in {0, 1}: the object matches the object category named in the prompt (judged on all views).
- ``vlm_appearance`` in [0, 3]: the sum of three 0-1 scores: colour smoothness, material realism and coherence,
  texture rationality.
- ``vlm_checklist`` in [0, 1]: the item's checklist questions answered yes/no in one query; the fraction of
  questions whose answer equals the expected one (``None`` when the item has no checklist).

**Failures count.** An answer that cannot be parsed or validated, or that repeats the answer template, is a
failed judgment: it scores the judgment's worst value (0, and for the checklist every question counts as wrong),
so a judge's failures cannot lift a mean by dropping out of it. They are also counted in their own value:

- ``vlm_unparsed`` in [0, 1] (lower is better): the share of the item's queries (4, or 3 without a checklist)
  whose answer failed. ``details["queries"]`` keeps, per query, the raw answer, the parsed value and the reason.

**Baselines.** A checklist with mostly "yes" answers rewards a judge that says "yes" to everything (over the
bundled 249 prompts: 1126 of 1434 expected answers are "yes", a per-prompt mean of 0.785). So that checklist
accuracy is always read against them, every item also gets (direction "none"; ``None`` without a checklist):

- ``vlm_checklist_all_yes``: the checklist score of a judge answering "yes" to every question (the share of
  expected "yes" answers); ``vlm_checklist_all_no``: the same for "no". Reports print both, and
  ``vlm_unparsed``, beside ``vlm_checklist`` (:data:`REPORT_BESIDE`).

Answer templates use neutral placeholders (``"<answer>"``, ``<number 0-1>``) that no parser stage reads as an
answer, and :func:`mme3dr.metrics.vlm_parse.parse_json_answer` refuses an answer identical to the template.

**Views.** Each judgment is one query holding the chosen views, in azimuth order, and asking for a strict JSON
object with named keys. The views are chosen from whatever the render preset rendered, by camera direction (read
from the render folder's ``transforms.json``), so that they go all round the object: :func:`judge_views` assigns
one rendered view to each of ``views`` target directions at azimuths 0, 360/n, ... deg and elevation
``view_elevation_deg`` (default 20 deg, about the mean elevation of the authors' six reward views), minimising the
summed angles between views and targets (an optimal assignment). On the canonical 24 views the six chosen views
sit at azimuths 11, 67, 112, 191, 247 and 292 deg (largest gap 79 deg; the authors' reward views leave 74 deg)
and elevations 14-40 deg, with no extra render. With ``--preset reward6`` (6 views) the judge sees exactly the
authors' six reward views.

Backends (:class:`VLMBackend`: ``kind``, ``model``, ``max_new_tokens``, ``queries_per_call`` and
``generate_many(queries) -> list[str | Exception]``, greedy): :class:`TransformersVLM` runs a Qwen2-VL / Qwen2.5-VL
checkpoint in-process, ``batch_size`` queries per batch; :class:`OpenAIVLM` calls an OpenAI-compatible server (e.g.
vLLM serving the same checkpoint), ``concurrency`` requests in flight. :meth:`VLMJudge.score_many` asks all the
queries of its items in one ``generate_many`` call; the scoring stage hands it ``batch_items`` items at a time.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from mme3dr import runfiles
from mme3dr.defaults import DEFAULTS
from mme3dr.errors import InputError, Mme3drError
from mme3dr.metrics.base import HIGHER, LOWER, NONE, MetricResult, PromptMetric, ScoreItem, composite
from mme3dr.metrics.vlm_parse import AnswerKind, parse_json_answer
from mme3dr.render.cameras import positions_from_yaw_pitch, read_transforms
from mme3dr.weights import (MissingWeightsError, UnsafeWeightsError, missing_message, refusing_code,
                            resolve_local)

#: Changes whenever a prompt, the view choice or the scoring below changes; part of :meth:`VLMJudge.config`
#: (and so of the cache key).
PROMPT_VERSION = "mme3dr-vlm-v2"

CONSISTENCY_KEYS: tuple[str, ...] = ("shape", "appearance", "parts")
CATEGORY_KEYS: tuple[str, ...] = ("category_match",)
APPEARANCE_KEYS: tuple[str, ...] = ("color_smoothness", "material", "texture")

#: The answer form shown in each query (also what an answer may not simply repeat).
CONSISTENCY_SCHEMA = '{"shape": <number 0-1>, "appearance": <number 0-1>, "parts": <number 0-1>}'
CATEGORY_SCHEMA = '{"category_match": <0 or 1>}'
APPEARANCE_SCHEMA = '{"color_smoothness": <number 0-1>, "material": <number 0-1>, "texture": <number 0-1>}'
#: Neutral placeholder of one checklist answer: it names neither answer, so copying it answers nothing.
ANSWER_PLACEHOLDER = "<answer>"

_VIEWS_INTRO = "The {n} images are views of one 3D object, rendered from camera angles all around it."

CONSISTENCY_PROMPT = _VIEWS_INTRO + """
Judge the 3D consistency of the object across the views. Score each criterion 1 if it holds, 0 if it does not \
(a value between 0 and 1 if it holds only in part):
- "shape": the outline and silhouette fit one coherent 3D shape seen from different sides.
- "appearance": the same surface has the same colours and textures in every view.
- "parts": the object's parts are consistent: no part appears, disappears or changes between views.
Answer with only a JSON object, no other text, in exactly this form, with a number in place of each <number 0-1>:
{schema}"""

CATEGORY_PROMPT = _VIEWS_INTRO + """
The object was generated from this text prompt: "{prompt}"
Does the object belong to the object category named in the prompt (for example a chair for "a wooden rocking \
chair with curved armrests")? Judge the kind of object only, not its colours, style or quality.
Answer with only a JSON object, no other text, in exactly this form, with 1 for yes or 0 for no in place of \
<0 or 1>:
{schema}"""

APPEARANCE_PROMPT = _VIEWS_INTRO + """
Judge the appearance of the object. Score each criterion from 0 (poor) to 1 (good):
- "color_smoothness": colours are smooth and clean, without noise, blotches or seams.
- "material": the materials look realistic and coherent over the whole object.
- "texture": the texture is rational: patterns and details sit where they belong on the object.
Answer with only a JSON object, no other text, in exactly this form, with a number in place of each <number 0-1>:
{schema}"""

CHECKLIST_PROMPT = _VIEWS_INTRO + """
Answer each question about the object, judging only from what the views show.
{questions}
Answer with only a JSON object, no other text, with one key per question, in exactly this form, writing yes or \
no in place of each <answer>:
{schema}"""

VALUE_KEYS: tuple[str, ...] = ("vlm_consistency", "vlm_category", "vlm_appearance", "vlm_checklist",
                               "vlm_unparsed", "vlm_checklist_all_yes", "vlm_checklist_all_no")
#: Values a report prints beside another value's table, as (value key, column label).
REPORT_BESIDE: dict[str, tuple[tuple[str, str], ...]] = {
    "vlm_checklist": (("vlm_checklist_all_yes", "all-yes baseline"), ("vlm_checklist_all_no", "all-no baseline"),
                      ("vlm_unparsed", "unparsed answers")),
}


#: One query: the images of one user message, in order, and its text.
Query = tuple[list[Image.Image], str]

#: Queries per judged item (consistency, category, appearance, checklist).
QUERIES_PER_ITEM = 4


class VLMBackend(Protocol):
    """What :class:`VLMJudge` needs from a model: greedy answers to user messages with several images.

    ``generate_many`` answers every query, in the order given: the answer text, or the exception that query
    raised (one query's failure never takes the others with it). ``queries_per_call``: how many queries one call
    should carry to keep the backend busy (a batch, or the requests in flight)."""

    kind: str
    model: str
    max_new_tokens: int

    @property
    def queries_per_call(self) -> int: ...

    def generate_many(self, queries: Sequence[Query]) -> list[str | Exception]: ...


def answer_one(backend: VLMBackend, images: list[Image.Image], text: str) -> str:
    """One query through ``backend.generate_many``; its failure is raised."""
    [answer] = backend.generate_many([(images, text)])
    if isinstance(answer, Exception):
        raise answer
    return answer


class VLMRequestError(Mme3drError, RuntimeError):
    """An OpenAI-compatible server did not give an answer (after the retries, or refused the request)."""


def checklist_schema(n_questions: int) -> str:
    """The checklist's answer form: ``{"q1": "<answer>", "q2": "<answer>", ...}``."""
    return "{" + ", ".join(f'"q{i}": "{ANSWER_PLACEHOLDER}"' for i in range(1, n_questions + 1)) + "}"


def checklist_prompt(questions: Sequence[str], n_views: int) -> str:
    """The checklist query: questions as ``q1: ...`` lines, answered in the form of :func:`checklist_schema`."""
    lines = "\n".join(f"q{i}: {q}" for i, q in enumerate(questions, 1))
    return CHECKLIST_PROMPT.format(n=n_views, questions=lines, schema=checklist_schema(len(questions)))


def judge_views(positions: np.ndarray, n: int,
                elevation_deg: float = DEFAULTS.vlm_view_elevation_deg) -> list[int]:
    """Indices of ``n`` camera ``positions`` (rows x, y, z; z up, object at the origin) that go all round the
    object, in the order of their targets; all of them, in order, when ``n >= len(positions)``.

    Target k (k = 0 .. n-1) is the direction at azimuth 360 k / n deg and elevation ``elevation_deg``. Each target
    gets one distinct view, the assignment minimising the summed angles between a view's direction and its
    target (scipy ``linear_sum_assignment``).
    """
    positions = np.asarray(positions, dtype=float)
    if n >= len(positions):
        return list(range(len(positions)))
    units = positions / np.linalg.norm(positions, axis=1, keepdims=True)
    targets = positions_from_yaw_pitch(np.radians([(360.0 * k / n, elevation_deg) for k in range(n)]), 1.0)
    rows, cols = linear_sum_assignment(np.arccos(np.clip(targets @ units.T, -1.0, 1.0)))
    return [int(c) for c in cols[np.argsort(rows)]]


def azimuth_elevation_deg(positions: np.ndarray) -> np.ndarray:
    """(azimuth in [0, 360), elevation) in degrees of camera positions (z up), shape (n, 2)."""
    x, y, z = np.asarray(positions, dtype=float).T
    return np.stack([np.round(np.degrees(np.arctan2(y, x)), 9) % 360.0,  # -1e-15 deg is 0, not 360
                     np.degrees(np.arcsin(z / np.linalg.norm(positions, axis=1)))], axis=-1)


@dataclass(frozen=True)
class Judgment:
    """One judgment's query: its name in ``details["queries"]``, text, answer form, answer keys and kind."""

    name: str
    text: str
    schema: str
    keys: tuple[str, ...]
    kind: AnswerKind


@dataclass(frozen=True)
class JudgePlan:
    """What the judge asks about one item: the chosen views (files, camera positions, images) and the judgments."""

    item: ScoreItem
    paths: list[Path]
    positions: np.ndarray
    images: list[Image.Image]
    judgments: tuple[Judgment, ...]

    def queries(self) -> list[Query]:
        return [(self.images, j.text) for j in self.judgments]


class VLMJudge(PromptMetric):
    """The four VLM judgments of one asset, their failures and the checklist baselines (see the module docstring),
    from ``views`` renders chosen all round the object.

    ``batch_items``: items per :meth:`score_many` call in the scoring stage, by default
    ``ceil(backend.queries_per_call / 4)`` (four judgments an item). Batching never changes a record: an item's
    answers, parsing and values are those of :meth:`score`; an item whose views fail to load, or one of whose
    queries fails, gets its own error (the first failure, in judgment order), and the others go on."""

    name: ClassVar[str] = "vlm"
    needs: ClassVar[str] = "renders"
    directions: ClassVar[dict[str, str]] = {
        "vlm_consistency": HIGHER, "vlm_category": HIGHER, "vlm_appearance": HIGHER, "vlm_checklist": HIGHER,
        "vlm_unparsed": LOWER, "vlm_checklist_all_yes": NONE, "vlm_checklist_all_no": NONE}

    def __init__(self, backend: VLMBackend | None = None, views: int = DEFAULTS.vlm_views,
                 view_elevation_deg: float = DEFAULTS.vlm_view_elevation_deg, batch_items: int | None = None) -> None:
        if views < 1:
            raise InputError(f"views must be >= 1, got {views}")
        self.backend: VLMBackend = backend if backend is not None else TransformersVLM()
        self.views = views
        self.view_elevation_deg = view_elevation_deg
        self.batch_items = (batch_items if batch_items is not None
                            else max(1, math.ceil(self.backend.queries_per_call / QUERIES_PER_ITEM)))
        if self.batch_items < 1:
            raise InputError(f"batch_items must be >= 1, got {self.batch_items}")

    def config(self) -> dict[str, Any]:
        return {"backend": self.backend.kind, "model": self.backend.model, "views": self.views,
                "view_elevation_deg": self.view_elevation_deg, "max_new_tokens": self.backend.max_new_tokens,
                "prompt_version": PROMPT_VERSION}

    def choose_views(self, item: ScoreItem) -> tuple[list[Path], np.ndarray]:
        """The chosen view files (see :func:`judge_views`) and all the views' camera positions."""
        paths = item.view_paths()
        transforms = Path(item.render_dir) / runfiles.TRANSFORMS
        if not transforms.is_file():
            raise ValueError(f"{item.prompt_id}: {transforms} is missing, so the judge cannot tell where the views "
                             f"were taken; delete {item.render_dir} and run `mme3dr render` again")
        positions = read_transforms(transforms).poses[:, :3, 3]
        if len(positions) != len(paths):
            raise ValueError(f"{item.prompt_id}: {transforms} has {len(positions)} cameras for {len(paths)} views; "
                             f"delete {item.render_dir} and run `mme3dr render` again")
        chosen = judge_views(positions, self.views, self.view_elevation_deg)
        return [paths[i] for i in chosen], positions[chosen]

    def plan(self, item: ScoreItem) -> JudgePlan:
        """The item's chosen views, loaded, and its judgments (the checklist only when the item has one)."""
        paths, positions = self.choose_views(item)
        images = []
        for path in paths:
            with Image.open(path) as img:
                images.append(composite(img))
        n = len(images)
        judgments = [
            Judgment("consistency", CONSISTENCY_PROMPT.format(n=n, schema=CONSISTENCY_SCHEMA), CONSISTENCY_SCHEMA,
                     CONSISTENCY_KEYS, "score"),
            Judgment("category", CATEGORY_PROMPT.format(n=n, prompt=item.prompt, schema=CATEGORY_SCHEMA),
                     CATEGORY_SCHEMA, CATEGORY_KEYS, "binary"),
            Judgment("appearance", APPEARANCE_PROMPT.format(n=n, schema=APPEARANCE_SCHEMA), APPEARANCE_SCHEMA,
                     APPEARANCE_KEYS, "score"),
        ]
        if item.checklist:
            keys = tuple(f"q{i}" for i in range(1, len(item.checklist) + 1))
            judgments.append(Judgment("checklist", checklist_prompt([c.question for c in item.checklist], n),
                                      checklist_schema(len(keys)), keys, "yesno"))
        return JudgePlan(item, paths, positions, images, tuple(judgments))

    def score(self, item: ScoreItem) -> MetricResult:
        plan = self.plan(item)
        answers = self.backend.generate_many(plan.queries())
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return self.result(plan, answers)

    def score_many(self, items: Sequence[ScoreItem]) -> list[MetricResult]:
        """Every item's queries in one ``backend.generate_many`` call; records as :meth:`score` gives them."""
        plans: list[JudgePlan | MetricResult] = []
        for item in items:
            try:
                plans.append(self.plan(item))
            except Exception as exc:  # recorded, never fatal for the other items
                plans.append(MetricResult.failed(exc))
        queries = [q for plan in plans if isinstance(plan, JudgePlan) for q in plan.queries()]
        answers = iter(self.backend.generate_many(queries) if queries else [])
        out = []
        for plan in plans:
            if isinstance(plan, MetricResult):
                out.append(plan)
                continue
            mine = [next(answers) for _ in plan.judgments]
            failed = next((a for a in mine if isinstance(a, Exception)), None)
            try:
                out.append(MetricResult.failed(failed) if failed is not None else self.result(plan, mine))
            except Exception as exc:
                out.append(MetricResult.failed(exc))
        return out

    def result(self, plan: JudgePlan, answers: Sequence[str]) -> MetricResult:
        """The item's values and details from the answers to its judgments (in the order of ``plan.judgments``)."""
        item = plan.item
        queries: dict[str, dict[str, Any]] = {}
        parsed_by: dict[str, dict[str, float | str] | None] = {}
        for judgment, response in zip(plan.judgments, answers, strict=True):
            parsed = parse_json_answer(response, judgment.keys, judgment.kind, template=judgment.schema)
            queries[judgment.name] = {"response": response, "parsed": parsed.value, "parse_failed": not parsed.ok,
                                      "reason": parsed.error, "method": parsed.method}
            parsed_by[judgment.name] = parsed.value
        values: dict[str, float | None] = {
            "vlm_consistency": _total(parsed_by["consistency"], CONSISTENCY_KEYS),
            "vlm_category": _total(parsed_by["category"], CATEGORY_KEYS),
            "vlm_appearance": _total(parsed_by["appearance"], APPEARANCE_KEYS),
            "vlm_checklist": None, "vlm_unparsed": None, "vlm_checklist_all_yes": None, "vlm_checklist_all_no": None,
        }
        checks: list[dict[str, Any]] = []
        if item.checklist:
            keys = [f"q{i}" for i in range(1, len(item.checklist) + 1)]
            answered = parsed_by["checklist"]
            for key, check in zip(keys, item.checklist):
                answer, expected = None if answered is None else answered[key], check.answer.strip().lower()
                checks.append({"type": check.type, "question": check.question, "expected": expected,
                               "answer": answer, "correct": answer == expected})  # no answer: wrong
            values["vlm_checklist"] = float(np.mean([c["correct"] for c in checks]))
            values["vlm_checklist_all_yes"] = float(np.mean([c["expected"] == "yes" for c in checks]))
            values["vlm_checklist_all_no"] = float(np.mean([c["expected"] == "no" for c in checks]))
        failures = sum(q["parse_failed"] for q in queries.values())
        values["vlm_unparsed"] = failures / len(queries)
        angles = azimuth_elevation_deg(plan.positions)
        details = {"views": [int(p.stem) for p in plan.paths], "view_azimuth_deg": angles[:, 0].round(3).tolist(),
                   "view_elevation_deg": angles[:, 1].round(3).tolist(), "queries": queries, "checklist": checks,
                   "parse_failures": failures}
        return MetricResult(values=values, details=details)


def _total(parsed: dict[str, float | str] | None, keys: Sequence[str]) -> float:
    """The sum of the parsed scores; 0 (the worst value) for a failed answer."""
    return 0.0 if parsed is None else float(sum(float(parsed[k]) for k in keys))


class TransformersVLM:
    """A Qwen2-VL / Qwen2.5-VL checkpoint run with ``transformers``; greedy decoding, ``batch_size`` queries a batch.

    ``model`` is a hub id or a local folder (an absolute or ``./`` path that does not exist fails at once); for a
    hub id a copy under ``$MME3DR_WEIGHTS`` (``org--name``) is preferred to the hub. Weights load on the first
    :meth:`generate_many` (or :meth:`load`), so building the metric and computing its cache key never touch them.
    ``device`` defaults to CUDA when available, ``dtype`` to bfloat16 on CUDA and float32 on the CPU. Decoding is
    greedy (``do_sample=False``); the checkpoint's other generation settings (e.g. Qwen's ``repetition_penalty``)
    apply, as they do by default in vLLM.

    Batches (:meth:`answer_ids`): the queries of one call, longest text first, ``batch_size`` at a time, padded on
    the left. Queries that share the same image objects (the four judgments of one item) have their views encoded
    once by the vision tower, and the language model gets the features (``mm_encoder_outputs``) instead of the
    pixels. A batch that raises is answered again one query at a time, so a failure stays its own query's.
    """

    kind = "transformers"

    def __init__(self, model: str = DEFAULTS.vlm_model, device: str | None = None, dtype: Any = None,
                 max_new_tokens: int = DEFAULTS.vlm_max_new_tokens, batch_size: int = DEFAULTS.vlm_batch_size) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size (queries per batch) must be >= 1, got {batch_size}")
        self.model = model
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self._processor: Any = None
        self._net: Any = None

    @classmethod
    def from_loaded(cls, processor: Any, net: Any, model: str, max_new_tokens: int = DEFAULTS.vlm_max_new_tokens,
                    batch_size: int = DEFAULTS.vlm_batch_size) -> TransformersVLM:
        """A backend around a processor and model already in memory (benchmarks: a model built from its config);
        ``model`` names it in the metric config."""
        backend = cls(model, device=str(net.device), dtype=net.dtype, max_new_tokens=max_new_tokens,
                      batch_size=batch_size)
        backend._processor, backend._net = processor, net.eval()
        return backend

    @property
    def queries_per_call(self) -> int:
        return self.batch_size

    def load(self) -> None:
        """Load processor and model now; :class:`MissingWeightsError` says how to provide missing weights."""
        if self._net is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(self.model).expanduser()
        explicit = path if path.exists() or path.is_absolute() or self.model.startswith(".") else None
        source = str(resolve_local(self.model, explicit) or self.model)  # a missing explicit path raises here
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = self.dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
        try:  # a checkpoint's own Python code is never run, and its weights are read as tensors only
            with refusing_code(f"VLM judge weights {source}"):
                processor = AutoProcessor.from_pretrained(source, trust_remote_code=False)
                net = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, trust_remote_code=False,
                                                                  weights_only=True)
        except UnsafeWeightsError:
            raise
        except (OSError, ValueError) as exc:  # not found, offline, not a model folder
            raise MissingWeightsError(
                missing_message("VLM judge", self.model, self.model, exc, option="--vlm-model")) from exc
        self._processor, self._net = processor, net.to(device).eval()

    def generate(self, images: list[Image.Image], text: str) -> str:
        """The model's greedy answer to one user message: all ``images``, then ``text``."""
        return answer_one(self, images, text)

    def generate_many(self, queries: Sequence[Query]) -> list[str | Exception]:
        """The greedy answer to each query (or the exception it raised), in the order of ``queries``."""
        return [ids if isinstance(ids, Exception) else self._processor.decode(ids, skip_special_tokens=True)
                for ids in self.answer_ids(queries)]

    def answer_ids(self, queries: Sequence[Query]) -> list[list[int] | Exception]:
        """The generated token ids of each query up to and with its end-of-sequence token (or the exception it
        raised), in the order of ``queries``; batched as the class docstring says."""
        self.load()
        order = sorted(range(len(queries)), key=lambda i: (len(queries[i][0]), len(queries[i][1])), reverse=True)
        features: dict[tuple[int, ...], tuple[Any, ...]] = {}  # encoded views by the ids of their image objects
        out: list[list[int] | Exception] = [ValueError("not answered")] * len(queries)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            try:
                answers: list[list[int] | Exception] = list(self._batch([queries[i] for i in chunk], features))
            except Exception as exc:  # e.g. out of memory, or one query's images: answer each alone
                answers = [exc] if len(chunk) == 1 else [self.answer_ids([queries[i]])[0] for i in chunk]
            for i, answer in zip(chunk, answers, strict=True):
                out[i] = answer
        return out

    def _batch(self, queries: Sequence[Query], features: dict[tuple[int, ...], tuple[Any, ...]]) -> list[list[int]]:
        """One left-padded ``generate`` over ``queries``; views already in ``features`` are not encoded again."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        prompts = [self._processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]}],
            add_generation_prompt=True, tokenize=False) for images, text in queries]
        flat = [img for images, _ in queries for img in images]
        inputs = self._processor(text=prompts, images=flat or None, padding=True, padding_side="left",
                                 return_tensors="pt").to(self._net.device)
        kwargs = dict(inputs)
        pixels = kwargs.pop("pixel_values", None)
        if pixels is not None:
            grid = kwargs["image_grid_thw"]
            rows = [0, *np.cumsum(grid.prod(-1).tolist()).tolist()]  # pixel rows of image k: rows[k]:rows[k+1]
            per_image: list[Any] = []
            first = 0  # index of the query's first image among all images of the batch
            for images, _ in queries:
                key, last = tuple(id(img) for img in images), first + len(images)
                if images and key not in features:
                    with torch.inference_mode():
                        encoded = self._net.model.get_image_features(
                            pixels[rows[first]:rows[last]], grid[first:last], return_dict=True)
                    features[key] = tuple(encoded.pooler_output)
                per_image.extend(features.get(key, ()))
                first = last
            kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(per_image))}
        with torch.inference_mode():
            out = self._net.generate(**kwargs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     temperature=None, top_p=None, top_k=None)
        ends = self._net.generation_config.eos_token_id
        ends = set(ends if isinstance(ends, (list, tuple)) else [] if ends is None else [ends])
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        return [_until_end(row, ends) for row in new]


def _until_end(ids: list[int], ends: set[int]) -> list[int]:
    """Token ids up to and with the first end-of-sequence id (a finished row of a batch is padded after it)."""
    for k, token in enumerate(ids):
        if token in ends:
            return ids[:k + 1]
    return ids


class OpenAIVLM:
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang, ...), standard library only.

    Each query is one user message: the images as base64 PNG data URLs (``image_url`` parts), then the text;
    ``temperature`` 0 (greedy) and ``max_tokens`` = ``max_new_tokens``. ``retries`` is the number of attempts:
    connection errors, timeouts (``timeout`` seconds per attempt), HTTP 429 and 5xx are retried after
    ``backoff_s``, doubled each time; other HTTP errors and malformed replies fail at once. A failed query's
    answer is a :class:`VLMRequestError` with the URL and the last error (:meth:`generate` raises it).
    :meth:`generate_many` sends up to ``concurrency`` requests at once (a thread pool), each with its own timeout
    and retries, and returns the answers in the order of the queries.
    """

    kind = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 timeout: float = DEFAULTS.vlm_timeout_s, retries: int = DEFAULTS.vlm_retries,
                 max_new_tokens: int = DEFAULTS.vlm_max_new_tokens, backoff_s: float = 1.0,
                 concurrency: int = DEFAULTS.vlm_concurrency) -> None:
        if retries < 1:
            raise InputError(f"retries (attempts per query) must be >= 1, got {retries}")
        if concurrency < 1:
            raise InputError(f"concurrency (requests in flight) must be >= 1, got {concurrency}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.max_new_tokens = max_new_tokens
        self.backoff_s = backoff_s
        self.concurrency = concurrency

    @property
    def queries_per_call(self) -> int:
        return self.concurrency

    def request_body(self, images: list[Image.Image], text: str) -> dict[str, Any]:
        """The JSON body of one query."""
        parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": _data_url(img)}} for img in images]
        parts.append({"type": "text", "text": text})
        return {"model": self.model, "messages": [{"role": "user", "content": parts}], "temperature": 0,
                "max_tokens": self.max_new_tokens}

    def generate(self, images: list[Image.Image], text: str) -> str:
        """The server's answer to one query; :class:`VLMRequestError` when there is none."""
        return answer_one(self, images, text)

    def generate_many(self, queries: Sequence[Query]) -> list[str | Exception]:
        """Each query's answer (or its error), in the order of ``queries``, ``concurrency`` requests at a time."""
        if not queries:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(queries))) as pool:
            return list(pool.map(self._answer, queries))

    def _answer(self, query: Query) -> str | Exception:
        try:
            return self._post(*query)
        except Exception as exc:  # this query's failure, never the others'
            return exc

    def _post(self, images: list[Image.Image], text: str) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(self.request_body(images, text)).encode()
        last = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:300]
                if exc.code != 429 and exc.code < 500:
                    raise VLMRequestError(f"POST {self.url}: HTTP {exc.code} {detail}") from exc
                last = f"HTTP {exc.code} {detail}"
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out
                last = f"{type(exc).__name__}: {exc}"
            else:
                return _message_text(raw, self.url)
        raise VLMRequestError(f"POST {self.url} failed after {self.retries} attempt(s) "
                              f"(timeout {self.timeout:g} s each); last error: {last}")


def _data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _message_text(raw: bytes, url: str) -> str:
    """The first choice's message text of a chat-completions reply."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise VLMRequestError(f"POST {url}: not a chat-completions reply: {raw[:300]!r}") from exc
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""
