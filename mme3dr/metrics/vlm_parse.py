"""Reading a VLM judge's answer: a JSON object with named keys, validated, never silently repaired.

An answer identical to the query's answer ``template`` (compared without whitespace and case, also inside a code
fence) is refused first: a judge that copies the template has answered nothing. Otherwise
:func:`parse_json_answer` looks for the object in this order and uses the first stage that yields one:

1. ``strict``: the whole answer is a JSON object.
2. ``fenced``: the content of the first Markdown code fence (```` ```json ... ``` ````) is a JSON object.
3. ``block``: the first balanced ``{...}`` in the text that reads as a JSON object (or, failing JSON, as a
   Python dict literal such as ``{'shape': 1}``).
4. ``key-value``: no object at all, but every requested key appears as ``key: value`` or ``key = value``
   (quotes around the key and the value optional; e.g. a truncated ``{"shape": 1, "parts": 0`` or lines
   ``q1: yes``). The first occurrence of each key counts, and its value must be one word or number ended by
   ``,`` ``;`` ``}`` ``]``, a full stop, a line break or the end: ``q1: "yes" or "no"`` names both answers and
   fails, where a first-word reading would have taken it for "yes".

Keys are matched case-insensitively; extra keys (e.g. a ``"reason"``) are ignored; a missing key fails.
Values are then checked against ``kind``; nothing is clamped or guessed, so an out-of-range or unreadable value
makes the whole answer a failure (``ParseResult.value is None`` with the reason):

- ``"score"``: a number in [0, 1] (a JSON number or a numeric string). Booleans are refused.
- ``"binary"``: 0 or 1 (numbers, numeric strings, ``true``/``false``, ``yes``/``no``), returned as ``0.0``/``1.0``.
- ``"yesno"``: ``"yes"``/``"no"`` (case-insensitive; ``true``/``false`` too), returned as ``"yes"``/``"no"``.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

AnswerKind = Literal["score", "binary", "yesno"]
KINDS: tuple[str, ...] = ("score", "binary", "yesno")

_FENCE = re.compile(r"```[A-Za-z]*\s*\n?(.*?)```", re.DOTALL)
#: One key-value value: a word or a number, optionally quoted, then a delimiter (not more words).
_VALUE = re.compile(r"""(?P<q>["']?)(?P<v>[A-Za-z]+|[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)(?P=q)"""
                    r"""(?=[ \t]*(?:[,;}\]\r\n]|\.(?!\d)|$))""")
_TRUE, _FALSE = {"yes", "true"}, {"no", "false"}
_EXPECTED = {"score": "score in [0, 1]", "binary": "0/1 answer", "yesno": "yes/no answer"}


@dataclass(frozen=True)
class ParseResult:
    """``value``: the validated answer per key, or ``None``; ``error``: why not; ``method``: the stage used."""

    value: dict[str, float | str] | None
    error: str | None = None
    method: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


def parse_json_answer(text: str, keys: Sequence[str], kind: AnswerKind, template: str | None = None) -> ParseResult:
    """Parse and validate a judge's answer holding ``keys``, each of ``kind``; an answer equal to ``template``
    (the answer form shown in the query) is refused (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not text or not text.strip():
        return ParseResult(None, "empty answer")
    if template is not None and _repeats(text, template):
        return ParseResult(None, "the answer repeats the answer template instead of filling it in")
    found = _find_object(text, keys)
    if found is None:
        return ParseResult(None, "no JSON object and no key: value pairs for all keys in the answer")
    obj, method = found
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    missing = [k for k in keys if k.lower() not in lowered]
    if missing:
        return ParseResult(None, f"missing key(s) {missing}", method)
    value: dict[str, float | str] = {}
    for key in keys:
        raw = lowered[key.lower()]
        checked = _validate(raw, kind)
        if checked is None:
            return ParseResult(None, f"key {key!r}: {raw!r} is not a valid {_EXPECTED[kind]}", method)
        value[key] = checked
    return ParseResult(value, None, method)


def _find_object(text: str, keys: Sequence[str]) -> tuple[dict[str, Any], str] | None:
    stripped = text.strip()
    obj = _as_dict(stripped, literal=False)
    if obj is not None:
        return obj, "strict"
    fence = _FENCE.search(text)
    if fence:
        obj = _as_dict(fence.group(1).strip(), literal=True)
        if obj is not None:
            return obj, "fenced"
    for block in _brace_blocks(text):
        obj = _as_dict(block, literal=True)
        if obj is not None:
            return obj, "block"
    pairs = _key_values(text, keys)
    return (pairs, "key-value") if pairs is not None else None


def _as_dict(text: str, literal: bool) -> dict[str, Any] | None:
    """``text`` as a JSON object, or (``literal``) as a Python dict literal; ``None`` otherwise."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        if not literal:
            return None
        try:
            obj = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return obj if isinstance(obj, dict) else None


def _brace_blocks(text: str) -> list[str]:
    """Top-level balanced ``{...}`` spans, in order (braces inside quoted strings do not count)."""
    blocks, depth, start, quote, escaped = [], 0, -1, "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch == '"' and depth:
            quote = ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                blocks.append(text[start:i + 1])
    return blocks


def _repeats(text: str, template: str) -> bool:
    """Whether ``text`` (or its first code fence) equals ``template`` once whitespace and case are ignored."""
    fence = _FENCE.search(text)
    candidates = [text] + ([fence.group(1)] if fence else [])
    return any(_squash(c) == _squash(template) for c in candidates)


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def _key_values(text: str, keys: Sequence[str]) -> dict[str, str] | None:
    """``{key: value text}`` when the first ``key: value`` / ``key = value`` of every key holds one well-ended
    value (see the module docstring), else ``None``."""
    out = {}
    for key in keys:
        m = re.search(rf"""["']?\b{re.escape(key)}\b["']?\s*[:=]\s*""", text, re.IGNORECASE)
        value = _VALUE.match(text, m.end()) if m else None
        if value is None:
            return None
        out[key] = value.group("v")
    return out


def _validate(raw: Any, kind: AnswerKind) -> float | str | None:
    """The value in canonical form, or ``None`` when it is not a valid ``kind``."""
    if kind == "yesno":
        word = str(raw).strip().lower() if isinstance(raw, (str, bool)) else ""
        return "yes" if word in _TRUE else "no" if word in _FALSE else None
    if kind == "binary" and isinstance(raw, (str, bool)) and str(raw).strip().lower() in _TRUE | _FALSE:
        return 1.0 if str(raw).strip().lower() in _TRUE else 0.0
    if isinstance(raw, bool):  # bool is an int: a score of `true` is not a number
        return None
    number = _number(raw)
    if number is None:
        return None
    if kind == "binary":
        return number if number in (0.0, 1.0) else None
    return number if 0.0 <= number <= 1.0 else None


def _number(raw: Any) -> float | None:
    if isinstance(raw, (int, float)):
        number = float(raw)
    elif isinstance(raw, str):
        try:
            number = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None
