"""``python``: any generator written in Python, named by ``module:attr``."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

from mme3dr.adapters.base import Generator, parse_up_axis
from mme3dr.defaults import DEFAULTS
from mme3dr.errors import AdapterError, InputError, ModelArgumentError, Mme3drError
from mme3dr.registry import import_target


def python_generator(factory: str | None = None, function: str | None = None,
                     up_axis: str | None = None, **kwargs: Any) -> Generator:
    """Any Python generator, named by ``factory=module:attr`` or ``function=module:attr``.

    ``factory`` is a Generator class or a function returning a Generator; ``function`` is a plain
    ``fn(request) -> path`` called once per prompt.

    ``up_axis`` overrides the axis the generator declares. Remaining ``--model-arg`` options are passed to the factory. The current directory is importable, so
    ``factory=my_model:MyGenerator`` finds ``./my_model.py``.
    """
    if (factory is None) == (function is None):
        raise InputError("python model: pass exactly one of --model-arg factory=module:attr "
                         "(a Generator class or factory) or --model-arg function=module:attr (fn(request) -> path)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if function is not None:
        if kwargs:
            raise ModelArgumentError(f"python model: function= takes no extra arguments, got {sorted(kwargs)}")
        fn = import_target(function)
        if not callable(fn):
            raise ModelArgumentError(f"python model: {function} is not callable")
        return Generator.from_function(fn, up_axis=up_axis or DEFAULTS.up_axis)
    obj = import_target(factory)  # type: ignore[arg-type]
    if isinstance(obj, Generator):
        if kwargs:
            raise ModelArgumentError(f"python model: {factory} is a Generator instance and takes no "
                                     "arguments")
        return obj
    if not callable(obj):
        raise ModelArgumentError(f"python model: {factory} is neither a Generator class nor a factory function")
    try:
        generator = obj(**kwargs)
    except Mme3drError:
        raise
    except Exception as exc:  # the user's code: its error is theirs to fix, not a bug of mme3dr
        raise AdapterError(f"python model: {factory}({', '.join(f'{k}=...' for k in kwargs)}) raised "
                           f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(generator, Generator):
        kind = "class" if inspect.isclass(obj) else "factory"
        raise ModelArgumentError(f"python model: {kind} {factory} returned {type(generator).__name__}, not a "
                                 "mme3dr.adapters.Generator; subclass Generator or use function=module:attr for a "
                                 "plain fn(request) -> path")
    if up_axis is not None:  # overrides the class's declared axis
        generator.up_axis = parse_up_axis(up_axis)
    return generator
