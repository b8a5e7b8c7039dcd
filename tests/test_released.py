"""The released-checkpoint side of the reference policy: the 3D VQ-VAE and the mesh-token LLM generator.

Everything is built here: the released key table is written out below, the VQ-VAE is a small random one saved to a
file, and the LLM is a tiny random Qwen2.5-VL carrying the 8194 mesh tokens whose sampling is forced to emit a shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from tiny_qwen import build_tiny_qwen25_vl
from transformers import LogitsProcessor, LogitsProcessorList

from mme3dr.adapters.base import GenerationRequest
from mme3dr.assets import load_asset
from mme3dr.render.presets import get_preset
from mme3dr.render.renderer import get_renderer
from mme3dr.weights import MissingWeightsError
from reference_policy.released import (
    MESH_END,
    MESH_START,
    MESH_TOKENS,
    MeshTokenError,
    ReleasedMeshLLM,
    AR3DR1,
    parse_mesh_tokens,
    ShapeLLMOmni,
)
from reference_policy.shapellm_vqvae import (
    SMALL_CHANNELS,
    ShapeVQVAE,
    load_vqvae,
    occupancy_to_mesh,
    voxelize,
)


def _res(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    """A TRELLIS ResBlock3d with equal in/out channels: two channel LayerNorms and two 3^3 convs, no skip conv."""
    return {f"{prefix}.norm1.weight": (c,), f"{prefix}.norm1.bias": (c,),
            f"{prefix}.conv1.weight": (c, c, 3, 3, 3), f"{prefix}.conv1.bias": (c,),
            f"{prefix}.norm2.weight": (c,), f"{prefix}.norm2.bias": (c,),
            f"{prefix}.conv2.weight": (c, c, 3, 3, 3), f"{prefix}.conv2.bias": (c,)}


#: ``3DVQVAE.bin`` as ``VQVAE3D(num_embeddings=8192)`` of trellis/models/sparse_structure_vqvae.py defines it.
RELEASED_KEYS: dict[str, tuple[int, ...]] = {
    "Encoder.input_layer.weight": (32, 1, 3, 3, 3), "Encoder.input_layer.bias": (32,),
    **_res("Encoder.blocks.0", 32), **_res("Encoder.blocks.1", 32),
    "Encoder.blocks.2.conv.weight": (128, 32, 2, 2, 2), "Encoder.blocks.2.conv.bias": (128,),
    **_res("Encoder.blocks.3", 128), **_res("Encoder.blocks.4", 128),
    "Encoder.blocks.5.conv.weight": (512, 128, 2, 2, 2), "Encoder.blocks.5.conv.bias": (512,),
    **_res("Encoder.blocks.6", 512), **_res("Encoder.blocks.7", 512),
    **_res("Encoder.middle_block.0", 512), **_res("Encoder.middle_block.1", 512),
    "Encoder.out_layer.0.weight": (512,), "Encoder.out_layer.0.bias": (512,),
    "Encoder.out_layer.2.weight": (16, 512, 3, 3, 3), "Encoder.out_layer.2.bias": (16,),
    "Decoder.input_layer.weight": (512, 8, 3, 3, 3), "Decoder.input_layer.bias": (512,),
    **_res("Decoder.middle_block.0", 512), **_res("Decoder.middle_block.1", 512),
    **_res("Decoder.blocks.0", 512), **_res("Decoder.blocks.1", 512),
    "Decoder.blocks.2.conv.weight": (1024, 512, 3, 3, 3), "Decoder.blocks.2.conv.bias": (1024,),
    **_res("Decoder.blocks.3", 128), **_res("Decoder.blocks.4", 128),
    "Decoder.blocks.5.conv.weight": (256, 128, 3, 3, 3), "Decoder.blocks.5.conv.bias": (256,),
    **_res("Decoder.blocks.6", 32), **_res("Decoder.blocks.7", 32),
    "Decoder.out_layer.0.weight": (32,), "Decoder.out_layer.0.bias": (32,),
    "Decoder.out_layer.2.weight": (1, 32, 3, 3, 3), "Decoder.out_layer.2.bias": (1,),
    "vq.embeddings.weight": (8192, 32),
}


def test_released_state_dict_loads_strictly():
    with torch.device("meta"):
        model = ShapeVQVAE()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == RELEASED_KEYS
    state = {k: torch.empty(s, device="meta", dtype=torch.float16) for k, s in RELEASED_KEYS.items()}
    model.load_state_dict(state, strict=True, assign=True)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict({**state, "vq.extra": torch.empty(1, device="meta")}, strict=True, assign=True)


@pytest.fixture(scope="module")
def small_vqvae(tmp_path_factory) -> Path:
    """A random small VQ-VAE whose output bias is shifted so that about 3% of the voxels decode as occupied."""
    torch.manual_seed(0)
    model = ShapeVQVAE(SMALL_CHANNELS).eval()
    logits = model.decode(torch.randint(0, 8192, (1, 1024)))
    with torch.no_grad():
        model.Decoder.out_layer[2].bias -= torch.quantile(logits.flatten()[::7], 0.97)
    path = tmp_path_factory.mktemp("vqvae") / "3DVQVAE.bin"
    torch.save(model.state_dict(), path)
    return path


def test_vqvae_round_trip_shapes(small_vqvae):
    model = load_vqvae(small_vqvae)  # channels read from the checkpoint
    assert model.channels == SMALL_CHANNELS and not model.training
    assert load_vqvae(small_vqvae.parent).channels == SMALL_CHANNELS  # a folder holding 3DVQVAE.bin
    occ = torch.from_numpy(voxelize(trimesh.creation.box(extents=(0.4, 0.6, 0.8))))[None].repeat(2, 1, 1, 1)
    ids = model.encode(occ)
    assert ids.shape == (2, 1024) and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < 8192 and torch.equal(ids[0], ids[1])
    logits = model.decode(ids)
    assert logits.shape == (2, 64, 64, 64) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="1024"):
        model.decode(ids[:, :1000])


def test_voxelize_and_marching_cubes_on_a_box():
    occ = voxelize(trimesh.creation.box(extents=(0.4, 0.6, 0.8)))
    assert occ.shape == (64, 64, 64) and occ.dtype == bool
    lo, hi = np.argwhere(occ).min(0), np.argwhere(occ).max(0)  # axis order is (x, y, z)
    assert np.array_equal(lo, [19, 12, 6]) and np.array_equal(hi, [44, 51, 57])
    assert not occ[32, 32, 32]  # a surface shell, like the released voxelisation
    mesh = occupancy_to_mesh(occ)
    assert mesh.is_watertight and mesh.volume > 0
    np.testing.assert_allclose(mesh.bounds, [[-0.2, -0.3, -0.4], [0.2, 0.3, 0.4]], atol=1.5 / 64)
    with pytest.raises(ValueError, match="empty"):
        occupancy_to_mesh(np.zeros((64, 64, 64), bool))


def test_parse_mesh_tokens():
    codes = list(range(1024))
    body = "".join(f"<mesh{c}>" for c in codes)
    assert parse_mesh_tokens(f"ok {MESH_START}{body}{MESH_END} trailing") == (codes, True)
    assert parse_mesh_tokens(f"{MESH_START}{body}") == (codes, False)  # ran out before <mesh-end>
    with pytest.raises(MeshTokenError, match="no <mesh-start>"):
        parse_mesh_tokens(body)
    with pytest.raises(MeshTokenError, match="1023 mesh codes"):
        parse_mesh_tokens(f"{MESH_START}{body[:-len('<mesh1023>')]}{MESH_END}")
    with pytest.raises(MeshTokenError, match="1025"):
        parse_mesh_tokens(f"{MESH_START}{body}<mesh5>{MESH_END}")
    with pytest.raises(MeshTokenError, match="out of range"):
        parse_mesh_tokens(f"{MESH_START}<mesh8192>{MESH_END}")
    padded, _ = parse_mesh_tokens(f"{MESH_START}<mesh3><mesh7>{MESH_END}", pad_short=True)
    assert padded == [3, 7] + [7] * 1022


def test_missing_weights_name_what_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("MME3DR_WEIGHTS", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="3DVQVAE.bin"):
        load_vqvae()
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_vqvae(tmp_path / "nowhere.bin")
    with pytest.raises(MissingWeightsError, match="3DVQVAE.bin"):
        load_vqvae(tmp_path)  # a folder without the file
    with pytest.raises(MissingWeightsError, match="IvanTang/3DGen-R1"):
        AR3DR1(vqvae=str(tmp_path)).load()
    assert ShapeLLMOmni().model == "yejunliang23/ShapeLLM-7B-omni"


def test_missing_checkpoint_stops_the_run_before_recording_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("MME3DR_WEIGHTS", str(tmp_path))
    from mme3dr.data import load_benchmark
    from mme3dr.generation import generate_run

    with pytest.raises(MissingWeightsError, match="IvanTang/3DGen-R1"):
        generate_run(AR3DR1(vqvae=str(tmp_path)), load_benchmark(limit=3), tmp_path / "RUN", progress=False)
    log = tmp_path / "RUN" / "generations.jsonl"
    assert not log.exists() or log.read_text().strip() == ""


class ForceTokens(LogitsProcessor):
    """Leave only the next token of ``ids`` (after the prompt) possible."""

    def __init__(self, ids: list[int], prompt_len: int) -> None:
        self.ids, self.prompt_len = ids, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[min(step, len(self.ids) - 1)]] = 0.0
        return forced


class ForcedShape(ReleasedMeshLLM):
    """The real generator; only its ``generate`` call gets a logits processor that spells out ``text``."""

    forced_text = ""

    def sample_text(self, prompt: str, seed: int) -> str:
        self._prompt_len = len(self._processor(text=[self.prompt_text(prompt)])["input_ids"][0])
        return super().sample_text(prompt, seed)

    def sampling_kwargs(self) -> dict:
        ids = self._processor.tokenizer.convert_tokens_to_ids(split_tokens(self.forced_text))
        force = LogitsProcessorList([ForceTokens(ids, self._prompt_len)])
        return {**super().sampling_kwargs(), "logits_processor": force}


def split_tokens(text: str) -> list[str]:
    """``"<a><b>"`` -> ``["<a>", "<b>"]``."""
    return [t + ">" for t in text.split(">") if t]


RECEIVED: list[tuple[trimesh.Trimesh, str]] = []


def keep(mesh: trimesh.Trimesh, prompt: str) -> trimesh.Trimesh:
    """A test texturer: records what it was given and returns it unchanged."""
    RECEIVED.append((mesh.copy(), prompt))
    return mesh


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> Path:
    return build_tiny_qwen25_vl(tmp_path_factory.mktemp("llm"), extra_tokens=list(MESH_TOKENS))


def test_generate_end_to_end_with_a_tiny_qwen(tiny_llm, small_vqvae, tmp_path):
    codes = [int(c) for c in torch.randint(0, 8192, (1024,), generator=torch.Generator().manual_seed(1))]
    gen = ForcedShape(str(tiny_llm), vqvae=str(small_vqvae), device="cpu", texturer="test_released:keep")
    gen.forced_text = MESH_START + "".join(f"<mesh{c}>" for c in codes) + MESH_END
    req = GenerationRequest("p1", "a tall tower", "building", 7, tmp_path)
    [res] = gen.generate([req])
    assert res.ok, res.error
    assert res.asset_path == tmp_path / "mesh.glb" and res.up_axis == "+y"
    assert res.metadata["n_codes"] == 1024 and res.metadata["mesh_end"]

    decoded, prompt = RECEIVED[-1]  # the texturer hook saw the decoded voxels, in the z-up grid frame
    expected = occupancy_to_mesh(load_vqvae(small_vqvae).decode(torch.tensor([codes]))[0] > 0)
    assert prompt == "a tall tower" and len(decoded.faces) == len(expected.faces) > 0
    # The declared up axis brings the GLB back to the grid frame exactly (canonical frame is z-up, like the grid).
    def centroid(m: trimesh.Trimesh) -> np.ndarray:
        return np.average(m.triangles_center, axis=0, weights=m.area_faces)

    raw = load_asset(res.asset_path, up_axis=res.up_axis, normalise=False).concatenated()
    np.testing.assert_allclose(raw.bounds, expected.bounds, atol=1e-5)
    np.testing.assert_allclose(centroid(raw), centroid(expected), atol=1e-5)
    c = centroid(expected)
    assert np.abs(c[[0, 2, 1]] * [1, 1, -1] - c).max() > 1e-3  # a wrong up axis would be caught

    asset = load_asset(res.asset_path, up_axis=res.up_axis)
    out = get_renderer().render(asset, get_preset("canonical").with_overrides(resolution=64, n_views=2))
    assert out.rgba.shape == (2, 64, 64, 4) and all((out.rgba[i, ..., 3] > 0).sum() > 50 for i in range(2))


def test_random_model_without_mesh_tokens_gives_an_error_result(tiny_llm, small_vqvae, tmp_path):
    gen = ReleasedMeshLLM(str(tiny_llm), vqvae=str(small_vqvae), device="cpu", max_new_tokens=6)
    req = GenerationRequest("p1", "a cup", "kitchen", 0, tmp_path)
    [res] = gen.generate([req])
    assert not res.ok and "MeshTokenError" in res.error and "generated_text" in res.metadata
