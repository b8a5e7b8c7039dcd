"""``python``: any generator written in Python, named by ``module:attr``."""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mme3dr.adapters.base import Generator
from mme3dr.assets import parse_up_axis
from mme3dr.defaults import DEFAULTS
from mme3dr.errors import AdapterError, InputError, ModelArgumentError, Mme3drError
from mme3dr.registry import import_target


@contextmanager
def _importable(folder: str) -> Iterator[None]:
    """``folder`` on ``sys.path`` (last, so installed packages keep precedence) for the duration of the block only,
    unless it was there already."""
    added = folder not in sys.path
    if added:
        sys.path.append(folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def import_user_target(target: str) -> object:
    """Import ``module:attr`` the way :func:`~mme3dr.registry.import_target` does, where ``module`` (or the package
    it starts with) may be ``./module.py`` or ``./package/`` in the current directory.

    The current directory is searchable only while the module is imported (last on ``sys.path``, so the user's
    module can import its siblings but no file in the current directory shadows an installed package), and is
    removed right after; the imported module stays loaded. A module that exists in the current directory is
    loaded from there even when an installed module has the same name (an error when that one is imported
    already)."""
    module_name = target.partition(":")[0]
    top = module_name.split(".")[0]
    cwd = os.getcwd()
    file, package = Path(cwd, f"{top}.py"), Path(cwd, top, "__init__.py")
    local = package if package.is_file() else file if file.is_file() else None
    loaded = sys.modules.get(top)
    if local is not None and loaded is not None and Path(getattr(loaded, "__file__", "") or "") != local:
        raise ImportError(f"python model: {local} cannot be imported as {top!r}: a module of that name is already "
                          f"loaded from {getattr(loaded, '__file__', None) or 'the interpreter'}; rename {local.name}")
    with _importable(cwd):
        if local is not None and loaded is None:
            spec = importlib.util.spec_from_file_location(
                top, local, submodule_search_locations=[str(local.parent)] if local is package else None)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[top] = module
            try:
                spec.loader.exec_module(module)  # type: ignore[union-attr]
            except BaseException:
                del sys.modules[top]
                raise
        return import_target(target)


def python_generator(factory: str | None = None, function: str | None = None,
                     up_axis: str | None = None, **kwargs: Any) -> Generator:
    """Any Python generator, named by ``factory=module:attr`` or ``function=module:attr``.

    ``factory`` is a Generator class or a function returning a Generator; ``function`` is a plain
    ``fn(request) -> path`` called once per prompt.

    ``up_axis`` overrides the axis the generator declares. Remaining ``--model-arg`` options are passed to the
    factory. A module in the current directory is found (``factory=my_model:MyGenerator`` imports
    ``./my_model.py``) without putting the current directory on ``sys.path`` for the rest of the process; see
    :func:`import_user_target`.
    """
    if (factory is None) == (function is None):
        raise InputError("python model: pass exactly one of --model-arg factory=module:attr "
                         "(a Generator class or factory) or --model-arg function=module:attr (fn(request) -> path)")
    if function is not None:
        if kwargs:
            raise ModelArgumentError(f"python model: function= takes no extra arguments, got {sorted(kwargs)}")
        fn = import_user_target(function)
        if not callable(fn):
            raise ModelArgumentError(f"python model: {function} is not callable")
        return Generator.from_function(fn, up_axis=up_axis or DEFAULTS.up_axis)
    obj = import_user_target(factory)  # type: ignore[arg-type]
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
