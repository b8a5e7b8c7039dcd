"""Processes the toolkit starts: render and geometry-scoring workers that leave the user's script alone, and
generator programs whose lifetime is tied to ours.

Rendering and the CPU-only metrics use a ``spawn`` process pool (an EGL/OSMesa context does not survive ``fork``). A spawned child normally
re-imports the parent's ``__main__`` module, so a plain script that calls ``render_run(..., workers=4)`` without an
``if __name__ == "__main__":`` guard would run again in every worker (which then tries to start workers of its own).
The workers here run only functions of this package and never need the user's ``__main__``; :func:`spawn_pool` starts
them with ``__main__`` marked as not to be re-imported, so the documented scripts work as written, guard or not.

A generator program (the ``command`` adapter) runs through :func:`child_process`: in its own process group, killed
by the kernel when we die (Linux), and recorded in the run folder while it runs, so that the next run on that folder
ends what a killed run left behind (:func:`end_leftover_children`) before it recreates any output folder.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import json
import multiprocessing as mp
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

from mme3dr import runfiles


@contextmanager
def _main_not_reimported() -> Iterator[None]:
    """While active, ``spawn`` children skip importing the parent's ``__main__``.

    multiprocessing asks a child to run ``__main__`` again from its file (``__main__.__spec__`` is None: a script) or
    by module name (``python -m pkg.mod``); for the name ``"__main__"`` it does neither. The spec is restored on
    exit. Objects defined in the user's ``__main__`` cannot be sent to such workers, and none are.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = getattr(main, "__spec__", None)
    main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
    try:
        yield
    finally:
        main.__spec__ = saved


@contextmanager
def spawn_pool(workers: int, initializer: Callable[..., Any] | None = None,
               initargs: tuple[Any, ...] = ()) -> Iterator[Pool]:
    """A ``spawn`` :class:`multiprocessing.pool.Pool` of ``workers`` processes that never re-run the caller's script
    (see the module docstring); the pool is closed and joined on exit."""
    with _main_not_reimported():
        pool = mp.get_context("spawn").Pool(workers, initializer=initializer, initargs=initargs)
        try:
            yield pool
        finally:
            pool.terminate()
            pool.join()


def tie_to_parent(parent: int) -> None:
    """Call first thing in a pool worker (an ``initializer``): on Linux the kernel SIGKILLs this process when
    ``parent`` (the pid that started the pool) dies, even by SIGKILL, so no worker is left waiting for tasks for
    ever; if ``parent`` is already gone, exit at once. Elsewhere nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


# ---------------------------------------------------------------------------------------------------------------
# Child programs (the command adapter's generators): tied to this process, recorded, and ended by the next run.
# ---------------------------------------------------------------------------------------------------------------

#: Environment variable carrying a random token into a child and everything it starts, so a later run can find
#: (and end) the whole family of a child whose parent was killed, with no risk of hitting a reused pid.
CHILD_TOKEN_ENV = "MME3DR_CHILD_TOKEN"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_records: ContextVar[Path | None] = ContextVar("mme3dr_child_records", default=None)


@contextmanager
def recording_children(run_dir: Path | str) -> Iterator[None]:
    """While active, every :func:`child_process` is recorded in ``run_dir/.mme3dr-children/`` until it ends, so
    that :func:`end_leftover_children` can end it if this process dies first (the run lock activates this)."""
    token = _records.set(Path(run_dir) / runfiles.CHILDREN_DIR)
    try:
        yield
    finally:
        _records.reset(token)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGKILL the child when the thread that started it dies
    (``prctl(PR_SET_PDEATHSIG)``), and kills the child at once if that already happened; ``None`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child must not allocate or import
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


@contextmanager
def child_process(argv: Sequence[str], cwd: str | Path | None = None, stdout: Any = None,
                  stderr: Any = None) -> Iterator[subprocess.Popen]:
    """Run ``argv`` (no shell) as a child tied to this process; yields the :class:`subprocess.Popen`.

    The child leads its own session and process group (so the whole group can be killed) and gets a random
    :data:`CHILD_TOKEN_ENV`. Its lifetime is tied to ours: on Linux the kernel SIGKILLs it when the thread that
    started it dies, even by SIGKILL (``PR_SET_PDEATHSIG``); everywhere, while :func:`recording_children` is
    active, its pid, start time and token are recorded so the next run ends it and whatever it started
    (:func:`end_leftover_children`). On leaving the block (normally or by an exception) anything left of its
    process group is killed and the record removed. Raises ``OSError`` when the program cannot be started.
    """
    token = secrets.token_hex(16)
    proc = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            env={**os.environ, CHILD_TOKEN_ENV: token}, start_new_session=True,
                            preexec_fn=_die_with_parent())
    folder = _records.get()
    record = None
    try:
        if folder is not None:
            from mme3dr.jsonl import atomic_write_text

            record = folder / f"{proc.pid}.json"
            atomic_write_text(record, json.dumps({"pid": proc.pid, "start_time": _start_time(proc.pid),
                                                  "token": token, "argv": list(argv)}))
        yield proc
    finally:
        kill_group(proc.pid)
        proc.wait()
        if record is not None:
            record.unlink(missing_ok=True)


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the process group ``pgid`` (nothing if it is empty)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3... of ``/proc/<pid>/stat`` (state, ppid, pgrp, ...; after the command name), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _start_time(pid: int) -> str | None:
    """When ``pid`` started, as an opaque string that differs between two processes that had the same pid: the
    start time in clock ticks after boot on Linux (``/proc/<pid>/stat`` field 22), else ``ps -o lstart``."""
    if Path("/proc/self/stat").exists():
        fields = _proc_stat(pid)
        return None if fields is None else fields[19]
    try:
        res = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a killed process its parent has not reaped yet)."""
    fields = _proc_stat(pid)
    if fields is not None:
        return fields[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path("/proc/self/stat").exists()  # on Linux a pid without /proc/<pid>/stat is gone


def _holders_of(token: str) -> list[int]:
    """Linux: the pids of this user's processes whose environment carries ``token`` (a child and its family)."""
    needle = f"{CHILD_TOKEN_ENV}={token}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = Path(entry.path, "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def end_leftover_children(run_dir: Path | str, timeout: float = 30.0) -> list[int]:
    """End the children recorded in ``run_dir/.mme3dr-children/`` by a process that died without ending them, and
    everything they started; return the pids killed. Call it only while holding the run lock.

    A recorded child is killed (with its process group) only if its pid still has the recorded start time; on
    Linux every process carrying the child's token is killed as well (what the child started, even after the
    child itself died). Then this waits, up to ``timeout`` seconds, until they are gone, and removes the records.
    """
    folder = Path(run_dir) / runfiles.CHILDREN_DIR
    if not folder.is_dir():
        return []
    killed: list[int] = []
    for path in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            pid, start, token = int(rec["pid"]), rec.get("start_time"), str(rec["token"])
        except (OSError, ValueError, KeyError, TypeError):  # a record torn by a kill: no process to trust it with
            path.unlink(missing_ok=True)
            continue
        family = _holders_of(token) if Path("/proc/self/stat").exists() else []
        if start is not None and _start_time(pid) == start:
            kill_group(pid)
            killed.append(pid)
        for other in family:
            try:
                os.kill(other, signal.SIGKILL)
                killed.append(other)
            except (ProcessLookupError, PermissionError):
                pass
        path.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in killed) and time.monotonic() < deadline:
        time.sleep(0.01)  # a bounded wait on a condition: SIGKILLed processes vanish within milliseconds
    return sorted(set(killed))
