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
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mme3dr.defaults import DEFAULTS
from mme3dr.errors import InputError
from mme3dr.jsonl import atomic_write_bytes
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


class FeatureCache:
    """Features of rendered views, stored in ``folder/<extractor>-<weights hash>.npz`` keyed by view id (float32;
    a cache written as float64 by an earlier version reads as float32, the precision the models computed)."""

    def __init__(self, folder: Path, extractor: FeatureExtractor) -> None:
        digest = hashlib.sha256(extractor.weights_id.encode()).hexdigest()[:10]
        self.path = Path(folder) / f"{extractor.name}-{digest}.npz"
        self.extractor = extractor
        self._store: dict[str, np.ndarray] = {}
        if self.path.exists():
            with np.load(self.path, allow_pickle=False) as data:
                self._store = dict(zip(data["keys"].tolist(), data["features"].astype(np.float32)))
        self._dirty = False

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in keys if k not in self._store]

    def put(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Store one feature row per key (kept in memory until :meth:`save`)."""
        self._store.update(zip(keys, np.asarray(features, np.float32)))
        self._dirty = True

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Features of ``keys``, float32 (len(keys), d); every key must be stored (fill them with the image pass,
        :func:`mme3dr.scoring.fill_features`)."""
        missing = self.missing(keys)
        if missing:
            raise KeyError(f"{self.path}: no features for {len(missing)} view(s), e.g. {missing[0]}")
        return np.stack([self._store[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)

    def save(self) -> None:
        """Write the cache atomically, when anything was added."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._store)
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(keys), features=np.stack([self._store[k] for k in keys]))
        atomic_write_bytes(self.path, buf.getbuffer())  # a view of the buffer: no second copy of the features
        self._dirty = False
