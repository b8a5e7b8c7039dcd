"""Rendered views decoded once, in worker processes, for every image metric at once.

Each view is turned once into what the image models need (:class:`ViewPixels`): the full-size RGB pixels (uint8,
transparent pixels composited on white), which Inception takes as they are (it resizes on the device), and one
``size x size`` PIL bicubic resize per size asked for (224 for ViT-B/32 CLIP and DINOv2 ``resize224``). For a
square render, open_clip's ``Resize(S, bicubic) + CenterCrop(S)`` is exactly that PIL resize, and so is DINOv2's
``resize((224, 224), BICUBIC)``; scaling to [0, 1] and the mean/std normalisation are done on the device. (A torch
bicubic resize on the device is not used: measured on real renders it differs from PIL's by up to 5 levels and moves
the CLIP score by up to 0.014 per view.)

:func:`stream_views` decodes the views of many groups (a group: the views of one prompt or reference object) in
``workers`` worker processes (a :class:`torch.utils.data.DataLoader`; the pixels come back through shared memory)
when the models run on a GPU, in threads when they run on the CPU, and yields them group by group, in order, as
tensors on the models' device. Processes for a GPU: Pillow holds the GIL for part of every decode, and with 16
decoding threads the models' own Python (which launches the GPU kernels) ran 30-90x slower than alone on the H200.
At most ``prefetch`` groups per worker are decoded ahead, so memory stays flat whatever the number of groups. A
group whose view cannot be read comes back with its error and no pixels; the other groups are unaffected.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mme3dr.defaults import DEFAULTS
from mme3dr.metrics.base import composite, describe

WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ViewPixels:
    """One view as the image models read it: uint8 tensors, on the CPU or on the models' device."""

    rgb: torch.Tensor  # (H, W, 3) uint8, composited on the background
    resized: dict[int, torch.Tensor] = field(default_factory=dict)  # size -> (size, size, 3) uint8, PIL bicubic

    @property
    def square(self) -> bool:
        return self.rgb.shape[0] == self.rgb.shape[1]

    def image(self) -> Image.Image:
        """The full-size view as a PIL RGB image (for a model whose preprocessing is not the shared one)."""
        return Image.fromarray(self.rgb.cpu().numpy(), "RGB")


def _pixels(image: Image.Image, sizes: Sequence[int]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.asarray(rgb), {s: np.asarray(rgb.resize((s, s), Image.BICUBIC)) for s in sorted(set(sizes))}


def prepare(image: Image.Image, sizes: Sequence[int] = ()) -> ViewPixels:
    """``image`` (converted to RGB) as :class:`ViewPixels` on the CPU: its pixels and a bicubic ``s x s`` resize per
    size."""
    rgb, resized = _pixels(image, sizes)
    return ViewPixels(torch.from_numpy(rgb.copy()), {s: torch.from_numpy(r.copy()) for s, r in resized.items()})


def decode_view(path: Path | str, sizes: Sequence[int] = (),
                background: tuple[int, int, int] = WHITE) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Read one rendered view and composite it on ``background``: its RGB pixels and a bicubic ``s x s`` resize per
    size, as uint8 arrays."""
    with Image.open(path) as im:
        return _pixels(composite(im, background), sizes)


@dataclass
class DecodedGroup:
    """The views of one group, in order (``views`` empty and ``error`` set when one could not be read)."""

    index: int  # position of the group in the stream
    views: list[ViewPixels]
    error: Exception | None = None


class GroupViews(torch.utils.data.Dataset):
    """Group ``i`` of ``groups`` decoded (:func:`decode_view`): ``(i, rgb, {size: resized}, None)``, the views' RGB
    pixels and each square resize as uint8 tensors (:func:`_tensors`: an (n, H, W, 3) tensor or n (H, W, 3) ones),
    or ``(i, None, None, error)`` when a view cannot be read."""

    def __init__(self, groups: Sequence[Sequence[Path]], sizes: Sequence[int], background: tuple[int, int, int]):
        self.groups, self.sizes, self.background = [list(map(Path, g)) for g in groups], tuple(sizes), background

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int):
        return self.assemble(i, [self.view(i, k) for k in range(len(self.groups[i]))])

    def view(self, i: int, k: int) -> tuple[np.ndarray, dict[int, np.ndarray]] | Exception:
        """View ``k`` of group ``i`` decoded, or the exception that stopped it."""
        try:
            return decode_view(self.groups[i][k], self.sizes, self.background)
        except Exception as exc:  # an unreadable view fails its group only
            return exc

    def assemble(self, i: int, views: list[tuple[np.ndarray, dict[int, np.ndarray]] | Exception]):
        """Group ``i``'s item from its decoded views (:meth:`view`)."""
        error = next((v for v in views if isinstance(v, Exception)), None)
        if error is not None:
            return i, None, None, _portable(error)
        if not views:
            return i, [], {}, None
        return i, _tensors([rgb for rgb, _ in views]), {s: _tensors([r[s] for _, r in views]) for s in self.sizes}, None


def _tensors(arrays: Sequence[np.ndarray]) -> torch.Tensor | list[torch.Tensor]:
    """``arrays`` as tensors: in a worker process, stacked into one tensor in shared memory (it reaches the main
    process with no further copy, and one tensor per group costs less to share than one per view) when they have
    one shape; in this process, one tensor per array, with no copy."""
    if torch.utils.data.get_worker_info() is None or len({a.shape for a in arrays}) > 1:
        return [torch.from_numpy(a) for a in arrays]
    out = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8).share_memory_()
    np.stack(arrays, out=out.numpy())
    return out


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (it travels back from a worker process), else a RuntimeError saying it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(describe(exc))


def stream_views(groups: Sequence[Sequence[Path]], sizes: Sequence[int] = (), workers: int = DEFAULTS.decode_workers,
                 prefetch: int = DEFAULTS.decode_prefetch, background: tuple[int, int, int] = WHITE,
                 device: str | torch.device | None = None, processes: bool | None = None) -> Iterator[DecodedGroup]:
    """Decode the views of each group of ``groups`` (lists of PNG paths) with :func:`decode_view` in ``workers``
    processes or threads (0: in this thread, one group at a time); yield a :class:`DecodedGroup` per group, in
    order, its pixels on ``device`` (a CUDA device: copied from page-locked memory without blocking; default: the
    CPU). At most ``prefetch`` groups per worker process (threads: one group, its views decoded side by side) are
    decoded ahead of the consumer.

    ``processes`` (default: when ``device`` is a GPU): worker processes of a DataLoader rather than threads. With
    the models on a GPU, the main thread must keep launching their kernels and decoding threads starve it of the
    GIL; with the models on the CPU, their work releases the GIL and threads cost less (on the 2-core CPU,
    processes decoded 13% slower than threads)."""
    if workers < 0:
        raise ValueError(f"workers must be at least 0, got {workers}")
    if prefetch < 1:
        raise ValueError(f"prefetch must be at least 1, got {prefetch}")
    device = torch.device(device or "cpu")
    processes = device.type == "cuda" if processes is None else processes
    dataset = GroupViews(groups, sizes, background)
    pin = device.type == "cuda" and processes and workers > 0
    if processes and workers and len(dataset):
        decoded = iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=min(workers, len(dataset)),
                                                   pin_memory=pin, prefetch_factor=prefetch))
    else:
        decoded = _in_threads(dataset, workers)
    for index, rgb, resized, error in decoded:
        if error is not None:
            yield DecodedGroup(index, [], error)
            continue
        rgb, resized = _moved(rgb, device, pin), {s: _moved(r, device, pin) for s, r in resized.items()}
        yield DecodedGroup(index, [ViewPixels(rgb[k], {s: r[k] for s, r in resized.items()}) for k in range(len(rgb))])


def _moved(x: torch.Tensor | list[torch.Tensor], device: torch.device, pin: bool) -> torch.Tensor | list[torch.Tensor]:
    return x.to(device, non_blocking=pin) if torch.is_tensor(x) else [v.to(device, non_blocking=pin) for v in x]


def _in_threads(dataset: GroupViews, threads: int) -> Iterator[tuple]:
    """``dataset[i]`` for every ``i`` in order, its views decoded in ``threads`` threads while the group before it
    is consumed (0 threads: in this thread, when asked for). A deeper queue was slower on the 2-core CPU: the
    decoding threads then compete with the models' own threads for the cores."""
    if threads == 0:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="mme3dr-decode") as pool:
        pending: deque[tuple[int, list[Future]]] = deque()
        try:
            for i in range(len(dataset)):
                pending.append((i, [pool.submit(dataset.view, i, k) for k in range(len(dataset.groups[i]))]))
                if len(pending) > 1:
                    j, futures = pending.popleft()
                    yield dataset.assemble(j, [f.result() for f in futures])
            while pending:
                j, futures = pending.popleft()
                yield dataset.assemble(j, [f.result() for f in futures])
        finally:
            for _, futures in pending:  # the consumer stopped early: drop the work not started
                for fut in futures:
                    fut.cancel()
