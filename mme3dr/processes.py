"""Worker processes that leave the user's script alone.

Rendering uses a ``spawn`` process pool (an EGL/OSMesa context does not survive ``fork``). A spawned child normally
re-imports the parent's ``__main__`` module, so a plain script that calls ``render_run(..., workers=4)`` without an
``if __name__ == "__main__":`` guard would run again in every worker (which then tries to start workers of its own).
The workers here run only functions of this package and never need the user's ``__main__``; :func:`spawn_pool` starts
them with ``__main__`` marked as not to be re-imported, so the documented scripts work as written, guard or not.
"""

from __future__ import annotations

import importlib.machinery
import multiprocessing as mp
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.pool import Pool
from typing import Any


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
