"""A typed registry with lazy ``module:attr`` entries, entry-point plug-ins and "did you mean" errors.

Adapters, render presets and metrics register under a short name. An entry is either the object itself or a
``"package.module:attr"`` string that is imported only when the name is first used, so listing the registry
never imports heavy dependencies. Third-party packages add entries through an entry-point group.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from mme3dr.errors import InputError, UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def import_target(target: str) -> object:
    """Import ``"package.module:attr"`` (``attr`` may be dotted) and return the attribute."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"expected 'package.module:attr', got {target!r}")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} for {target!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r} (from {target!r})") from None
    return obj


@dataclass
class _Entry:
    target: object  # the object, or a "module:attr" string not yet imported
    origin: str  # "builtin", "user" or "entry-point <dist>"


class Registry(Generic[T]):
    """Name -> object registry.

    >>> reg: Registry[type] = Registry("demo")
    >>> reg.register("int", int)
    >>> reg.get("int") is int
    True
    """

    def __init__(self, kind: str, entry_point_group: str | None = None, advice: str = "") -> None:
        self.kind = kind
        #: What to do about an unknown name, appended to its error (e.g. which option takes these names).
        self.advice = advice
        self.entry_point_group = entry_point_group
        self._entries: dict[str, _Entry] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str, target: T | str | None = None, *, origin: str = "user",
                 overwrite: bool = False) -> Callable[[T], T] | None:
        """Register ``target`` under ``name``; without ``target`` return a decorator."""
        if target is None:
            def decorator(obj: T) -> T:
                self.register(name, obj, origin=origin, overwrite=overwrite)
                return obj
            return decorator
        if name in self._entries and not overwrite:
            raise InputError(f"{self.kind} {name!r} is already registered "
                             f"({self._entries[name].origin}); pass overwrite=True to replace it")
        self._entries[name] = _Entry(target, origin)
        return None

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._entries:  # built-ins win over plug-ins of the same name
                dist = ep.dist.name if ep.dist is not None else "?"
                self._entries[ep.name] = _Entry(ep.value, f"entry-point {dist}")

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def origin(self, name: str) -> str:
        return self._lookup(name).origin

    def target_string(self, name: str) -> str:
        """The ``module:attr`` of an entry (or the object's qualified name once imported)."""
        target = self._lookup(name).target
        if isinstance(target, str):
            return target
        return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', repr(target))}"

    def _lookup(self, name: str) -> _Entry:
        self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}.{did_you_mean(name, self._entries)} "
                                   f"Registered: {', '.join(sorted(self._entries)) or '(none)'}."
                                   + (f" {self.advice}" if self.advice else "")) from None

    def describe(self, name: str) -> str:
        """First line of the entry's docstring as plain text, read from its source file without importing it
        (so listing a registry stays fast); falls back to importing when the source cannot be read."""
        target = self._lookup(name).target
        doc = None
        if isinstance(target, str):
            doc = _static_docstring(target)
        if doc is None:
            doc = inspect.getdoc(self.get(name)) or ""
        return plain_text(doc.strip().split("\n\n")[0].replace("\n", " ")) if doc else ""

    def get(self, name: str) -> T:
        """Return the object for ``name``, importing a lazy entry on first use."""
        entry = self._lookup(name)
        if isinstance(entry.target, str):
            entry.target = import_target(entry.target)
        return entry.target  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries


_ROLES = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`~?([^`]+)`")


def plain_text(text: str) -> str:
    """reST inline markup to plain text: ``:class:`~a.B``` -> ``B``, double backquotes -> nothing."""
    text = _ROLES.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1), text)
    return re.sub(r"`+([^`]+)`+", r"\1", text)


def _static_docstring(target: str) -> str | None:
    """Docstring of ``module:attr`` parsed from the module's source (no import of the module itself), or None."""
    module_name, _, attr = target.partition(":")
    try:
        spec = importlib.util.find_spec(module_name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return None
        with open(spec.origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (ImportError, OSError, SyntaxError, ValueError):
        return None
    node: ast.AST = tree
    for part in attr.split("."):
        found = [n for n in getattr(node, "body", []) if isinstance(n, (ast.ClassDef, ast.FunctionDef,
                                                                         ast.AsyncFunctionDef)) and n.name == part]
        if not found:
            return None
        node = found[0]
    doc = ast.get_docstring(node)
    return inspect.cleandoc(doc) if doc else None
