"""One writer per run folder: an advisory ``flock`` on ``RUN/.mme3dr.lock``.

A second process that tries to write the same run stops at once with a message naming the holder. The lock is
re-entrant within a process (``evaluate`` holds it while calling generate, render and score) and is released by
the OS if the holder dies, even by SIGKILL.

Taking the lock recovers from a holder that was killed, before any stage runs: generator programs it left running
are ended (:func:`mme3dr.processes.end_leftover_children`) and its half-written temporary files and folders are
removed (:func:`mme3dr.jsonl.remove_stale_temps`); torn log lines are repaired by each stage's first append. While
the lock is held, generator programs are recorded in the run folder (:func:`mme3dr.processes.recording_children`).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mme3dr import runfiles
from mme3dr.errors import Mme3drError
from mme3dr.jsonl import remove_stale_temps
from mme3dr.processes import end_leftover_children, recording_children

_held: dict[Path, tuple[int, int]] = {}  # resolved run dir -> (fd, depth)


class RunLockedError(Mme3drError, RuntimeError):
    """Another process is writing this run."""


@contextmanager
def run_lock(run_dir: Path | str) -> Iterator[None]:
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        fd, depth = _held[run_dir]
        _held[run_dir] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[run_dir]
            _held[run_dir] = (fd, depth - 1)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / runfiles.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunLockedError(f"{run_dir} is being written by another mme3dr process (pid {holder}); wait for it "
                             "to finish or use another --out folder") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[run_dir] = (fd, 1)
    try:
        end_leftover_children(run_dir)
        remove_stale_temps(run_dir)
        with recording_children(run_dir):
            yield
    finally:
        del _held[run_dir]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
