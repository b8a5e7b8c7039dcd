"""Image feature extractors for Kernel/Frechet distances, and a per-render-preset feature cache.

- ``inception``: torch-fidelity's ``inception-v3-compat`` (the TF-Inception port used for FID/KID), 2048-d pool3
  features; images resized to 299 inside the extractor. Weights: ``weights=PATH``, else
  ``$MME3DR_WEIGHTS/weights-inception-2015-12-05-6726825d.pth``, else torch-fidelity's download (torch hub cache).
  The file is read here as tensors only (:func:`~mme3dr.weights.load_tensors`), never unpickled by
  torch-fidelity, whose own loader would run any code a crafted file carries.
- ``dinov2``: DINOv2 CLS-token features from transformers' ``Dinov2Model`` (default ``facebook/dinov2-base``,
  768-d). Preprocessing ``resize224`` (default): images resized to 224x224 (bicubic) and normalised with the
  ImageNet mean/std, the whole view kept. ``ar3d-r1-eval``: what the released AR3D-R1 eval.py does: PIL
  ``resize((224, 224))`` (bicubic), then the DINOv2 image processor (transformers' PIL ``BitImageProcessor``
  with dinov2-base's settings: shortest edge to 256 bicubic, centre crop 224, ImageNet mean/std), which drops
  a border of 16/256 of the view on every side. (torch-fidelity's own DINOv2 extractor needs torch.hub at run
  time and cannot load local weights, so it is not used.)
Images are RGB, renders composited on white, and reach the extractors as :class:`~mme3dr.metrics.views.ViewPixels`
(decoded once for every image model, :mod:`mme3dr.metrics.image_pass`): Inception reads the full-size pixels, DINOv2
the shared 224x224 bicubic resize; scaling and normalisation run on the device. Features are float32 (what the
models output) and cached in ``<render folder>/features/`` by extractor and weights, so a render preset (its folder
carries the hash) never reuses another preset's features.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mme3dr.defaults import DEFAULTS
from mme3dr.errors import InputError
from mme3dr.jsonl import atomic_writer
from mme3dr.metrics.views import ViewPixels, prepare
from mme3dr.weights import (MissingWeightsError, UnsafeWeightsError, load_tensors, missing_message,
                            refusing_code, resolve_local)

#: The file name torch-fidelity downloads (the basename of its ``URL_INCEPTION_V3``); put a copy under
#: ``$MME3DR_WEIGHTS/`` or pass ``--inception-weights PATH``.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DINOV2_PREPROCESSING = ("resize224", "ar3d-r1-eval")


def default_device() -> str:
    """The device the models (and the set-metric arithmetic of scoring) run on when none is given: cuda when
    available, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


class FeatureExtractor(ABC):
    name: str
    #: Sizes of the square bicubic resizes :meth:`_forward` reads (``ViewPixels.resized``); empty: full size only.
    sizes: tuple[int, ...] = ()

    def __init__(self, device: str | None = None, batch_size: int = DEFAULTS.batch_size) -> None:
        self.device = device or default_device()
        self.batch_size = batch_size

    @property
    @abstractmethod
    def weights_id(self) -> str:
        """Identifies the weights (hub id, tag or file name + size) for cache keys and run records."""

    @abstractmethod
    def _forward(self, views: Sequence[ViewPixels]) -> torch.Tensor: ...

    @torch.no_grad()
    def embed(self, views: Sequence[ViewPixels]) -> np.ndarray:
        """Features of prepared views, float32 array (n, d), computed in batches of ``batch_size``."""
        out = [self._forward(views[i:i + self.batch_size]).float().cpu().numpy()
               for i in range(0, len(views), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Features of PIL images, float64 array (n, d): :meth:`embed` of the :func:`prepared <prepare>` images."""
        return self.embed([prepare(im, self.sizes) for im in images]).astype(np.float64)


def _file_id(path: Path) -> str:
    return f"{path.name}:{path.stat().st_size}" if path.is_file() else str(path)


class InceptionFeatures(FeatureExtractor):
    """2048-d pool3 features of torch-fidelity's Inception-v3 (TF-compatible)."""

    name = "inception"

    def __init__(self, weights: str | Path | None = None, device: str | None = None,
                 batch_size: int = DEFAULTS.batch_size) -> None:
        super().__init__(device, batch_size)
        self.path = resolve_local(INCEPTION_FILE, weights)
        try:
            self.model = inception_from_state(load_tensors(self.path) if self.path is not None
                                              else _downloaded_inception())
        except UnsafeWeightsError:
            raise
        except Exception as exc:  # offline download or a bad file
            raise MissingWeightsError(missing_message("Inception-v3", "torch-fidelity inception-v3-compat",
                                                      INCEPTION_FILE, exc, "--inception-weights")) from exc
        self.model.to(self.device).eval()

    @property
    def weights_id(self) -> str:
        return f"inception-v3-compat:{_file_id(self.path) if self.path else 'torch-fidelity-download'}"

    def _forward(self, views: Sequence[ViewPixels]) -> torch.Tensor:
        """uint8 (n, 3, H, W) full-size pixels; the model resizes them to 299 itself (views of one size per call)."""
        shapes = dict.fromkeys(v.rgb.shape for v in views)
        if len(shapes) > 1:  # views of several sizes: one call per size, rows put back in order
            out: list[torch.Tensor | None] = [None] * len(views)
            for shape in shapes:
                rows = [i for i, v in enumerate(views) if v.rgb.shape == shape]
                for i, f in zip(rows, self._forward([views[i] for i in rows])):
                    out[i] = f
            return torch.stack(out)
        x = torch.stack([v.rgb for v in views]).to(self.device)
        return self.model(x.permute(0, 3, 1, 2).contiguous())[0]


def _downloaded_inception() -> dict[str, torch.Tensor]:
    """torch-fidelity's Inception-v3 weights from the torch hub cache (downloaded there when missing), read as
    tensors only."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    with refusing_code(f"the cached {INCEPTION_FILE} (in {torch.hub.get_dir()}/checkpoints)"):
        return torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, map_location="cpu", progress=False,
                                                  weights_only=True)


def inception_from_state(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` holding ``state``: the tensors are handed over through an
    in-memory copy that this function serialises itself, so torch-fidelity's loader (``torch.load`` with
    ``weights_only=False``) only ever unpickles plain tensors."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    buf = io.BytesIO()
    torch.save(dict(state), buf)
    buf.seek(0)
    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=buf)


class DinoV2Features(FeatureExtractor):
    """DINOv2 CLS-token features (last hidden state, token 0) from transformers."""

    name = "dinov2"
    sizes = (224,)

    def __init__(self, model: str = DEFAULTS.dinov2_model, device: str | None = None,
                 batch_size: int = DEFAULTS.batch_size, preprocessing: str = "resize224") -> None:
        super().__init__(device, batch_size)
        from transformers import Dinov2Model

        if preprocessing not in DINOV2_PREPROCESSING:
            raise InputError(f"DINOv2 preprocessing {preprocessing!r} not in {DINOV2_PREPROCESSING}")
        self.preprocessing = preprocessing
        self._processor = _eval_py_processor() if preprocessing == "ar3d-r1-eval" else None

        local = resolve_local(model) if not Path(model).exists() else Path(model)
        self.source = str(local) if local is not None else model
        try:
            with refusing_code(f"DINOv2 weights {self.source}"):
                self.model = Dinov2Model.from_pretrained(self.source, weights_only=True)
        except UnsafeWeightsError:
            raise
        except Exception as exc:  # offline hub, missing folder
            raise MissingWeightsError(missing_message("DINOv2", model, model, exc, "--dinov2-model")) from exc
        self.model.to(self.device).eval()
        self.model_id = model

    @property
    def weights_id(self) -> str:
        """``dinov2:<model>``, with ``+<preprocessing>`` unless it is the default."""
        suffix = "" if self.preprocessing == "resize224" else f"+{self.preprocessing}"
        return f"dinov2:{self.model_id}{suffix}"

    def _forward(self, views: Sequence[ViewPixels]) -> torch.Tensor:
        """The 224x224 bicubic resize of each view; ``resize224``: /255 and ImageNet mean/std on the device;
        ``ar3d-r1-eval``: then transformers' PIL processor (on the CPU, image by image)."""
        if self._processor is not None:
            small = [Image.fromarray(v.resized[224].cpu().numpy(), "RGB") for v in views]
            x = self._processor(images=small, return_tensors="pt")["pixel_values"].to(self.device)
        else:
            x = torch.stack([v.resized[224] for v in views]).to(self.device)
            x = normalise(x, IMAGENET_MEAN, IMAGENET_STD)
        return self.model(pixel_values=x).last_hidden_state[:, 0]


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images (n, H, W, 3) -> float32 (n, 3, H, W): ``(x / 255 - mean) / std`` per channel, in that order of
    operations (torchvision's ToTensor then Normalize, so the values are the same to the last bit)."""
    x = x.permute(0, 3, 1, 2).contiguous().float().div(255)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub(m).div(s)


def _eval_py_processor():
    """transformers' PIL DINOv2 processor with facebook/dinov2-base's settings (what eval.py's AutoImageProcessor
    loads, transformers 4.49): resize the shortest edge to 256 (bicubic), centre crop 224, /255, ImageNet mean/std."""
    import transformers

    cls = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor  # 5.x / 4.x name
    return cls(do_resize=True, size={"shortest_edge": 256}, resample=Image.BICUBIC, do_center_crop=True,
               crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
               image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True)


#: Bytes of one storage chunk of a :class:`FeatureCache` (above glibc's largest mmap threshold, 32 MB: each chunk
#: is its own mapping, handed back to the system whole when the cache is dropped).
CHUNK_BYTES = 64 << 20


#: Rows of an array: positions, or a slice when they are consecutive.
Index = np.ndarray | slice


def _run(positions: np.ndarray) -> Index:
    """``positions`` as a slice when they are consecutive and increasing (a copy through a slice is one memcpy)."""
    n = len(positions)
    if n and positions[-1] - positions[0] == n - 1 and (n < 2 or bool((np.diff(positions) == 1).all())):
        return slice(int(positions[0]), int(positions[0]) + n)
    return positions


class FeatureCache:
    """Features of rendered views, stored in ``folder/<extractor>-<weights hash>.npz`` keyed by view id (float32;
    a cache written as float64 by an earlier version reads as float32, the precision the models computed).

    Memory: the rows are held once, in chunks of :data:`CHUNK_BYTES` that :meth:`put` fills in turn (after the
    file's own array); :meth:`save` streams them to the file chunk by chunk and :meth:`get` gathers rows into its
    output (on the host or the device) one chunk at a time: consecutive rows as one slice, others through a
    temporary of at most one chunk's rows. Neither loading, saving nor reading makes a second copy of the features,
    so memory grows by the features alone as prompts grow, and the chunks go back to the system when the cache is
    dropped (one small array per object, as before, stayed in the heap after the cache was dropped: 0.5 GB at 2,490
    prompts, measured on the CPU)."""

    def __init__(self, folder: Path, extractor: FeatureExtractor) -> None:
        digest = hashlib.sha256(extractor.weights_id.encode()).hexdigest()[:10]
        self.path = Path(folder) / f"{extractor.name}-{digest}.npz"
        self.extractor = extractor
        self._blocks: list[np.ndarray] = []  # float32 (capacity, width) each; rows [0, used) hold features
        self._used: list[int] = []  # rows in use in each block (only the last one is partly filled)
        self._starts: list[int] = []  # row number of each block's first row
        self._index: dict[str, int] = {}  # key -> row number
        if self.path.exists():
            with np.load(self.path, allow_pickle=False) as data:
                features = data["features"].astype(np.float32, copy=False)
                if len(features):
                    self._index = dict(zip(data["keys"].tolist(), range(len(features))))
                    self._blocks, self._used, self._starts = [features], [len(features)], [0]
        self._dirty = False

    @property
    def _rows(self) -> int:
        return self._starts[-1] + self._used[-1] if self._blocks else 0

    def _append(self, rows: np.ndarray) -> None:
        """Copy ``rows`` (float32 (n, width)) after the stored ones, into new chunks when the last one is full."""
        done = 0
        while done < len(rows):
            if not self._blocks or self._used[-1] == len(self._blocks[-1]):
                capacity = max(1, CHUNK_BYTES // max(1, rows.shape[1] * 4))
                self._starts.append(self._rows)
                self._blocks.append(np.empty((capacity, rows.shape[1]), np.float32))
                self._used.append(0)
            block, used = self._blocks[-1], self._used[-1]
            n = min(len(rows) - done, len(block) - used)
            block[used:used + n] = rows[done:done + n]
            self._used[-1] += n
            done += n

    def _locate(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, Index, Index]]:
        """For each block holding some of ``rows``: (that block, positions in ``rows``, rows within the block), the
        two as slices when both are runs of consecutive numbers (keys asked for in stored order: one copy each)."""
        block_of = np.searchsorted(self._starts, rows, side="right") - 1
        order = np.argsort(block_of, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(block_of[order])) + 1):
            if len(group):
                b = int(block_of[group[0]])
                yield self._blocks[b], _run(group), _run(rows[group] - self._starts[b])

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in keys if k not in self._index]

    def put(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Store one feature row per key (kept in memory until :meth:`save`); a stored key gets the new row."""
        features = np.asarray(features, np.float32)
        if len(keys) != len(features):
            raise ValueError(f"{len(keys)} keys for {len(features)} feature rows")
        if self._blocks and features.ndim == 2 and features.shape[1] != self._blocks[0].shape[1]:
            raise ValueError(f"{self.path}: rows of width {features.shape[1]}, the cache holds width "
                             f"{self._blocks[0].shape[1]}")
        old = np.array([i for i, k in enumerate(keys) if k in self._index], int)
        for block, pos, within in self._locate(np.array([self._index[keys[i]] for i in old], int)):
            block[within] = features[old[pos]]
        last = {k: i for i, k in enumerate(keys)}  # a key given twice keeps its last row
        new = [i for k, i in last.items() if k not in self._index]
        if new:
            self._index.update(zip((keys[i] for i in new), range(self._rows, self._rows + len(new))))
            self._append(features if len(new) == len(features) else features[new])
        self._dirty = True

    def get(self, keys: Sequence[str], device: str | torch.device | None = None) -> np.ndarray | torch.Tensor:
        """Features of ``keys``, float32 (len(keys), d): a numpy array, or with ``device`` a tensor there, filled
        chunk by chunk (no whole copy on the host first). Every key must be stored (fill them with the image pass,
        :func:`mme3dr.scoring.fill_features`)."""
        missing = self.missing(keys)
        if missing:
            raise KeyError(f"{self.path}: no features for {len(missing)} view(s), e.g. {missing[0]}")
        width = self._blocks[0].shape[1] if keys else 0
        if device is None:
            out = np.empty((len(keys), width), np.float32)
        else:
            out = torch.empty((len(keys), width), dtype=torch.float32, device=device)
        for block, pos, within in self._locate(np.array([self._index[k] for k in keys], int)):
            if device is None:
                out[pos] = block[within]
            else:
                at = pos if isinstance(pos, slice) else torch.from_numpy(pos).to(out.device)
                out[at] = torch.from_numpy(block[within]).to(out.device)
        return out

    def save(self) -> None:
        """Write the cache atomically, when anything was added: an ``.npz`` (``keys``, ``features``) whose
        feature array is written chunk by chunk."""
        if not self._dirty:
            return
        keys = sorted(self._index, key=self._index.__getitem__)  # row order
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (len(keys), self._blocks[0].shape[1] if self._blocks else 0)}
        with atomic_writer(self.path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("keys.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.array(keys), allow_pickle=False)
            with zf.open("features.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array_header_1_0(entry, header)
                for block, used in zip(self._blocks, self._used):
                    entry.write(memoryview(block[:used]).cast("B"))
        self._dirty = False
