"""Several processes through torch.distributed (``torchrun --nproc_per_node N``): who does which share of a stage.

``render`` and ``score`` (and ``evaluate``, which runs them) split the prompts between the ranks: rank ``r`` of
``N`` takes the ``r``-th, ``(r + N)``-th, ... (strided, so every rank gets a mix of categories and sizes). Each rank
renders its prompts into their own folders and computes its prompts' scores and view features; the records and
features go to rank 0 (:meth:`Ranks.gather`), which writes every run-level file (``scores.jsonl`` in prompt order,
the render index, the feature caches) and computes the set metrics (KID/FID need every view). The run folder
ends as a one-process run leaves it (timings aside). Generation runs on rank 0 alone. Render folders are written
by their rank as they are done; records and features reach the run folder when a stage's results are gathered, so
a crash loses (and a re-run computes again) only the current stage's results of the other ranks.

Records and features are Python objects, gathered over gloo (host memory): evaluation needs no GPU collective, so
one code path serves the CPU and GPUs. Each rank uses ``cuda:LOCAL_RANK`` when CUDA is there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from mme3dr.defaults import DEFAULTS

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's rank among ``world`` processes (the default: one process, rank 0 of 1, no process group)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run-level files."""
        return self.rank == 0

    def shard(self, seq: list[T]) -> list[T]:
        """This rank's share of ``seq``: items ``rank, rank + world, ...``."""
        return list(seq[self.rank::self.world])

    def mine(self, index: int) -> bool:
        """Whether item ``index`` of a sequence belongs to this rank's share."""
        return index % self.world == self.rank

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None on the other ranks)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def everywhere(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def ranks_from_env() -> Ranks:
    """The :class:`Ranks` of this process. Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group
    (gloo, timeout ``DEFAULTS.dist_timeout_minutes``: rank 0 may generate alone for long) and makes
    ``cuda:LOCAL_RANK`` the current CUDA device, so every model placed on ``cuda`` lands on this rank's GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(minutes=DEFAULTS.dist_timeout_minutes))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return Ranks(dist.get_rank(), dist.get_world_size())


@contextmanager
def joined() -> Iterator[Ranks]:
    """The :class:`Ranks` of this process (:func:`ranks_from_env`) for the length of a command; at the end every
    rank waits for the others and leaves the process group (after an error it leaves at once: ``torchrun`` stops
    the other ranks)."""
    ranks = ranks_from_env()
    ok = False
    try:
        yield ranks
        ok = True
    finally:
        if ranks.world > 1:
            import torch.distributed as dist

            if ok:
                dist.barrier()
            dist.destroy_process_group()
