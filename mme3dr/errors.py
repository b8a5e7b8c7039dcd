"""The errors a user can act on, and how the command line reports every error.

:class:`Mme3drError` is the base of every error a user can fix: a bad name, option, value or input file, a missing
file, weight or system library, a run folder held by another process. Each subclass keeps the built-in base it
had before (``ValueError``, ``KeyError``, ``TypeError``, ``FileNotFoundError``, ``RuntimeError``), so code that
catches those still catches them. The command line prints such an error as one line and exits with
:data:`EXIT_USER_ERROR`; it prints an ``OSError`` (disk full, permission denied, a read-only file system) as
:func:`describe_os_error` with the same exit code. Any other exception is a bug in mme3dr: a short traceback, a
line asking to report it, and :data:`EXIT_BUG`.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Exit code of a user-facing error (as typer/click use for usage errors).
EXIT_USER_ERROR = 2
#: Exit code of a bug: EX_SOFTWARE of BSD's sysexits.h, "an internal software error has been detected".
EXIT_BUG = 70


class Mme3drError(Exception):
    """Base of the errors a user can fix; the message says what to do."""

    def __str__(self) -> str:
        # KeyError would print its message in quotes; every user-facing error prints its message as it is
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputError(Mme3drError, ValueError):
    """An option, argument, value or input file that is not valid."""


class UnknownNameError(Mme3drError, KeyError):
    """A name that is not registered (model, metric, preset) or not in the prompt set."""


class ModelArgumentError(Mme3drError, TypeError):
    """A model argument the model does not take, or a model factory that does not make a Generator."""


class MissingInputError(Mme3drError, FileNotFoundError):
    """A file or folder the command needs is not there (the message says how to make it)."""


class SetupError(Mme3drError, RuntimeError):
    """This machine or process lacks something the command needs (e.g. a headless OpenGL backend)."""


class AdapterError(Mme3drError, RuntimeError):
    """Code outside mme3dr (a plug-in model adapter, the factory given to the ``python`` model) raised while mme3dr
    created the generator: not a bug of mme3dr; the message names the code and its error."""


#: errno -> what it means for a run and what to do; the path is put in front.
_OS_ADVICE = {
    errno.ENOSPC: "no space left on the device. Free some space (or write the run to another disk with --out) "
                  "and run the same command again: finished work is kept",
    errno.EDQUOT: "disk quota exceeded. Free some space (or write the run to another disk with --out) and run "
                  "the same command again: finished work is kept",
    errno.EACCES: "permission denied. Make it readable (and its folder writable) for this user, or choose "
                  "another --out folder",
    errno.EPERM: "operation not permitted. Check the owner and permissions, or choose another --out folder",
    errno.EROFS: "read-only file system. Write the run to a writable folder (--out)",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of this path is not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EMFILE: "too many open files. Raise the limit (ulimit -n) and run again",
    errno.ENFILE: "too many open files on the system. Close some programs and run again",
    errno.EIO: "input/output error: the disk or network file system failed. Check it and run again",
    errno.ENAMETOOLONG: "the path is too long for the file system",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an ``OSError``: the path(s) it names, what happened and what to do.

    An ``OSError`` raised with a message of ours (no errno) reads as that message.
    """
    if exc.errno is None:
        return str(exc)
    where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    what = _OS_ADVICE.get(exc.errno, exc.strerror or errno.errorcode.get(exc.errno, f"errno {exc.errno}"))
    return f"{where}: {what}" if where else f"{what} ({exc.strerror})"


@contextmanager
def naming(path: Path | str) -> Iterator[None]:
    """Re-raise an ``OSError`` that names no file (a failed ``write`` on an open file: disk full, I/O error) as
    the same error naming ``path``, so the message says where."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def stops_every_write(exc: BaseException) -> bool:
    """True for an ``OSError`` that will fail every later write as well (disk full, quota, read-only file
    system): a stage stops on it instead of recording one failure per item."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
