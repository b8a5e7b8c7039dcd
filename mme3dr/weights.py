"""Where model weights come from, how they are read, and the message when they are missing.

Order for every model: an explicit local path (``--clip-weights``, ``model_path=...``), then the folder named by
``$MME3DR_WEIGHTS`` (``$MME3DR_WEIGHTS/<name>``, where a hub id ``org/model`` may also be stored as
``org--model``), then the library's own source (a hub id or pretrained tag, which needs the network or a
warm cache). A missing file never becomes a silent zero: :class:`MissingWeightsError` says how to supply it.

Weights files are data, never code: every file is read with safetensors or ``torch.load(weights_only=True)``
(:func:`load_tensors`; PyTorch's restricted unpickler admits tensors, containers and numbers only), libraries are
asked for the same (``weights_only=True``, ``trust_remote_code=False``), and a file that would need more, such as a
pickled object or a TorchScript archive, is refused with :class:`UnsafeWeightsError` before any of it runs.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from mme3dr.defaults import DEFAULTS
from mme3dr.errors import InputError, MissingInputError


T = TypeVar("T")


class MissingWeightsError(MissingInputError):
    """Model weights could not be found or downloaded; the message says how to provide them."""


class UnsafeWeightsError(InputError):
    """A weights file is not plain tensor data: reading it would run code it carries, so it is refused."""


@contextmanager
def refusing_code(what: str) -> Iterator[None]:
    """Turn PyTorch's refusals of a ``weights_only`` load (a pickle that names other objects, a TorchScript
    archive) raised inside the block into :class:`UnsafeWeightsError` naming ``what``."""
    try:
        yield
    except pickle.UnpicklingError as exc:
        raise UnsafeWeightsError(_unsafe_message(what, exc)) from exc
    except RuntimeError as exc:
        if "weights_only" not in str(exc):
            raise
        raise UnsafeWeightsError(_unsafe_message(what, exc)) from exc


def _unsafe_message(what: str, exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    # PyTorch's message leads with how to bypass the check; keep only what the file asked for
    reason = next((line.split("WeightsUnpickler error:", 1)[1].split(". ")[0].strip()
                   for line in text.splitlines() if "WeightsUnpickler error:" in line), None)
    reason = reason or (text.strip().splitlines() or ["no message"])[0].split(". ")[0]
    return (f"refusing to load {what}: it is not plain tensor data, and unpickling it could run code it carries "
            f"({reason}). Weights are only read as tensors (safetensors, or torch.load with weights_only=True): "
            "use a state dict saved with torch.save(model.state_dict()) or a .safetensors file, from a source you "
            "trust.")


def load_tensors(path: Path | str) -> dict[str, Any]:
    """The state dict in ``path``, read without running code: ``.safetensors`` with safetensors, anything else with
    ``torch.load(map_location="cpu", weights_only=True)``. Raises :class:`UnsafeWeightsError` for a file that is
    more than tensors, ``ValueError`` for one that is not a mapping of names to tensors."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    with refusing_code(str(path)):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise ValueError(f"{path}: expected a state dict (parameter name -> tensor), got {type(state).__name__}")
    return dict(state)


class WeightsCheck:
    """Collects every missing weight of a command, so that one message names them all.

    ``check.attempt(label, loader)`` runs ``loader()`` and returns its value, or records the
    :class:`MissingWeightsError` under ``label`` and returns ``None``; :meth:`raise_if_missing` then raises one
    :class:`MissingWeightsError` listing each missing weight with its advice, and ``hint`` (e.g. which metrics
    need no weights).
    """

    def __init__(self) -> None:
        self.missing: list[tuple[str, str]] = []

    def attempt(self, label: str, loader: Callable[[], T]) -> T | None:
        try:
            return loader()
        except MissingWeightsError as exc:
            self.missing.append((label, str(exc)))
            return None

    def raise_if_missing(self, hint: str = "") -> None:
        if not self.missing:
            return
        if len(self.missing) == 1:
            text = f"{self.missing[0][0]}: {self.missing[0][1]}"
        else:
            text = f"{len(self.missing)} weights are missing:\n" + "\n".join(f"  - {label}: {msg}"
                                                                           for label, msg in self.missing)
        raise MissingWeightsError(text + (f"\n{hint}" if hint else ""))


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


def _first_line(exc: BaseException) -> str:
    """The exception's first line, whole (never cut mid-word)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def missing_message(what: str, source: str, name: str, exc: BaseException | None = None, option: str = "") -> str:
    """The actionable text for weights that could not be loaded."""
    where = f" ({type(exc).__name__}: {_first_line(exc)})" if exc else ""
    how = [f"download {source} where there is network access and copy it to ${DEFAULTS.weights_env}/"
           f"{name.replace('/', '--')}"]
    if option:  # a CLI option ("--clip-weights") or an adapter argument ("--model-arg model=")
        how.append(f"pass {option}PATH" if option.endswith("=") else f"pass {option} PATH")
    return f"cannot load {what} weights {source!r}{where}. To provide them: " + "; or ".join(how) + "."
