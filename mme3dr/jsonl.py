"""Crash-safe JSON Lines and file writing.

Appends are flushed and fsynced line by line, so a crash loses at most the line being written; a torn last
line is skipped on reading (with a warning), while a malformed line elsewhere is an error naming the line.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a line and make it durable before returning.

    If the file lacks a trailing newline (a torn write), the record starts on a new line so it is not glued
    to the torn text. Resuming code should still rewrite the log first (``write_jsonl``) to drop that line.
    """
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    with open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read records; a torn final line (interrupted write) is dropped with a warning."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines):
                warnings.warn(f"{path}: ignoring a torn last line {i} (interrupted write)", stacklevel=2)
                continue
            raise ValueError(f"{path}, line {i}: not valid JSON ({exc.msg}); fix or remove the line") from None
    return records


def umask_mode(base: int) -> int:
    """``base`` (0o666 for files, 0o777 for folders) less the process umask: the mode ``open``/``mkdir`` would give.
    ``tempfile`` creates private (0600/0700) files and folders; what they become is chmod-ed to this, so reports and
    renders can be shared and served like any other file."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (never a half-written file); the file gets
    the usual permissions (:func:`umask_mode`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_mode(0o666))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Atomically replace ``path`` with ``records``."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))
