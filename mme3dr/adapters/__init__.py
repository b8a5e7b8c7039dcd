"""Generator adapters: the interface, the registry and model specs.

Built-in adapters are registered lazily (``module:attr``), so ``mme3dr models`` imports nothing heavy.
Third-party packages add adapters through the entry-point group ``mme3dr.generators``::

    [project.entry-points."mme3dr.generators"]
    my-model = "my_package.adapter:MyGenerator"
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mme3dr.adapters.base import UP_AXES, GenerationRequest, GenerationResult, Generator, parse_up_axis
from mme3dr.registry import Registry, did_you_mean

GENERATORS: Registry[Callable[..., Generator]] = Registry("model", entry_point_group="mme3dr.generators")
GENERATORS.register("folder", "mme3dr.adapters.folder:FolderGenerator", origin="builtin")
GENERATORS.register("command", "mme3dr.adapters.command:CommandGenerator", origin="builtin")
GENERATORS.register("python", "mme3dr.adapters.python:python_generator", origin="builtin")
GENERATORS.register("reference", "reference_policy.generator:ReferenceGenerator", origin="builtin")
GENERATORS.register("ar3d-r1", "reference_policy.released:ar3d_r1", origin="builtin")
GENERATORS.register("shapellm-omni", "reference_policy.released:shapellm_omni", origin="builtin")


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
    """``"true"``/``"false"`` -> bool, integer and float literals -> numbers, anything else stays a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_model_args(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` (the CLI's repeated ``--model-arg``) into keyword arguments."""
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-arg {pair!r} must look like key=value")
        args[key.strip()] = parse_value(value)
    return args


def create_generator(name: str, **args: Any) -> Generator:
    """Instantiate the registered model ``name`` with ``args``; bad argument names get a clear error."""
    factory = GENERATORS.get(name)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**args)
        except TypeError as exc:
            params = [p for p in sig.parameters if p != "self" and sig.parameters[p].kind not in
                      (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
            unknown = [a for a in args if a not in sig.parameters]
            hint = did_you_mean(unknown[0], params) if unknown else ""
            raise TypeError(f"model {name!r}: {exc}.{hint} It takes: {', '.join(params) or '(no arguments)'} "
                            f"(pass them as --model-arg key=value).") from None
    generator = factory(**args)
    if not isinstance(generator, Generator):
        raise TypeError(f"model {name!r} ({GENERATORS.target_string(name)}) returned "
                        f"{type(generator).__name__}, not a mme3dr Generator")
    return generator


def describe(name: str) -> str:
    """First docstring line of a registered model (imports it)."""
    doc = inspect.getdoc(GENERATORS.get(name)) or ""
    return doc.splitlines()[0] if doc else ""


__all__ = ["GENERATORS", "UP_AXES", "GenerationRequest", "GenerationResult", "Generator", "ModelSpec",
           "create_generator", "describe", "parse_model_args", "parse_up_axis", "parse_value"]
