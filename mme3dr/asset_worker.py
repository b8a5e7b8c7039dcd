"""Load assets in a separate process with a time and a memory budget, so no file can hang or exhaust the caller.

A :class:`BudgetedWorker` owns one child process (``python -m mme3dr.asset_worker``) that serves any number of
requests, so the start-up cost (about a second: numpy, trimesh, Pillow) is paid once per process, not per asset.
A request is a module-level function and its arguments (pickled); the answer is its return value, or its exception
raised again in the caller. The budget of one request:

- time: the caller waits at most ``timeout_s`` seconds for an answer (the child's start-up is not counted: it says
  when it is ready). Past that the child is killed (SIGKILL) and the request
  raises :class:`~mme3dr.assets.AssetError` with reason ``timeout``; the next request starts a fresh child. A read
  that blocks for ever (a FIFO, a device) therefore costs ``timeout_s``, never the run.
- memory: the child's address space is limited (``RLIMIT_AS``) to its size after start-up plus ``memory_mb`` MiB,
  so an allocation past the budget fails at once (numpy raises ``MemoryError`` before touching a page) instead of
  driving the machine into swap or the OOM killer. The request raises ``AssetError`` with reason ``too_large`` and
  the child is replaced. Where ``RLIMIT_AS`` does not exist (not Linux), only the time budget holds.
- textures: Pillow's decompression-bomb limit is set to ``DEFAULTS.max_texture_pixels`` and its warning is an
  error, so an image that declares more pixels fails when its header is read, before it is decoded (the files are
  checked before parsing too: :mod:`mme3dr.asset_files`).

The child dies with its caller: it exits at end of file on its request pipe, and on Linux the kernel sends it
SIGKILL when the caller dies (:func:`mme3dr.processes.tie_to_parent`: ``PR_SET_PDEATHSIG``, which fires when
the *thread* that started the child ends: a worker is best started and used from one long-lived thread, as every
caller in this package does).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from mme3dr.defaults import DEFAULTS

_READY = b"ready"
_STARTUP_S = 600.0  # imports only; far above the ~1 s they take


class BudgetedWorker:
    """One reusable child process that runs functions under a time and memory budget (see the module docstring).

    ``call(fn, *args)`` runs ``fn(*args)`` in the child; ``fn`` must be importable by name (a module-level function).
    Use as a context manager, or call :meth:`close`; an open worker is also closed when the caller exits.
    """

    def __init__(self, timeout_s: float = DEFAULTS.asset_timeout_s, memory_mb: int = DEFAULTS.asset_memory_mb) -> None:
        if timeout_s <= 0 or memory_mb <= 0:
            raise ValueError(f"timeout_s ({timeout_s}) and memory_mb ({memory_mb}) must be positive")
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self._proc: subprocess.Popen | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None
        self._owner = os.getpid()
        #: Child processes started so far (a new one after each timeout, memory overrun or crash).
        self.starts = 0

    def __enter__(self) -> BudgetedWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """Process id of the running child (None before the first call and after a kill)."""
        return self._proc.pid if self._proc is not None and self._owner == os.getpid() else None

    def call(self, fn: Callable[..., Any], *args: Any, label: str | Path | None = None) -> Any:
        """``fn(*args)`` in the child, within the budget. ``label`` (e.g. the asset path) goes into budget errors."""
        from mme3dr.assets import AssetError

        self._ensure_started()
        try:
            kind, value = self._exchange(fn, args, label)
        except BaseException:  # a timeout, a dead child, Ctrl-C: never leave an answer pending for the next call
            self._kill()
            raise
        if kind == "memory":
            self._kill()
            raise AssetError("too_large", f"loading needs more memory than the budget of {self.memory_mb} MiB "
                             "(DEFAULTS.asset_memory_mb)", label)
        if kind == "raise":
            raise value
        return value

    def _exchange(self, fn: Callable[..., Any], args: tuple, label: str | Path | None) -> tuple[str, Any]:
        from mme3dr.assets import AssetError

        assert self._send is not None and self._recv is not None
        try:
            self._send.send((fn, args))
        except OSError:  # the child died between requests: start over once
            self._kill()
            self._ensure_started()
            assert self._send is not None and self._recv is not None
            self._send.send((fn, args))
        if not self._recv.poll(self.timeout_s):
            raise AssetError("timeout", f"loading took longer than the budget of {self.timeout_s:g} s "
                             "(DEFAULTS.asset_timeout_s): a read that never ends (a FIFO, a device) or a file far "
                             "too big for its format", label)
        try:
            return self._recv.recv()
        except (EOFError, OSError):
            code = self._kill()
            how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit status {code}"
            raise AssetError("unreadable", f"the loading process died ({how}) while reading the file", label) \
                from None

    def close(self) -> None:
        """Stop the child (it exits on end of file; it is killed if it does not within a few seconds)."""
        if self._proc is None or self._owner != os.getpid():
            self._proc = None
            return
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill()
        self._proc = self._send = self._recv = None

    def _ensure_started(self) -> None:
        if self._owner != os.getpid():  # a forked copy of a worker object: the child belongs to the parent
            self._proc = self._send = self._recv = None
            self._owner = os.getpid()
        if self._proc is not None and self._proc.poll() is None:
            return
        self._kill()
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        package_root = str(Path(__file__).resolve().parents[1])  # the same mme3dr as the caller's
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}
        argv = [sys.executable, "-m", "mme3dr.asset_worker", str(req_r), str(res_w), str(os.getpid()),
                str(self.memory_mb)]
        try:
            self._proc = subprocess.Popen(argv, pass_fds=(req_r, res_w), env=env, stdin=subprocess.DEVNULL,
                                          close_fds=True)
        finally:
            os.close(req_r)
            os.close(res_w)
        self._send = Connection(req_w, readable=False)
        self._recv = Connection(res_r, writable=False)
        self.starts += 1
        # start-up (imports) is not part of any request's budget: wait for the child to say it is ready
        try:
            ready = self._recv.poll(_STARTUP_S) and self._recv.recv_bytes() == _READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self._kill()
            raise RuntimeError(f"the asset loader process (python -m mme3dr.asset_worker) did not start (exit "
                               f"status {code}); its error is printed above")

    def _kill(self) -> int | None:
        """Kill the child (if any) and return its exit code."""
        proc, self._proc = self._proc, None
        for conn in (self._send, self._recv):
            if conn is not None:
                conn.close()
        self._send = self._recv = None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        return proc.wait()


_shared: BudgetedWorker | None = None


def shared_worker() -> BudgetedWorker:
    """The process's default worker with the budget of :data:`mme3dr.defaults.DEFAULTS`, started on first use."""
    global _shared
    if _shared is None:
        import atexit

        _shared = BudgetedWorker()
        atexit.register(_shared.close)
    return _shared


# ----------------------------------------------------------------------------------------------------- the child


def _limit_address_space(memory_mb: int) -> None:
    try:
        import resource

        with open("/proc/self/statm") as f:
            baseline = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        return
    limit = baseline + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _serve(requests: Connection, answers: Connection) -> None:
    while True:
        try:
            fn, args = requests.recv()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[str, Any] = ("ok", fn(*args))
        except MemoryError:
            answer = ("memory", None)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            answer = ("raise", exc)
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            answer, data = ("memory", None), pickle.dumps(("memory", None))
        except Exception:  # an exception that does not pickle: send its text
            data = pickle.dumps(("raise", RuntimeError("".join(traceback.format_exception(answer[1])))))
        answers.send_bytes(data)
        if answer[0] == "memory":  # start clean: the next request gets a fresh process
            return


def main(argv: list[str]) -> None:
    req_fd, res_fd, parent, memory_mb = (int(a) for a in argv)
    from mme3dr.processes import tie_to_parent

    tie_to_parent(parent)  # not Linux: end of file on the request pipe still ends the child
    import numpy  # noqa: F401 - imported before the limit, so the baseline includes them
    import trimesh  # noqa: F401
    from PIL import Image

    import mme3dr.assets  # noqa: F401

    Image.MAX_IMAGE_PIXELS = DEFAULTS.max_texture_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    _limit_address_space(memory_mb)
    answers = Connection(res_fd, readable=False)
    answers.send_bytes(_READY)
    _serve(Connection(req_fd, writable=False), answers)


if __name__ == "__main__":
    main(sys.argv[1:])
