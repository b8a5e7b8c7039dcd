"""Two-level 3D VQ-VAE of the world's coloured 32^3 palette grids (step 1 = coarse codes, step 2 = fine codes).

Input: a grid ``uint8[32, 32, 32]`` of palette indices (0 = empty, 1..14 = colours) as a one-hot volume with
``C = 15`` channels. Output: per-voxel logits over the same 15 classes; the decoded grid is their argmax.

Architecture (``w`` = :attr:`VQConfig.width`, ``D`` = :attr:`VQConfig.code_dim`):

- shared encoder: patch embedding ``conv4/s4 (C->2w) -> 8^3`` (each 4^3 voxel block is one vector), two residual
  blocks -> ``h8``. Patch (non-overlapping) layers at full resolution keep the model fast enough for a CPU: strided
  overlapping 3D convolutions at 32^3 cost ~20x more time for no gain on these blocky objects;
- coarse level: ``conv4/s2 (2w->2w) -> 4^3``, ``conv1 -> D`` -> nearest code of the coarse codebook
  (``Kc`` entries): **64 coarse tokens** (4^3);
- fine level: ``conv1`` on ``concat(h8, up2(q_coarse)) -> D`` -> nearest code of the fine codebook (``Kf`` entries):
  **512 fine tokens** (8^3). The fine codes see the chosen coarse codes, so they encode what the coarse level
  misses (a refinement of geometry and colour given step 1);
- decoder: ``conv3 (2D->2w)`` on ``concat(up2(q_coarse), q_fine)``, two residual blocks, patch un-embedding
  ``convT4/s4 (2w->C) -> 32^3`` logits. :meth:`ColourVQVAE.decode_coarse` runs the same decoder with
  ``q_fine = 0`` (the decoder is trained on both inputs), so step 1 alone already gives a grid.

Token order: codes are flattened in C order of ``[x, y, z]`` (x slowest), the grid's own axis order.

Quantisation: nearest codebook vector by squared distance, straight-through estimator ``q = z + sg(e - z)``.
Loss (per batch) = ``CE_w(full) + coarse_weight * CE_w(coarse only) + sum_levels [ ||sg(z) - e||^2 +
beta * ||z - sg(e)||^2 ]`` where ``CE_w`` is cross entropy with class weight 1 for "empty" and
``occupied_weight`` for the colours (only ~4 % of voxels are occupied). Codebook vectors that no vector of the
batch chose are re-seeded from random encoder outputs of the batch during training (:meth:`ColourVQVAE.loss`,
``restart_dead=True``), which keeps the small codebooks in use.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from reference_policy.world.grid import COLOURS, GRID

N_CLASSES = len(COLOURS) + 1
COARSE_RES = GRID // 8  # 4
FINE_RES = GRID // 4  # 8
N_COARSE_TOKENS = COARSE_RES ** 3  # 64
N_FINE_TOKENS = FINE_RES ** 3  # 512


@dataclass(frozen=True)
class VQConfig:
    """Sizes and loss weights of :class:`ColourVQVAE`."""

    width: int = 32
    code_dim: int = 16
    n_coarse: int = 64
    n_fine: int = 256
    beta: float = 0.25
    occupied_weight: float = 4.0
    coarse_weight: float = 0.5


@dataclass
class VQOutput:
    """Result of :meth:`ColourVQVAE.loss`: the total loss and its parts (floats for logging)."""

    loss: torch.Tensor
    recon: float
    recon_coarse: float
    vq: float


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv3d(c, c, 3, padding=1), nn.ReLU(), nn.Conv3d(c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Codebook(nn.Module):
    """``K`` vectors of dimension ``D``; :meth:`forward` quantises a ``[B, D, r, r, r]`` volume."""

    def __init__(self, k: int, d: int) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.randn(k, d) * 0.1)

    def ids(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code per position: ``[B, D, r, r, r] -> int64[B, r^3]`` (C order)."""
        flat = z.flatten(2).transpose(1, 2)  # B, N, D
        dist = flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ self.embed.t() + self.embed.pow(2).sum(-1)
        return dist.argmin(-1)

    def lookup(self, ids: torch.Tensor, res: int) -> torch.Tensor:
        """``int64[B, res^3] -> [B, D, res, res, res]``."""
        return self.embed[ids].transpose(1, 2).reshape(ids.shape[0], -1, res, res, res)

    def forward(self, z: torch.Tensor, beta: float, restart_dead: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(straight-through quantised volume, codebook + commitment loss)."""
        ids = self.ids(z)
        if restart_dead and self.training:
            self._restart(z, ids)
            ids = self.ids(z)
        q = self.lookup(ids, z.shape[-1])
        loss = F.mse_loss(q, z.detach()) + beta * F.mse_loss(z, q.detach())
        return z + (q - z).detach(), loss

    @torch.no_grad()
    def _restart(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        dead = torch.ones(self.embed.shape[0], dtype=torch.bool, device=z.device)
        dead[ids.flatten()] = False
        n = int(dead.sum())
        if n:
            flat = z.flatten(2).transpose(1, 2).reshape(-1, z.shape[1])
            pick = torch.randint(len(flat), (n,), device=z.device)
            self.embed[dead] = flat[pick]


class ColourVQVAE(nn.Module):
    """The two-level VQ-VAE of the module docstring."""

    def __init__(self, config: VQConfig = VQConfig()) -> None:
        super().__init__()
        self.config = c = config
        w, d = c.width, c.code_dim
        self.enc = nn.Sequential(nn.Conv3d(N_CLASSES, 2 * w, 4, 4), _Res(2 * w), _Res(2 * w))
        self.to_coarse = nn.Sequential(nn.ReLU(), nn.Conv3d(2 * w, 2 * w, 4, 2, 1), nn.ReLU(), nn.Conv3d(2 * w, d, 1))
        self.to_fine = nn.Conv3d(2 * w + d, d, 1)
        self.coarse_book = Codebook(c.n_coarse, d)
        self.fine_book = Codebook(c.n_fine, d)
        self.dec = nn.Sequential(nn.Conv3d(2 * d, 2 * w, 3, padding=1), _Res(2 * w), _Res(2 * w), nn.ReLU(),
                                 nn.ConvTranspose3d(2 * w, N_CLASSES, 4, 4))

    @property
    def device(self) -> torch.device:
        return self.coarse_book.embed.device

    def _onehot(self, grids: torch.Tensor) -> torch.Tensor:
        return F.one_hot(grids.long(), N_CLASSES).permute(0, 4, 1, 2, 3).float()

    def _latents(self, grids: torch.Tensor, restart_dead: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantised coarse [B,D,4^3], quantised fine [B,D,8^3], vq loss) with straight-through gradients."""
        h = self.enc(self._onehot(grids))
        qc, lc = self.coarse_book(self.to_coarse(h), self.config.beta, restart_dead)
        zf = self.to_fine(torch.cat([h, _up(qc)], 1))
        qf, lf = self.fine_book(zf, self.config.beta, restart_dead)
        return qc, qf, lc + lf

    def logits(self, qc: torch.Tensor, qf: torch.Tensor | None) -> torch.Tensor:
        """Decoder: ``[B, 15, 32, 32, 32]`` logits from quantised volumes (``qf = None``: coarse only)."""
        up = _up(qc)
        return self.dec(torch.cat([up, torch.zeros_like(up) if qf is None else qf], 1))

    def loss(self, grids: torch.Tensor, restart_dead: bool = True) -> VQOutput:
        """Training loss of the module docstring on ``uint8/int64[B, 32, 32, 32]`` grids."""
        qc, qf, vq = self._latents(grids, restart_dead)
        weight = torch.full((N_CLASSES,), self.config.occupied_weight, device=grids.device)
        weight[0] = 1.0
        target = grids.long()
        full = F.cross_entropy(self.logits(qc, qf), target, weight=weight)
        coarse = F.cross_entropy(self.logits(qc, None), target, weight=weight)
        total = full + self.config.coarse_weight * coarse + vq
        return VQOutput(total, full.item(), coarse.item(), vq.item())

    @torch.no_grad()
    def encode(self, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[32,32,32]`` or ``[B,32,32,32]`` grid -> (coarse ids ``[.., 64]``, fine ids ``[.., 512]``), int64."""
        g = torch.as_tensor(np.asarray(grid), device=self.device)
        single = g.ndim == 3
        h = self.enc(self._onehot(g[None] if single else g))
        ci = self.coarse_book.ids(self.to_coarse(h))
        qc = self.coarse_book.lookup(ci, COARSE_RES)
        fi = self.fine_book.ids(self.to_fine(torch.cat([h, _up(qc)], 1)))
        ci, fi = ci.cpu().numpy(), fi.cpu().numpy()
        return (ci[0], fi[0]) if single else (ci, fi)

    @torch.no_grad()
    def decode(self, coarse_ids: np.ndarray, fine_ids: np.ndarray) -> np.ndarray:
        """Ids ``[.., 64]`` and ``[.., 512]`` -> palette grid ``uint8[.., 32, 32, 32]``."""
        ci, single = self._ids(coarse_ids)
        fi, _ = self._ids(fine_ids)
        out = self.logits(self.coarse_book.lookup(ci, COARSE_RES), self.fine_book.lookup(fi, FINE_RES))
        return _argmax(out, single)

    @torch.no_grad()
    def decode_coarse(self, coarse_ids: np.ndarray) -> np.ndarray:
        """Coarse ids ``[.., 64]`` alone -> palette grid ``uint8[.., 32, 32, 32]`` (step-1 preview)."""
        ci, single = self._ids(coarse_ids)
        return _argmax(self.logits(self.coarse_book.lookup(ci, COARSE_RES), None), single)

    def reconstruct(self, grids: np.ndarray, batch: int = 256) -> np.ndarray:
        """``decode(encode(grids))`` for ``[N, 32, 32, 32]`` grids, ``batch`` at a time (bounded memory)."""
        return np.concatenate([self.decode(*self.encode(grids[i:i + batch])) for i in range(0, len(grids), batch)])

    def _ids(self, ids: np.ndarray) -> tuple[torch.Tensor, bool]:
        t = torch.as_tensor(np.asarray(ids), dtype=torch.long, device=self.device)
        return (t[None], True) if t.ndim == 1 else (t, False)

    def save(self, folder: str | Path) -> None:
        """``vqvae.safetensors`` + ``vqvae_config.json`` in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(folder / "vqvae.safetensors"))
        (folder / "vqvae_config.json").write_text(json.dumps(asdict(self.config)))

    @classmethod
    def load(cls, folder: str | Path) -> ColourVQVAE:
        folder = Path(folder)
        model = cls(VQConfig(**json.loads((folder / "vqvae_config.json").read_text())))
        model.load_state_dict(load_file(str(folder / "vqvae.safetensors")))
        return model.eval()


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _argmax(logits: torch.Tensor, single: bool) -> np.ndarray:
    g = logits.argmax(1).to(torch.uint8).cpu().numpy()
    return g[0] if single else g


def reconstruction_iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Occupancy IoU ``|P ∩ T| / |P ∪ T|`` with ``P = pred > 0``, ``T = true > 0``; 1.0 when both are empty."""
    p, t = np.asarray(pred) > 0, np.asarray(true) > 0
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def colour_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of voxels occupied in both grids whose palette index agrees; 0.0 when they share no voxel."""
    pred, true = np.asarray(pred), np.asarray(true)
    both = (pred > 0) & (true > 0)
    n = int(both.sum())
    return 0.0 if n == 0 else int((pred[both] == true[both]).sum()) / n
