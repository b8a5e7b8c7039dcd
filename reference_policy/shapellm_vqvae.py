"""The 3D VQ-VAE of ShapeLLM-Omni / AR3D-R1 (``yejunliang23/3DVQVAE``, file ``3DVQVAE.bin``), written anew.

Facts and where they come from (public code, read for facts only):

* Module tree and parameter names: ``trellis/models/sparse_structure_vqvae.py`` (class ``VQVAE3D``) as vendored in
  ``yangjj007/3D-LLM-eval-main`` (the official ``JAMESYJL/ShapeLLM-Omni`` index holds only its ``.pyc``); the
  official ``app.py`` builds ``VQVAE3D(num_embeddings=8192)`` and ``load_state_dict``-s ``3DVQVAE.bin`` into it.
  Top-level children ``Encoder``, ``Decoder``, ``vq.embeddings`` (8192 x 32). Encoder: ``input_layer`` conv3
  1 -> 32, ``blocks`` = [Res(32) x2, Down(32->128), Res(128) x2, Down(128->512), Res(512) x2], ``middle_block``
  Res(512) x2, ``out_layer`` = [LayerNorm, SiLU, conv3 512 -> 16] whose first 8 channels are the latent (the
  "mean"). Decoder: ``input_layer`` conv3 8 -> 512, ``middle_block`` Res(512) x2, ``blocks`` = [Res(512) x2,
  Up(512->128), Res(128) x2, Up(128->32), Res(32) x2], ``out_layer`` = [LayerNorm, SiLU, conv3 32 -> 1].
  A residual block is ``norm1, conv1 (3^3), norm2, conv2 (3^3)`` with pre-activation SiLU and an identity skip;
  norms are channel LayerNorms (``weight``/``bias`` of size C, eps 1e-5, TRELLIS ``ChannelLayerNorm32``).
  Down is a 2^3 stride-2 conv (``conv``); Up is a conv3 to 8x channels then a 3D pixel shuffle (TRELLIS
  ``trellis/modules/spatial.py``: channel index = c*8 + 4*dx + 2*dy + dz).
* Token regrouping (same file, ``Encode``/``Decode``): the latent [B, 8, 16, 16, 16] is made channels-last
  [B, 16, 16, 16, 8] and its memory is read as [B, 1024, 32]: token ``t`` holds 4 consecutive z cells x 8 channels
  at ``x = t // 64, y = (t // 4) % 16, z = 4 * (t % 4) ... + 3``. Quantisation is the Euclidean-nearest code.
* Voxel frame (``app.py``): ``occupancy[i, j, k]`` is the voxel whose centre is ``((i, j, k) + 0.5) / 64 - 0.5``
  in (x, y, z); decoder logits > 0 are occupied. The grid is z-up (TRELLIS frame): ``load_vertices`` rotates a
  y-up GLB by +90 degrees about x before voxelising, and the point-cloud viewer uses ``up = z``. The occupancy
  is a surface shell (open3d ``VoxelGrid.create_from_triangle_mesh_within_bounds``), not a solid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from torch import nn

from mme3dr.weights import MissingWeightsError, load_tensors, missing_message, resolve_local

#: Hub repository and file of the released weights.
VQVAE_REPO = "yejunliang23/3DVQVAE"
VQVAE_FILE = "3DVQVAE.bin"
#: Channels of the released model (encoder order; the decoder runs them reversed).
FULL_CHANNELS: tuple[int, int, int] = (32, 128, 512)
#: A model of the same architecture that runs in well under a second on a CPU (tests).
SMALL_CHANNELS: tuple[int, int, int] = (8, 16, 32)
RESOLUTION = 64
N_TOKENS = 1024
CODEBOOK_SIZE = 8192
CODE_DIM = 32
LATENT_CHANNELS = 8
LATENT_RES = 16


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a [B, C, ...] tensor, computed in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float().movedim(1, -1)
        return super().forward(h).movedim(-1, 1).to(x.dtype)


class ResBlock3d(nn.Module):
    """Pre-activation residual block: norm, SiLU, conv, norm, SiLU, conv, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = ChannelLayerNorm(channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Downsample3d(nn.Module):
    """Halve the resolution with a 2^3 stride-2 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample3d(nn.Module):
    """Double the resolution: a 3^3 convolution to 8x the channels, then a 3D pixel shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        b, c8, d, hh, w = h.shape
        h = h.view(b, c8 // 8, 2, 2, 2, d, hh, w)  # channel = c*8 + 4*dx + 2*dy + dz
        return h.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, c8 // 8, 2 * d, 2 * hh, 2 * w)


def _head(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(ChannelLayerNorm(channels), nn.SiLU(), nn.Conv3d(channels, out_channels, 3, padding=1))


class Encoder(nn.Module):
    """64^3 occupancy -> [B, 8, 16, 16, 16] latent (the first half of ``out_layer``'s 16 channels)."""

    def __init__(self, channels: tuple[int, int, int]) -> None:
        super().__init__()
        self.input_layer = nn.Conv3d(1, channels[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, ch in enumerate(channels):
            blocks += [ResBlock3d(ch), ResBlock3d(ch)]
            if i < len(channels) - 1:
                blocks.append(Downsample3d(ch, channels[i + 1]))
        self.blocks = nn.ModuleList(blocks)
        self.middle_block = nn.Sequential(ResBlock3d(channels[-1]), ResBlock3d(channels[-1]))
        self.out_layer = _head(channels[-1], 2 * LATENT_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(x)
        for block in self.blocks:
            h = block(h)
        return self.out_layer(self.middle_block(h))[:, :LATENT_CHANNELS]


class Decoder(nn.Module):
    """[B, 8, 16, 16, 16] latent -> [B, 1, 64, 64, 64] occupancy logits; ``channels`` in decoder order."""

    def __init__(self, channels: tuple[int, int, int]) -> None:
        super().__init__()
        self.input_layer = nn.Conv3d(LATENT_CHANNELS, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(ResBlock3d(channels[0]), ResBlock3d(channels[0]))
        blocks: list[nn.Module] = []
        for i, ch in enumerate(channels):
            blocks += [ResBlock3d(ch), ResBlock3d(ch)]
            if i < len(channels) - 1:
                blocks.append(Upsample3d(ch, channels[i + 1]))
        self.blocks = nn.ModuleList(blocks)
        self.out_layer = _head(channels[-1], 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.middle_block(self.input_layer(z))
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h)


class Quantizer(nn.Module):
    """The codebook (``vq.embeddings.weight``, 8192 x 32) and nearest-code lookup."""

    def __init__(self, num_embeddings: int = CODEBOOK_SIZE, dim: int = CODE_DIM) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(num_embeddings, dim)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the Euclidean-nearest code for every row of ``z`` [..., dim]."""
        flat = z.reshape(-1, z.shape[-1]).float()
        ids = torch.cdist(flat, self.embeddings.weight.float()).argmin(dim=1)
        return ids.view(z.shape[:-1])


class ShapeVQVAE(nn.Module):
    """The released 3D VQ-VAE: ``state_dict()`` keys and shapes equal those of ``3DVQVAE.bin``.

    ``channels`` is the encoder's (32, 128, 512) for the released model; the decoder mirrors it. The latent width
    (8), codebook (8192 x 32) and the 64^3 <-> 1024-token layout are fixed by the token format.
    """

    def __init__(self, channels: tuple[int, int, int] = FULL_CHANNELS, num_embeddings: int = CODEBOOK_SIZE) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.Encoder = Encoder(self.channels)
        self.Decoder = Decoder(self.channels[::-1])
        self.vq = Quantizer(num_embeddings, CODE_DIM)

    @property
    def num_embeddings(self) -> int:
        return self.vq.embeddings.num_embeddings

    @torch.no_grad()
    def encode(self, occupancy: torch.Tensor) -> torch.Tensor:
        """[B, 64, 64, 64] occupancy (bool or 0/1) -> [B, 1024] token ids in [0, num_embeddings)."""
        if tuple(occupancy.shape[1:]) != (RESOLUTION,) * 3:
            raise ValueError(f"occupancy must be [B, 64, 64, 64], got {tuple(occupancy.shape)}")
        x = occupancy.to(self.vq.embeddings.weight.device, torch.float32)[:, None]
        z = self.Encoder(x).permute(0, 2, 3, 4, 1).contiguous()  # [B, 16, 16, 16, 8]
        return self.vq.nearest(z.view(z.shape[0], N_TOKENS, CODE_DIM))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, 1024] token ids -> [B, 64, 64, 64] occupancy logits (> 0 means occupied)."""
        if ids.dim() != 2 or ids.shape[1] != N_TOKENS:
            raise ValueError(f"token ids must be [B, {N_TOKENS}], got {tuple(ids.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings:
            raise ValueError(f"token ids must lie in [0, {self.num_embeddings})")
        codes = self.vq.embeddings(ids.to(self.vq.embeddings.weight.device).long())  # [B, 1024, 32]
        z = codes.reshape(ids.shape[0], LATENT_RES, LATENT_RES, LATENT_RES, LATENT_CHANNELS)
        return self.Decoder(z.permute(0, 4, 1, 2, 3).contiguous())[:, 0]


def channels_of(state_dict: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """The encoder channels of a checkpoint, read from its input conv and its two downsampling convs."""
    return (state_dict["Encoder.input_layer.weight"].shape[0], state_dict["Encoder.blocks.2.conv.weight"].shape[0],
            state_dict["Encoder.blocks.5.conv.weight"].shape[0])


def find_vqvae(path_or_dir: str | Path | None = None) -> Path:
    """``3DVQVAE.bin`` from an explicit file or folder, else ``$MME3DR_WEIGHTS``, else the hub cache/network.

    Under ``$MME3DR_WEIGHTS`` both ``3DVQVAE.bin`` and ``yejunliang23--3DVQVAE/3DVQVAE.bin`` are found.
    Raises :class:`MissingWeightsError` naming the file and how to provide it.
    """
    def in_folder(p: Path) -> Path | None:
        return p / VQVAE_FILE if p.is_dir() and (p / VQVAE_FILE).is_file() else (p if p.is_file() else None)

    if path_or_dir is not None:
        path = resolve_local(VQVAE_FILE, path_or_dir)  # raises when the explicit path does not exist
        found = in_folder(path) if path is not None else None
        if found is None:
            raise MissingWeightsError(missing_message("3D VQ-VAE", f"{VQVAE_REPO}/{VQVAE_FILE}", VQVAE_FILE,
                                                      FileNotFoundError(f"no {VQVAE_FILE} in {path}"), "--model-arg vqvae="))
        return found
    for name in (VQVAE_REPO, VQVAE_FILE):
        local = resolve_local(name)
        found = in_folder(local) if local is not None else None
        if found is not None:
            return found
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=VQVAE_REPO, filename=VQVAE_FILE))
    except Exception as exc:  # offline, not cached, no access: all mean "provide the file yourself"
        raise MissingWeightsError(missing_message("3D VQ-VAE", f"{VQVAE_REPO}/{VQVAE_FILE}", VQVAE_FILE, exc,
                                                  "--model-arg vqvae=")) from exc


def load_vqvae(path_or_dir: str | Path | None = None, device: str | torch.device = "cpu") -> ShapeVQVAE:
    """Load ``3DVQVAE.bin`` (see :func:`find_vqvae`) strictly into a :class:`ShapeVQVAE` in eval mode.

    The channel widths and codebook size are read from the checkpoint, so smaller models of the same
    architecture load the same way.
    """
    path = find_vqvae(path_or_dir)
    state = load_tensors(path)  # tensors only: a crafted pickle is refused, never run
    model = ShapeVQVAE(channels_of(state), num_embeddings=state["vq.embeddings.weight"].shape[0])
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def voxelize(mesh: trimesh.Trimesh, res: int = RESOLUTION) -> np.ndarray:
    """Surface occupancy [res]^3 (bool) of a mesh in [-0.5, 0.5]^3, index (i, j, k) = (x, y, z).

    Like the released ``app.py`` (open3d surface voxelisation), only voxels the surface passes through are set:
    the mesh is subdivided until every edge is shorter than half a voxel and its vertices are binned.
    """
    pitch = 1.0 / res
    verts, _ = trimesh.remesh.subdivide_to_size(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces),
                                                max_edge=pitch / 2, max_iter=32)
    idx = np.clip(np.floor((verts + 0.5) * res).astype(np.int64), 0, res - 1)
    occ = np.zeros((res,) * 3, bool)
    occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return occ


def occupancy_to_mesh(occupancy: np.ndarray | torch.Tensor) -> trimesh.Trimesh:
    """Marching cubes (scikit-image, level 0.5) of a [res]^3 occupancy, back into [-0.5, 0.5]^3 (z-up grid frame).

    Voxel (i, j, k) is the cube of side 1/res centred at ((i, j, k) + 0.5) / res - 0.5; the grid is zero-padded so
    the surface is closed. Raises ``ValueError`` for an empty grid.
    """
    from skimage.measure import marching_cubes

    occ = occupancy.detach().cpu().numpy() if isinstance(occupancy, torch.Tensor) else np.asarray(occupancy)
    occ = occ.astype(bool)
    if not occ.any():
        raise ValueError("the occupancy grid is empty: no voxel is occupied")
    res = occ.shape[0]
    padded = np.pad(occ.astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(padded, level=0.5)
    verts = (verts - 1 + 0.5) / res - 0.5
    return trimesh.Trimesh(verts, faces[:, ::-1], process=True)
