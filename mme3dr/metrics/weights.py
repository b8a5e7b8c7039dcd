"""Where model weights come from, and the message when they are missing.

Order for every model: an explicit local path (``--clip-weights``, ``model_path=...``), then the folder named by
``$MME3DR_WEIGHTS`` (``$MME3DR_WEIGHTS/<name>``, where a hub id ``org/model`` may also be stored as
``org--model``), then the library's own source (a hub id or pretrained tag, which needs the network or a
warm cache). A missing file never becomes a silent zero: :class:`MissingWeightsError` says how to supply it.
"""

from __future__ import annotations

import os
from pathlib import Path

from mme3dr.defaults import DEFAULTS


class MissingWeightsError(FileNotFoundError):
    """Model weights could not be found or downloaded; the message says how to provide them."""


def weights_dir() -> Path | None:
    value = os.environ.get(DEFAULTS.weights_env)
    return Path(value).expanduser() if value else None


def local_candidates(name: str) -> list[Path]:
    """Paths under ``$MME3DR_WEIGHTS`` where ``name`` (a file name or a hub id) may be stored."""
    root = weights_dir()
    if root is None:
        return []
    return [root / name, root / name.replace("/", "--")]


def resolve_local(name: str, explicit: str | Path | None = None) -> Path | None:
    """An explicit path (which must exist), else a copy under ``$MME3DR_WEIGHTS``, else ``None``."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise MissingWeightsError(f"weights file or folder {path} does not exist")
        return path
    for cand in local_candidates(name):
        if cand.exists():
            return cand
    return None


def missing_message(what: str, source: str, name: str, exc: BaseException | None = None, option: str = "") -> str:
    """The actionable text for weights that could not be loaded."""
    where = f" ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})" if exc else ""
    how = [f"download {source} where there is network access and copy it to ${DEFAULTS.weights_env}/"
           f"{name.replace('/', '--')}"]
    if option:
        how.append(f"pass {option} PATH")
    return f"cannot load {what} weights {source!r}{where}. To provide them: " + "; or ".join(how) + "."
