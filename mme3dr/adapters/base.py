"""The generator interface: typed requests in, typed results out.

A generator turns :class:`GenerationRequest` objects into :class:`GenerationResult` objects. Override
:meth:`Generator.generate_one` for one prompt at a time, or :meth:`Generator.generate` for batched models.
Errors for one prompt are returned as a result with ``error`` set, never raised, so a run goes on; missing
weights (:func:`stops_the_run`) are the exception.
"""

from __future__ import annotations

import time
import traceback
from abc import ABC
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mme3dr.defaults import DEFAULTS
from mme3dr.errors import InputError, stops_every_write
from mme3dr.weights import MissingWeightsError

def check_device(device: str) -> str:
    """``device`` if torch can use it here, else ``ValueError`` saying what is available (checked when a generator
    is created, so a bad ``--model-arg device=...`` stops the command once, before any prompt)."""
    import torch  # lazy: the CLI starts without torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a torch device (use cpu, cuda or cuda:N): {exc}") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError(f"device {device!r}: no CUDA GPU is visible on this machine; use device=cpu")
        if dev.index is not None and dev.index >= n:
            raise InputError(f"device {device!r}: only {n} CUDA GPU(s) visible (cuda:0 ... cuda:{n - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r}: MPS is not available here; use device=cpu")
    return device


def stops_the_run(exc: BaseException) -> bool:
    """True for :class:`~mme3dr.weights.MissingWeightsError` and for a full disk or a read-only file system
    (:func:`mme3dr.errors.stops_every_write`): every prompt would fail alike, so the error (with its advice text)
    ends the run instead of being recorded per prompt."""
    return isinstance(exc, MissingWeightsError) or stops_every_write(exc)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to generate. ``output_dir`` exists and belongs to this request alone."""

    prompt_id: str
    prompt: str
    category: str
    seed: int
    output_dir: Path


@dataclass
class GenerationResult:
    """What a generator made of one request: an asset file, or an error message."""

    prompt_id: str
    asset_path: Path | None = None
    error: str | None = None
    up_axis: str = DEFAULTS.up_axis
    seconds: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from mme3dr.assets import parse_up_axis  # lazy: mme3dr.assets imports trimesh

        self.up_axis = parse_up_axis(self.up_axis)
        if (self.asset_path is None) == (self.error is None):
            raise ValueError("a GenerationResult has exactly one of asset_path and error")
        if self.asset_path is not None:
            self.asset_path = Path(self.asset_path)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(cls, request: GenerationRequest, error: str, seconds: float = 0.0, **metadata: Any) -> GenerationResult:
        return cls(prompt_id=request.prompt_id, error=error, seconds=seconds, metadata=dict(metadata))


class Generator(ABC):
    """Base class of every text-to-3D adapter.

    Subclasses set ``up_axis`` (the frame of the files they write; TRELLIS-style GLBs are ``+y``) and
    ``batch_size`` (how many requests :meth:`generate` takes at once), and implement :meth:`generate_one`
    or :meth:`generate`. Constructor keyword arguments are the ``--model-arg key=value`` options.
    """

    #: Up axis of written assets, converted to the canonical z-up frame by :mod:`mme3dr.assets`.
    up_axis: str = DEFAULTS.up_axis
    #: Number of requests the runner hands to :meth:`generate` at once (results are saved after each batch).
    batch_size: int = 1

    def check(self) -> None:
        """Fail fast, before any prompt: raise :class:`~mme3dr.weights.MissingWeightsError` when weights are
        missing (with the text saying how to provide them). The runner calls it once per run, before it writes
        anything, and ``mme3dr evaluate`` reports it together with every missing metric weight. The default checks
        nothing; adapters with weights override it (cheaply: it should find the files, not load a large model)."""

    def generate_one(self, request: GenerationRequest) -> Path | str | GenerationResult:
        """Write one asset for ``request`` (inside ``request.output_dir``) and return its path.

        Return a full :class:`GenerationResult` instead to attach metadata or report a failure without raising.
        """
        raise NotImplementedError(f"{type(self).__name__} implements neither generate_one nor generate")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate every request; a failing request becomes a result with ``error`` set."""
        results = []
        for req in requests:
            start = time.perf_counter()
            try:
                out = self.generate_one(req)
                if not isinstance(out, GenerationResult):
                    out = GenerationResult(req.prompt_id, asset_path=Path(out), up_axis=self.up_axis)
                out.seconds = out.seconds or time.perf_counter() - start
                results.append(out)
            except Exception as exc:  # one prompt's failure must not stop the run
                if stops_the_run(exc):
                    raise
                results.append(GenerationResult.failure(
                    req, f"{type(exc).__name__}: {exc}", time.perf_counter() - start,
                    traceback=traceback.format_exc(limit=8)))
        return results

    @staticmethod
    def from_function(fn: Callable[[GenerationRequest], Path | str], up_axis: str = DEFAULTS.up_axis) -> Generator:
        """Wrap a plain ``fn(request) -> path`` as a :class:`Generator`."""
        return _FunctionGenerator(fn, up_axis)


class _FunctionGenerator(Generator):
    def __init__(self, fn: Callable[[GenerationRequest], Path | str], up_axis: str) -> None:
        from mme3dr.assets import parse_up_axis  # lazy: mme3dr.assets imports trimesh

        self._fn = fn
        self.up_axis = parse_up_axis(up_axis)

    def generate_one(self, request: GenerationRequest) -> Path:
        return Path(self._fn(request))
