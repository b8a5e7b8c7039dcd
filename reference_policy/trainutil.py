"""What the reference policy's two trainers share (:mod:`reference_policy.pretrain`, :mod:`reference_policy.rl.train`):
seeding, the run log (``log.jsonl`` rows with a progress line each), curve plots and atomic file writes.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def device_arg(value: str) -> str:
    """argparse ``type`` of ``--device``: the device if torch can use it here, so that ``--device cuda`` on a machine
    without a GPU stops with one line naming the option, before any model is built."""
    import argparse

    from mme3dr.adapters.base import check_device
    from mme3dr.errors import InputError

    try:
        return check_device(value)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("use device=cpu", "use --device cpu")) from None


def seed_all(seed: int, device: str | torch.device) -> None:
    """Seed Python, NumPy and torch; deterministic kernels on the CPU only (on CUDA they make the 3D convolutions of
    the VQ-VAE several times slower, so a GPU run is seeded but not bitwise reproducible; TF32 and cuDNN autotuning
    are switched on there)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if str(device).startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync it, then ``os.replace`` it into place: a reader
    (or a process killed mid-write) sees the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace`` (see :func:`atomic_write_bytes`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class RunLog:
    """Log rows: each call adds ``seconds`` (wall time since the log was made, plus ``offset``), keeps the row,
    appends it to ``path`` as one JSON line (when given) and prints ``key=value`` on stderr (when ``echo``).

    ``rows`` starts with ``rows`` (e.g. the rows of a resumed run); :meth:`rewrite` replaces the file with them."""

    def __init__(self, path: str | Path | None = None, echo: bool = True, offset: float = 0.0,
                 rows: Iterable[dict] = ()) -> None:
        self.path = Path(path) if path else None
        self.echo = echo
        self.offset = offset
        self.t0 = time.time()
        self.rows: list[dict] = list(rows)

    @property
    def seconds(self) -> float:
        """``offset`` + wall seconds since the log was made."""
        return self.offset + time.time() - self.t0

    def __call__(self, **row: object) -> dict:
        row["seconds"] = round(self.seconds, 2)
        self.rows.append(row)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.echo:
            print(" ".join(f"{k}={_fmt(v)}" for k, v in row.items()), file=sys.stderr, flush=True)
        return row

    def rewrite(self) -> None:
        """Write every kept row to ``path`` (atomically), replacing what was there."""
        if self.path:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    @staticmethod
    def read(path: str | Path) -> list[dict]:
        """The rows of a ``log.jsonl`` (empty when the file does not exist; a torn last line is skipped)."""
        path = Path(path)
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows


@dataclass(frozen=True)
class Panel:
    """One subplot of :func:`plot_curves`: ``keys`` of the rows that pass ``where`` against ``x``."""

    title: str
    keys: Sequence[str]
    where: Callable[[dict], bool] = lambda row: True
    x: str = "step"
    yscale: str = "linear"


def plot_curves(rows: Sequence[dict], panels: Sequence[Panel], path: str | Path) -> None:
    """One PNG with a subplot per panel; a key missing from a row is skipped for that row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        rs = [r for r in rows if panel.where(r)]
        for k in panel.keys:
            pts = [(r[panel.x], r[k]) for r in rs if isinstance(r.get(k), (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=k)
        ax.set(title=panel.title, xlabel=panel.x, yscale=panel.yscale)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
