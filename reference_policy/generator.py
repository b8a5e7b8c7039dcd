"""The bundled reference policy as an mme3dr generator: ``mme3dr generate --model reference``.

Per batch of requests: both policy steps for every prompt at once (:meth:`ReferencePolicy.generate`, seed of the
request, the sampling settings of :mod:`reference_policy.evaluate`), the step-2 palette grid decoded by the
VQ-VAE, then :func:`surface_mesh` (marching cubes with vertex colours) written as ``mesh.glb``. The GLB is y-up
as glTF prescribes (grid z-up turned with (x, y, z) -> (x, z, -y)), so results declare ``up_axis = "+y"``.

The checkpoint is the Hi-GRPO one committed in ``reference_policy/checkpoints/hi-grpo``; ``checkpoint=sft`` loads the
supervised one it started from, ``checkpoint=DIR`` another folder of the same layout (:mod:`reference_policy.bundled`;
model card ``data_cards/reference_policy.md``). It runs on the CPU by default and downloads nothing.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from mme3dr.adapters.base import GenerationRequest, GenerationResult, Generator, check_device
from mme3dr.errors import InputError
from mme3dr.weights import MissingWeightsError
from reference_policy import bundled
from reference_policy.evaluate import TEMPERATURE, TOP_K
from reference_policy.policy import ReferencePolicy, Rollout
from reference_policy.released import Z_UP_TO_Y_UP
from reference_policy.shapellm_vqvae import occupancy_to_mesh
from reference_policy.world.grid import PALETTE

_RGBA = np.array([(0, 0, 0, 255), *((*rgb, 255) for rgb in PALETTE.values())], dtype=np.uint8)


def surface_mesh(grid: np.ndarray) -> trimesh.Trimesh:
    """Marching-cubes surface of the occupied voxels (:func:`occupancy_to_mesh`, z-up, in [-0.5, 0.5]^3) with
    each vertex coloured by the palette colour of the occupied voxel whose centre is nearest to it.

    Marching cubes on a 0/1 grid at level 0.5 puts a vertex at the midpoint of each lattice edge between an
    occupied and an empty voxel centre, so that voxel is the occupied end of its edge, half a voxel away and
    unique (the few vertices the Lewiner variant adds at cell centres take one of the occupied corners of the
    cell). Raises ``ValueError`` for an empty grid."""
    mesh = occupancy_to_mesh(grid > 0)
    occupied = np.argwhere(grid > 0)
    _, nearest = cKDTree(occupied).query((mesh.vertices + 0.5) * grid.shape[0] - 0.5)
    mesh.visual.vertex_colors = _RGBA[grid[tuple(occupied[nearest].T)]]
    return mesh


class ReferenceGenerator(Generator):
    """The bundled reference policy: text -> plan -> 3D tokens -> coloured mesh, on the CPU with no downloads.

    Options: ``checkpoint`` (``hi-grpo``, the default; ``sft``; or a folder of the same layout), ``device``, ``temperature``, ``top_k`` and
    ``batch_size`` (prompts decoded together); see the module docstring.
    """

    up_axis = "+y"

    def __init__(self, checkpoint: str | None = None, device: str = "cpu", temperature: float = TEMPERATURE,
                 top_k: int = TOP_K, batch_size: int = 32) -> None:
        if temperature <= 0:
            raise InputError(f"reference model: temperature must be > 0, got {temperature}")
        if top_k < 0 or batch_size < 1:
            raise InputError(f"reference model: top_k must be >= 0 (0 = no truncation) and batch_size >= 1, got "
                             f"top_k={top_k}, batch_size={batch_size}")
        self.checkpoint = bundled.resolve(checkpoint)
        self.device = check_device(device)
        self.temperature, self.top_k, self.batch_size = temperature, top_k, batch_size
        self._policy: ReferencePolicy | None = None

    def check(self) -> None:
        """A folder without a checkpoint raises :class:`MissingWeightsError` saying how to provide one."""
        if not (self.checkpoint / "policy.json").is_file():
            raise MissingWeightsError(
                f"no reference-policy checkpoint in {self.checkpoint} (policy.json missing). The bundled ones "
                f"({', '.join(bundled.CHECKPOINTS)}) live in reference_policy/checkpoints of the source tree; "
                f"reinstall mme3dr from a full checkout, or "
                f"train one with `python -m reference_policy.pretrain --out DIR --device cuda` and pass "
                f"--model-arg checkpoint=DIR.")

    def load(self) -> ReferencePolicy:
        """The policy, loaded on first use (after :meth:`check`)."""
        if self._policy is None:
            self.check()
            self._policy = ReferencePolicy.from_pretrained(self.checkpoint, self.device)
        return self._policy

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Decode the batch together; a failure of the whole batch is recorded by the runner, one of a single
        prompt (empty grid, mesh export) here."""
        start = time.perf_counter()
        rollouts = self.load().generate([r.prompt for r in requests], [r.seed for r in requests], self.temperature,
                                        self.top_k, self.batch_size)
        share = (time.perf_counter() - start) / len(requests)
        results = []
        for req, rollout in zip(requests, rollouts):
            try:
                results.append(self._write(req, rollout, share))
            except Exception as exc:  # one prompt's failure must not stop the others
                results.append(GenerationResult.failure(req, f"{type(exc).__name__}: {exc}", share,
                                                        traceback=traceback.format_exc(limit=8)))
        return results

    def _write(self, request: GenerationRequest, rollout: Rollout, seconds: float) -> GenerationResult:
        start = time.perf_counter()
        meta = {"plan": rollout.step1.plan, "detail_plan": rollout.step2.plan,
                "occupied_voxels": int((rollout.grid > 0).sum()), "checkpoint": str(self.checkpoint)}
        if not (rollout.grid > 0).any():
            return GenerationResult.failure(request, "the policy decoded an empty grid (no occupied voxel)", seconds,
                                            **meta)
        mesh = surface_mesh(rollout.grid)
        mesh.apply_transform(Z_UP_TO_Y_UP)
        path = request.output_dir / "mesh.glb"
        mesh.export(path)
        return GenerationResult(request.prompt_id, asset_path=path, up_axis=self.up_axis,
                                seconds=seconds + time.perf_counter() - start,
                                metadata={**meta, "n_faces": len(mesh.faces)})
