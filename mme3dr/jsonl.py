"""Crash-safe JSON Lines and file writing, and the repair of what a crash leaves behind.

Every log of a run (``generations.jsonl``, ``renders.jsonl``, ``scores.jsonl``) is appended through
:func:`append_jsonl`: one whole line per record, fsynced before the call returns. A crash (SIGKILL, a full disk)
can therefore leave at most one *torn tail*, the bytes after the last newline. :func:`repair_tail` cuts it off (or
completes it with its newline when it is a whole record); :func:`append_jsonl` calls it before writing, so every
stage repairs its log the same way before its first append, and :func:`read_jsonl` skips a torn tail. A failed
append (disk full) removes its own partial line. A malformed line elsewhere is an error naming the line.

Whole files are replaced atomically through a temporary file in the same folder, named by :func:`temp_name`;
folders are built the same way (:func:`make_temp_dir`). A process killed mid-write leaves such temporaries behind:
:func:`remove_stale_temps` removes them, and only them, when the next process takes the run lock.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from mme3dr.errors import InputError, naming

#: Every temporary file or folder the toolkit creates ends with this (and starts with a dot).
TEMP_SUFFIX = ".mme3dr-tmp"
#: Temporary files of mme3dr <= 0.1 (``tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")``).
_LEGACY_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def temp_name(final: str) -> str:
    """A fresh temporary name for ``final`` in the same folder: ``.<final>.<random>.mme3dr-tmp``."""
    return f".{final}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """True for a name :func:`temp_name` (or an older mme3dr) gives a temporary file or folder."""
    return name.startswith(".") and (name.endswith(TEMP_SUFFIX) or _LEGACY_TEMP.match(name) is not None)


def make_temp_dir(final: Path) -> Path:
    """A new empty folder beside ``final`` with a :func:`temp_name`, to be renamed to ``final`` when complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    path = final.parent / temp_name(final.name)
    path.mkdir()  # the usual mode (the umask's), so renders can be shared and served like any other folder
    return path


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content to, in pieces; on a clean exit it replaces ``path`` (fsynced,
    ``os.replace``): readers see the old file or the new one, never a half-written one. The file gets the usual
    mode (0o666 less the umask, not ``tempfile``'s private 0o600), so reports can be shared. An ``OSError`` (disk
    full) names ``path``; any error leaves no temporary file and the old ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temp_name(path.name)
    with naming(path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` through :func:`atomic_writer`."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Atomically replace ``path`` with ``records``, one JSON object per line."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))


def _whole_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError (a multi-byte character cut in two)
        return False


def repair_tail(path: Path) -> int:
    """Make ``path`` end with a whole line: drop a torn tail (the bytes after the last newline that are not a whole
    JSON object) and return how many bytes were dropped; a whole record missing only its newline gets it.

    Appends write whole lines, so a torn tail can only be the one line being written when the writer died.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return 0
    with naming(path):
        try:
            size = os.fstat(fd).st_size
            if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
                return 0
            start, chunk = size, 1 << 16
            while start > 0:  # find the last newline, reading backwards
                lo = max(0, start - chunk)
                nl = os.pread(fd, start - lo, lo).rfind(b"\n")
                if nl >= 0:
                    start = lo + nl + 1
                    break
                start = lo
            tail = os.pread(fd, size - start, start)
            if _whole_record(tail):
                os.lseek(fd, 0, os.SEEK_END)
                _write_all(fd, b"\n")
                dropped = 0
            else:
                os.ftruncate(fd, start)
                dropped = len(tail)
                warnings.warn(f"{path}: removed a torn last line ({dropped} bytes) left by an interrupted write",
                              stacklevel=2)
            os.fsync(fd)
            return dropped
        finally:
            os.close(fd)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line and make it durable before returning.

    A torn tail left by an earlier crash is repaired first (:func:`repair_tail`). If the write fails (a full
    disk), the partial line is cut off again and the ``OSError``, naming ``path``, propagates.
    """
    path = Path(path)
    data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    repair_tail(path)
    with naming(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except BaseException:
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    pass  # the next repair_tail drops the partial line
                raise
        finally:
            os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of ``path`` ([] if it does not exist). A torn tail (see :func:`repair_tail`) is skipped with a
    warning; any other line that is not valid JSON raises :class:`~mme3dr.errors.InputError` naming it."""
    path = Path(path)
    if not path.exists():
        return []
    with naming(path):
        data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line.decode("utf-8")))
        except ValueError as exc:
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise InputError(f"{path}, line {i}: not valid JSON ({why}); fix or remove the line") from None
    if tail.strip():
        if _whole_record(tail):
            records.append(json.loads(tail.decode("utf-8")))
        else:
            warnings.warn(f"{path}: ignoring a torn last line {len(lines) + 1} (interrupted write)", stacklevel=2)
    return records


def read_json(path: Path, remedy: str = "restore it from a copy, or delete it") -> Any:
    """The JSON document in ``path``. A file that is not valid JSON raises :class:`~mme3dr.errors.InputError`
    naming the file, where it breaks and ``remedy`` (mme3dr replaces its files atomically, so a damaged one was
    damaged outside it)."""
    path = Path(path)
    with naming(path):
        data = path.read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is damaged: not valid JSON ({exc.msg} at line {exc.lineno}, column "
                         f"{exc.colno}); {remedy}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is damaged: not UTF-8 text; {remedy}") from None


def remove_stale_temps(root: Path) -> list[Path]:
    """Remove every temporary file and folder (:func:`is_temp_name`) under ``root``, without following symbolic
    links (a link with such a name is removed, never its target); return what was removed. Only safe while no
    other process writes there: callers hold the run lock."""
    removed = []
    for folder, dirs, files in os.walk(root):
        for name in [d for d in dirs if is_temp_name(d)]:
            path = Path(folder, name)
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path)
            dirs.remove(name)
            removed.append(path)
        for name in files:
            if is_temp_name(name):
                Path(folder, name).unlink(missing_ok=True)
                removed.append(Path(folder, name))
    return removed
