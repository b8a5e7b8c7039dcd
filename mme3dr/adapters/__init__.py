"""Generator adapters: the interface, the registry and model specs.

Built-in adapters are registered lazily (``module:attr``), so ``mme3dr models`` imports nothing heavy. Other
packages add adapters through the entry-point group ``mme3dr.generators``; the bundled ``reference``, ``ar3d-r1``
and ``shapellm-omni`` adapters (the reference-policy package of this distribution) are registered this way too, so
the dependency runs one way::

    [project.entry-points."mme3dr.generators"]
    my-model = "my_package.adapter:MyGenerator"
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mme3dr.adapters.base import GenerationRequest, GenerationResult, Generator
from mme3dr.errors import AdapterError, InputError, ModelArgumentError, Mme3drError
from mme3dr.registry import Registry, did_you_mean

GENERATORS: Registry[Callable[..., Generator]] = Registry("model", entry_point_group="mme3dr.generators")
GENERATORS.register("folder", "mme3dr.adapters.folder:FolderGenerator", origin="builtin")
GENERATORS.register("command", "mme3dr.adapters.command:CommandGenerator", origin="builtin")
GENERATORS.register("python", "mme3dr.adapters.python:python_generator", origin="builtin")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model name and its keyword arguments: everything needed to recreate the generator."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args)}

    def key(self) -> str:
        """Canonical JSON text of the spec (stable across argument order)."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


def parse_value(text: str) -> Any:
    """For arguments of unknown type: ``"true"``/``"false"`` -> bool, integer and float literals -> numbers, anything
    else stays a string. Arguments whose parameter is annotated are converted by :func:`coerce_model_args`."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_model_args(pairs: Iterable[str]) -> dict[str, str]:
    """Parse ``["key=value", ...]`` (the CLI's repeated ``--model-arg``) into a dict of strings; the values are
    converted to each parameter's type by :func:`coerce_model_args`."""
    args: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--model-arg {pair!r} must look like key=value")
        args[key.strip()] = value
    return args


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "text", Path: "a path"}


def _convert(name: str, key: str, text: str, annotation: Any) -> Any:
    """``text`` as ``annotation`` (int, float, bool, str, Path, or an Optional of one); other annotations get
    :func:`parse_value`. A value that does not fit raises ``ValueError`` naming the argument and what it takes."""
    options = [a for a in (typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union,
               types.UnionType) else (annotation,)) if a is not type(None)]
    if len(options) != 1 or options[0] not in _KINDS:
        return parse_value(text)
    kind = options[0]
    if kind in (str, Path):
        return kind(text)
    if kind is bool:
        if text.strip().lower() in _TRUE + _FALSE:
            return text.strip().lower() in _TRUE
    else:
        try:
            return kind(text)
        except ValueError:
            pass
    raise InputError(f"model {name!r}: --model-arg {key}={text!r}: {key} takes {_KINDS[kind]}")


def _signature(factory: Any) -> tuple[inspect.Signature | None, dict[str, Any]]:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None, {}
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # unresolvable annotations: fall back to parse_value for every argument
        hints = {}
    return sig, hints


def coerce_model_args(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``args`` against the registered model's parameters before any work: unknown names get a "did you
    mean" error listing what the model takes, and string values (from ``--model-arg``) are converted to each
    parameter's annotated type (``timeout=abc`` for a float parameter is an error naming ``timeout``). Values that
    are not strings (from Python) are kept as they are."""
    factory = GENERATORS.get(name)
    sig, hints = _signature(factory)
    if sig is None:
        return dict(args)
    params = {p: v for p, v in sig.parameters.items() if p != "self" and v.kind not in
              (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
    takes_more = any(v.kind is inspect.Parameter.VAR_KEYWORD for v in sig.parameters.values())
    unknown = [a for a in args if a not in params]
    if unknown and not takes_more:
        raise ModelArgumentError(f"model {name!r} has no argument {unknown[0]!r}.{did_you_mean(unknown[0], params)} "
                                 f"It takes: {', '.join(params) or '(no arguments)'} (pass them as --model-arg "
                                 "key=value).")
    return {k: _convert(name, k, v, hints.get(k, Any)) if isinstance(v, str) else v for k, v in args.items()}


def create_generator(name: str, **args: Any) -> Generator:
    """Instantiate the registered model ``name`` with ``args`` (checked and converted by
    :func:`coerce_model_args`); bad names and values get a clear error before any work. A plug-in adapter that
    raises anything but a :class:`~mme3dr.errors.Mme3drError` gets an :class:`~mme3dr.errors.AdapterError` naming
    it (its own error, not a bug of mme3dr)."""
    factory, args = GENERATORS.get(name), coerce_model_args(name, args)
    try:
        generator = factory(**args)
    except Mme3drError:
        raise
    except Exception as exc:
        if GENERATORS.origin(name) == "builtin":  # mme3dr's own adapters: a bug, shown as one
            raise
        raise AdapterError(f"model {name!r} ({GENERATORS.target_string(name)}) could not be created: "
                           f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(generator, Generator):
        raise ModelArgumentError(f"model {name!r} ({GENERATORS.target_string(name)}) returned "
                                 f"{type(generator).__name__}, not a mme3dr Generator")
    return generator


def describe(name: str) -> str:
    """First paragraph of a registered model's docstring, as plain text (read without importing the model)."""
    return GENERATORS.describe(name)


__all__ = ["GENERATORS", "GenerationRequest", "GenerationResult", "Generator", "ModelSpec", "coerce_model_args",
           "create_generator", "describe", "parse_model_args", "parse_value"]
