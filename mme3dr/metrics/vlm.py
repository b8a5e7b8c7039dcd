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

Backends (anything with ``kind``, ``model``, ``max_new_tokens`` and ``generate(images, text) -> str``, greedy):
:class:`TransformersVLM` runs a Qwen2-VL / Qwen2.5-VL checkpoint in-process; :class:`OpenAIVLM` calls an
OpenAI-compatible server (e.g. vLLM serving the same checkpoint).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
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


class VLMBackend(Protocol):
    """What :class:`VLMJudge` needs from a model: greedy answers to one user message with several images."""

    kind: str
    model: str
    max_new_tokens: int

    def generate(self, images: list[Image.Image], text: str) -> str: ...


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


class VLMJudge(PromptMetric):
    """The four VLM judgments of one asset, their failures and the checklist baselines (see the module docstring),
    from ``views`` renders chosen all round the object."""

    name: ClassVar[str] = "vlm"
    needs: ClassVar[str] = "renders"
    directions: ClassVar[dict[str, str]] = {
        "vlm_consistency": HIGHER, "vlm_category": HIGHER, "vlm_appearance": HIGHER, "vlm_checklist": HIGHER,
        "vlm_unparsed": LOWER, "vlm_checklist_all_yes": NONE, "vlm_checklist_all_no": NONE}

    def __init__(self, backend: VLMBackend | None = None, views: int = DEFAULTS.vlm_views,
                 view_elevation_deg: float = DEFAULTS.vlm_view_elevation_deg) -> None:
        if views < 1:
            raise InputError(f"views must be >= 1, got {views}")
        self.backend: VLMBackend = backend if backend is not None else TransformersVLM()
        self.views = views
        self.view_elevation_deg = view_elevation_deg

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

    def score(self, item: ScoreItem) -> MetricResult:
        paths, positions = self.choose_views(item)
        images = []
        for path in paths:
            with Image.open(path) as img:
                images.append(composite(img))
        n = len(images)
        queries: dict[str, dict[str, Any]] = {}

        def ask(query: str, text: str, schema: str, keys: Sequence[str],
                kind: AnswerKind) -> dict[str, float | str] | None:
            response = self.backend.generate(images, text)
            parsed = parse_json_answer(response, keys, kind, template=schema)
            queries[query] = {"response": response, "parsed": parsed.value, "parse_failed": not parsed.ok,
                              "reason": parsed.error, "method": parsed.method}
            return parsed.value

        consistency = ask("consistency", CONSISTENCY_PROMPT.format(n=n, schema=CONSISTENCY_SCHEMA),
                          CONSISTENCY_SCHEMA, CONSISTENCY_KEYS, "score")
        category = ask("category", CATEGORY_PROMPT.format(n=n, prompt=item.prompt, schema=CATEGORY_SCHEMA),
                       CATEGORY_SCHEMA, CATEGORY_KEYS, "binary")
        appearance = ask("appearance", APPEARANCE_PROMPT.format(n=n, schema=APPEARANCE_SCHEMA),
                         APPEARANCE_SCHEMA, APPEARANCE_KEYS, "score")
        values: dict[str, float | None] = {
            "vlm_consistency": _total(consistency, CONSISTENCY_KEYS),
            "vlm_category": _total(category, CATEGORY_KEYS),
            "vlm_appearance": _total(appearance, APPEARANCE_KEYS),
            "vlm_checklist": None, "vlm_unparsed": None, "vlm_checklist_all_yes": None, "vlm_checklist_all_no": None,
        }
        checks: list[dict[str, Any]] = []
        if item.checklist:
            keys = [f"q{i}" for i in range(1, len(item.checklist) + 1)]
            answers = ask("checklist", checklist_prompt([c.question for c in item.checklist], n),
                          checklist_schema(len(keys)), keys, "yesno")
            for key, check in zip(keys, item.checklist):
                answer, expected = None if answers is None else answers[key], check.answer.strip().lower()
                checks.append({"type": check.type, "question": check.question, "expected": expected,
                               "answer": answer, "correct": answer == expected})  # no answer: wrong
            values["vlm_checklist"] = float(np.mean([c["correct"] for c in checks]))
            values["vlm_checklist_all_yes"] = float(np.mean([c["expected"] == "yes" for c in checks]))
            values["vlm_checklist_all_no"] = float(np.mean([c["expected"] == "no" for c in checks]))
        failures = sum(q["parse_failed"] for q in queries.values())
        values["vlm_unparsed"] = failures / len(queries)
        angles = azimuth_elevation_deg(positions)
        details = {"views": [int(p.stem) for p in paths], "view_azimuth_deg": angles[:, 0].round(3).tolist(),
                   "view_elevation_deg": angles[:, 1].round(3).tolist(), "queries": queries, "checklist": checks,
                   "parse_failures": failures}
        return MetricResult(values=values, details=details)


def _total(parsed: dict[str, float | str] | None, keys: Sequence[str]) -> float:
    """The sum of the parsed scores; 0 (the worst value) for a failed answer."""
    return 0.0 if parsed is None else float(sum(float(parsed[k]) for k in keys))


class TransformersVLM:
    """A Qwen2-VL / Qwen2.5-VL checkpoint run with ``transformers``; greedy decoding.

    ``model`` is a hub id or a local folder (an absolute or ``./`` path that does not exist fails at once); for a
    hub id a copy under ``$MME3DR_WEIGHTS`` (``org--name``) is preferred to the hub. Weights load on the first
    :meth:`generate` (or :meth:`load`), so building the metric and computing its cache key never touch them. ``device`` defaults to CUDA when available, ``dtype`` to bfloat16 on CUDA and
    float32 on the CPU. Decoding is greedy (``do_sample=False``); the checkpoint's other generation settings
    (e.g. Qwen's ``repetition_penalty``) apply, as they do by default in vLLM.
    """

    kind = "transformers"

    def __init__(self, model: str = DEFAULTS.vlm_model, device: str | None = None, dtype: Any = None,
                 max_new_tokens: int = DEFAULTS.vlm_max_new_tokens) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self._processor: Any = None
        self._net: Any = None

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
        import torch

        self.load()
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        prompt = self._processor.apply_chat_template([{"role": "user", "content": content}],
                                                     add_generation_prompt=True, tokenize=False)
        inputs = self._processor(text=[prompt], images=images or None, return_tensors="pt").to(self._net.device)
        with torch.inference_mode():
            out = self._net.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     temperature=None, top_p=None, top_k=None)
        return self._processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


class OpenAIVLM:
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang, ...), standard library only.

    Each query is one user message: the images as base64 PNG data URLs (``image_url`` parts), then the text;
    ``temperature`` 0 (greedy) and ``max_tokens`` = ``max_new_tokens``. ``retries`` is the number of attempts:
    connection errors, timeouts (``timeout`` seconds per attempt), HTTP 429 and 5xx are retried after
    ``backoff_s``, doubled each time; other HTTP errors and malformed replies fail at once. Failure raises
    :class:`VLMRequestError` with the URL and the last error.
    """

    kind = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 timeout: float = DEFAULTS.vlm_timeout_s, retries: int = DEFAULTS.vlm_retries,
                 max_new_tokens: int = DEFAULTS.vlm_max_new_tokens, backoff_s: float = 1.0) -> None:
        if retries < 1:
            raise InputError(f"retries (attempts per query) must be >= 1, got {retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.max_new_tokens = max_new_tokens
        self.backoff_s = backoff_s

    def request_body(self, images: list[Image.Image], text: str) -> dict[str, Any]:
        """The JSON body of one query."""
        parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": _data_url(img)}} for img in images]
        parts.append({"type": "text", "text": text})
        return {"model": self.model, "messages": [{"role": "user", "content": parts}], "temperature": 0,
                "max_tokens": self.max_new_tokens}

    def generate(self, images: list[Image.Image], text: str) -> str:
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
