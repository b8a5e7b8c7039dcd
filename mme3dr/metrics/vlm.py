"""VLM judge: a vision-language model looks at evenly spaced renders of an asset and answers four questions.

The judgments follow the rewards of the AR3D-R1 authors (Qwen2.5-VL-7B on 6 views), as evaluation numbers:

- ``vlm_consistency`` in [0, 3]: 3D consistency across the views, the sum of three 0-1 scores: the shape outline
  agrees across views, the appearance (colours, textures) agrees, the object's parts agree.
- ``vlm_category`` in {0, 1}: the object matches the object category named in the prompt (judged on all views).
- ``vlm_appearance`` in [0, 3]: the sum of three 0-1 scores: colour smoothness, material realism and coherence,
  texture rationality.
- ``vlm_checklist`` in [0, 1]: the item's checklist questions answered yes/no in one query; the fraction of
  answers equal to the expected ones (``None`` when the item has no checklist).

Each judgment is one query holding all the chosen views and asking for a strict JSON object with named keys
(:mod:`mme3dr.metrics.vlm_parse` reads it). An answer that cannot be parsed or validated gives ``None`` for its
value and counts in ``details["parse_failures"]``; it never becomes a 0. ``details["queries"]`` keeps, per query,
the raw answer, the parsed value and the failure reason.

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

from PIL import Image

from mme3dr.defaults import DEFAULTS
from mme3dr.metrics.base import HIGHER, MetricResult, PromptMetric, ScoreItem, composite, pick_views
from mme3dr.metrics.vlm_parse import AnswerKind, parse_json_answer
from mme3dr.metrics.weights import MissingWeightsError, missing_message, resolve_local

#: Changes whenever a prompt below changes; part of :meth:`VLMJudge.config` (and so of the cache key).
PROMPT_VERSION = "mme3dr-vlm-v1"

CONSISTENCY_KEYS: tuple[str, ...] = ("shape", "appearance", "parts")
CATEGORY_KEYS: tuple[str, ...] = ("category_match",)
APPEARANCE_KEYS: tuple[str, ...] = ("color_smoothness", "material", "texture")

_VIEWS_INTRO = "The {n} images are views of one 3D object, rendered from different camera angles around it."

CONSISTENCY_PROMPT = _VIEWS_INTRO + """
Judge the 3D consistency of the object across the views. Score each criterion 1 if it holds, 0 if it does not \
(a value between 0 and 1 if it holds only in part):
- "shape": the outline and silhouette fit one coherent 3D shape seen from different sides.
- "appearance": the same surface has the same colours and textures in every view.
- "parts": the object's parts are consistent: no part appears, disappears or changes between views.
Answer with only a JSON object, no other text, in exactly this form:
{{"shape": <number 0-1>, "appearance": <number 0-1>, "parts": <number 0-1>}}"""

CATEGORY_PROMPT = _VIEWS_INTRO + """
The object was generated from this text prompt: "{prompt}"
Does the object belong to the object category named in the prompt (for example a chair for "a wooden rocking \
chair with curved armrests")? Judge the kind of object only, not its colours, style or quality.
Answer with only a JSON object, no other text, in exactly this form, 1 for yes and 0 for no:
{{"category_match": <0 or 1>}}"""

APPEARANCE_PROMPT = _VIEWS_INTRO + """
Judge the appearance of the object. Score each criterion from 0 (poor) to 1 (good):
- "color_smoothness": colours are smooth and clean, without noise, blotches or seams.
- "material": the materials look realistic and coherent over the whole object.
- "texture": the texture is rational: patterns and details sit where they belong on the object.
Answer with only a JSON object, no other text, in exactly this form:
{{"color_smoothness": <number 0-1>, "material": <number 0-1>, "texture": <number 0-1>}}"""

CHECKLIST_PROMPT = _VIEWS_INTRO + """
Answer each question about the object with "yes" or "no", judging only from what the views show.
{questions}
Answer with only a JSON object, no other text, with one key per question, in exactly this form:
{schema}"""

VALUE_KEYS: tuple[str, ...] = ("vlm_consistency", "vlm_category", "vlm_appearance", "vlm_checklist")


class VLMBackend(Protocol):
    """What :class:`VLMJudge` needs from a model: greedy answers to one user message with several images."""

    kind: str
    model: str
    max_new_tokens: int

    def generate(self, images: list[Image.Image], text: str) -> str: ...


class VLMRequestError(RuntimeError):
    """An OpenAI-compatible server did not give an answer (after the retries, or refused the request)."""


def checklist_prompt(questions: Sequence[str], n_views: int) -> str:
    """The checklist query: questions as ``q1: ...`` lines, answered as ``{"q1": "yes" or "no", ...}``."""
    lines = "\n".join(f"q{i}: {q}" for i, q in enumerate(questions, 1))
    schema = "{" + ", ".join(f'"q{i}": "yes" or "no"' for i in range(1, len(questions) + 1)) + "}"
    return CHECKLIST_PROMPT.format(n=n_views, questions=lines, schema=schema)


class VLMJudge(PromptMetric):
    """The four VLM judgments of one asset (see the module docstring), from ``views`` evenly spaced renders."""

    name: ClassVar[str] = "vlm"
    needs: ClassVar[str] = "renders"
    directions: ClassVar[dict[str, str]] = {key: HIGHER for key in VALUE_KEYS}

    def __init__(self, backend: VLMBackend | None = None, views: int = DEFAULTS.vlm_views) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.backend: VLMBackend = backend if backend is not None else TransformersVLM()
        self.views = views

    def config(self) -> dict[str, Any]:
        return {"backend": self.backend.kind, "model": self.backend.model, "views": self.views,
                "max_new_tokens": self.backend.max_new_tokens, "prompt_version": PROMPT_VERSION}

    def score(self, item: ScoreItem) -> MetricResult:
        paths = item.view_paths()
        chosen = pick_views(len(paths), self.views)
        images = []
        for i in chosen:
            with Image.open(paths[i]) as img:
                images.append(composite(img))
        n = len(images)
        queries: dict[str, dict[str, Any]] = {}

        def ask(query: str, text: str, keys: Sequence[str], kind: AnswerKind) -> dict[str, float | str] | None:
            response = self.backend.generate(images, text)
            parsed = parse_json_answer(response, keys, kind)
            queries[query] = {"response": response, "parsed": parsed.value, "parse_failed": not parsed.ok,
                              "reason": parsed.error, "method": parsed.method}
            return parsed.value

        consistency = ask("consistency", CONSISTENCY_PROMPT.format(n=n), CONSISTENCY_KEYS, "score")
        category = ask("category", CATEGORY_PROMPT.format(n=n, prompt=item.prompt), CATEGORY_KEYS, "binary")
        appearance = ask("appearance", APPEARANCE_PROMPT.format(n=n), APPEARANCE_KEYS, "score")
        values: dict[str, float | None] = {
            "vlm_consistency": _total(consistency, CONSISTENCY_KEYS),
            "vlm_category": None if category is None else float(category["category_match"]),
            "vlm_appearance": _total(appearance, APPEARANCE_KEYS),
            "vlm_checklist": None,
        }
        checks: list[dict[str, Any]] = []
        if item.checklist:
            keys = [f"q{i}" for i in range(1, len(item.checklist) + 1)]
            answers = ask("checklist", checklist_prompt([c.question for c in item.checklist], n), keys, "yesno")
            for key, check in zip(keys, item.checklist):
                answer, expected = None if answers is None else answers[key], check.answer.strip().lower()
                checks.append({"type": check.type, "question": check.question, "expected": expected,
                               "answer": answer, "correct": None if answer is None else answer == expected})
            if answers is not None:
                values["vlm_checklist"] = sum(c["correct"] for c in checks) / len(checks)
        details = {"views": chosen, "queries": queries, "checklist": checks,
                   "parse_failures": sum(q["parse_failed"] for q in queries.values())}
        return MetricResult(values=values, details=details)


def _total(parsed: dict[str, float | str] | None, keys: Sequence[str]) -> float | None:
    return None if parsed is None else float(sum(float(parsed[k]) for k in keys))


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
        try:
            processor = AutoProcessor.from_pretrained(source)
            net = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
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
            raise ValueError(f"retries (attempts per query) must be >= 1, got {retries}")
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
