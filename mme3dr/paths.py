"""Paths built from names that come from outside: prompt ids, reference object ids, metric keys.

A prompt file, a hub dataset, a ``reference.json`` or a ``scores.jsonl`` may come from someone else, and each of
their names ends up as a file or folder name. Two independent guards keep every such path inside its root:

- :func:`check_id`: the rule for prompt ids, applied when prompts are loaded (:data:`ID_RULE`);
- :func:`child_path`: every path built from such a name goes through it. It refuses a name that could leave the
  root (absolute, with a separator, ``.`` or ``..``, a NUL byte) and, after following symbolic links, any result
  that does not lie inside the root, so a link planted in a run or asset folder cannot redirect a write, a delete
  or a read elsewhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mme3dr.errors import InputError

#: Prompt ids: a letter or digit, then up to 127 letters, digits, ``.``, ``_`` or ``-``; never ``..``.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ID_RULE = f"^{ID_PATTERN.pattern}$ with no '..'"


class UnsafePathError(InputError):
    """A name would put a path outside its root folder (or is not a valid id); the message says which and why."""


def check_id(value: str, what: str = "prompt id") -> str:
    """``value`` if it is a safe id (:data:`ID_RULE`), else :class:`UnsafePathError` naming the rule."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value) or ".." in value:
        raise UnsafePathError(f"{what} {value!r} is not a safe id: ids name files and folders, so they must match "
                              f"{ID_RULE} (letters, digits, '.', '_' and '-', starting with a letter or digit, "
                              "at most 128 characters)")
    return value


def _check_part(part: str, what: str) -> None:
    seps = {"/", "\\", os.sep, os.altsep} - {None}
    if not isinstance(part, str) or part in ("", ".", "..") or "\0" in part or any(s in part for s in seps):
        raise UnsafePathError(f"{what} {part!r} cannot be used as a file or folder name: it must be one path "
                              "component (not empty, '.' or '..', no '/' or '\\', not absolute)")


def child_path(root: Path | str, *names: str, what: str = "name") -> Path:
    """``root / names[0] / names[1] ...``, proven to stay inside ``root``.

    Each name must be a single path component (no separator, not absolute, not ``.``/``..``). The joined path,
    with every symbolic link along it followed (it need not exist yet), must lie strictly inside ``root`` resolved
    the same way; otherwise :class:`UnsafePathError`. Returns the joined path as given (not resolved), so records
    keep the caller's form of ``root``.
    """
    if not names:
        raise TypeError("child_path needs at least one name")
    for part in names:
        _check_part(part, what)
    path = Path(root).joinpath(*names)
    base = Path(root).resolve()
    target = path.resolve()
    if base not in target.parents:  # the root itself is no child either
        raise UnsafePathError(f"{what} {'/'.join(names)!r}: {path} leads to {target}, outside {base} "
                              "(a symbolic link out of the folder?); refusing to use it")
    return path
