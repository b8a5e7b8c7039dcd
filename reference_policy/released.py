"""Released mesh-token LLMs (AR3D-R1, ShapeLLM-Omni) as mme3dr generators: prompt -> mesh tokens -> VQ-VAE -> GLB.

Facts and sources:

* Checkpoints (``../shared/DESIGN.md`` section 5): AR3D-R1 ``IvanTang/3DGen-R1`` and ShapeLLM-Omni
  ``yejunliang23/ShapeLLM-7B-omni``, both ``Qwen2_5_VLForConditionalGeneration`` with the added tokens
  ``<mesh-start>``, ``<mesh0>`` ... ``<mesh8191>``, ``<mesh-end>``; a shape is 1024 mesh tokens; sampling top_k 8192,
  top_p 0.7, temperature 0.7, max_new_tokens 2048; prompt "Please generate a 3D mesh based on the prompt I
  provided: {prompt}". (The ShapeLLM-Omni demo, ``JAMESYJL/ShapeLLM-Omni`` ``app.py`` ``add_text_prefix``, says
  "a 3D asset" instead of "a 3D mesh"; ``prompt_template`` selects either.)
* ``app.py`` seeds with ``torch.manual_seed(seed)``, applies the chat template with ``add_generation_prompt=True``
  and stops at ``eos_token_id=[tokenizer.eos_token_id, 159858]``; 159858 = 151665 + 8193 is ``<mesh-end>`` in the
  Qwen2.5 vocabulary, so generation also stops at ``<mesh-end>`` here (looked up by name, not by number).
* ``app.py`` ``token_to_mesh`` pads a short sequence by repeating the last code; here a sequence that is not
  exactly 1024 codes is an error result for that prompt unless ``pad_short=True`` (then short sequences are
  padded the released way; longer ones are still errors, as the released ``view(bs, 16, 16, 16, 8)`` fails too).
  A missing ``<mesh-end>`` is accepted when the 1024 codes are complete (``metadata["mesh_end"]`` records it).
* Frame: the decoded grid is z-up (see :mod:`reference_policy.shapellm_vqvae`). The released pipeline's GLB
  (TRELLIS ``postprocessing_utils.to_glb``) turns it y-up with (x, y, z) -> (x, z, -y); the GLB written here does
  the same, so results declare ``up_axis = "+y"``. The texturer hook sees the mesh in the z-up grid frame.

The official pipeline textures the voxels with TRELLIS-text-xlarge; here the output is geometry only unless a
``texturer="module:attr"`` callable ``(mesh, prompt) -> mesh`` is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

from mme3dr.adapters.base import GenerationRequest, GenerationResult, Generator, check_device
from mme3dr.errors import InputError
from mme3dr.registry import import_target
from mme3dr.weights import (MissingWeightsError, UnsafeWeightsError, missing_message, refusing_code,
                            resolve_local)
from reference_policy.shapellm_vqvae import (CODEBOOK_SIZE, N_TOKENS, ShapeVQVAE, find_vqvae, load_vqvae,
                                             occupancy_to_mesh)

AR3D_R1_MODEL = "IvanTang/3DGen-R1"
SHAPELLM_OMNI_MODEL = "yejunliang23/ShapeLLM-7B-omni"
PROMPT_TEMPLATE = "Please generate a 3D mesh based on the prompt I provided: {prompt}"
MESH_START, MESH_END = "<mesh-start>", "<mesh-end>"
#: The vocabulary a checkpoint must carry, in the released order.
MESH_TOKENS: tuple[str, ...] = (MESH_START, *(f"<mesh{i}>" for i in range(CODEBOOK_SIZE)), MESH_END)
#: (x, y, z) z-up grid frame -> y-up GLB frame, as TRELLIS ``to_glb`` does: (x, y, z) -> (x, z, -y).
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])

_CODE = re.compile(r"<mesh(\d+)>")


class MeshTokenError(ValueError):
    """The generated text does not hold one decodable shape (1024 codes after ``<mesh-start>``)."""


def parse_mesh_tokens(text: str, pad_short: bool = False) -> tuple[list[int], bool]:
    """The 1024 codes between ``<mesh-start>`` and ``<mesh-end>`` (or the end of ``text``), and whether the end
    marker was present. Anything else between the markers is ignored; a code >= 8192 is an error.

    ``pad_short`` repeats the last code up to 1024 like the released ``token_to_mesh``; otherwise a count other
    than 1024 raises :class:`MeshTokenError`, as does a missing ``<mesh-start>``.
    """
    start = text.find(MESH_START)
    if start < 0:
        raise MeshTokenError(f"no {MESH_START} in the generated text")
    body = text[start + len(MESH_START):]
    end = body.find(MESH_END)
    has_end = end >= 0
    codes = [int(m) for m in _CODE.findall(body[:end] if has_end else body)]
    if any(c >= CODEBOOK_SIZE for c in codes):
        raise MeshTokenError(f"mesh code out of range [0, {CODEBOOK_SIZE}): {max(codes)}")
    if pad_short and 0 < len(codes) < N_TOKENS:
        codes += [codes[-1]] * (N_TOKENS - len(codes))
    if len(codes) != N_TOKENS:
        where = "before " + MESH_END if has_end else f"and no {MESH_END}"
        raise MeshTokenError(f"{len(codes)} mesh codes {where}; a shape needs exactly {N_TOKENS}")
    return codes, has_end


class ReleasedMeshLLM(Generator):
    """A released Qwen2.5-VL mesh-token checkpoint plus the 3D VQ-VAE, writing one GLB per prompt.

    ``model`` is a hub id or a local folder (``$MME3DR_WEIGHTS/org--name`` is preferred for a hub id);
    ``vqvae`` is ``3DVQVAE.bin`` or its folder (default: ``$MME3DR_WEIGHTS``, then the hub cache). Weights load
    on the first :meth:`generate_one` (or :meth:`load`); missing weights raise :class:`MissingWeightsError`.
    ``device`` defaults to CUDA when available (bfloat16 there, float32 on the CPU).
    """

    up_axis = "+y"
    batch_size = 1
    #: The hub id used when no ``model`` is given (set by the registered subclasses).
    default_model: str | None = None

    def __init__(self, model: str | None = None, vqvae: str | None = None, device: str | None = None,
                 max_new_tokens: int = 2048, temperature: float = 0.7, top_p: float = 0.7, top_k: int = 8192,
                 texturer: str | None = None, prompt_template: str = PROMPT_TEMPLATE, pad_short: bool = False) -> None:
        if model is None and self.default_model is None:
            raise InputError("pass --model-arg model=PATH_OR_HUB_ID (the mesh-token checkpoint)")
        if temperature <= 0 or not 0 < top_p <= 1 or top_k < 1 or max_new_tokens < 1:
            raise InputError(f"sampling settings out of range: temperature {temperature} (> 0), top_p {top_p} "
                             f"(0, 1], top_k {top_k} (>= 1), max_new_tokens {max_new_tokens} (>= 1)")
        self.model = model or self.default_model
        self.vqvae_path = vqvae
        self.device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.prompt_template = prompt_template
        self.pad_short = pad_short
        self.texturer: Callable[[trimesh.Trimesh, str], trimesh.Trimesh] | None = (
            import_target(texturer) if texturer else None)  # type: ignore[assignment]
        self.texturer_name = texturer
        self._processor: Any = None
        self._net: Any = None
        self._vqvae: ShapeVQVAE | None = None

    def _source(self) -> str:
        """The local folder of ``model`` (an explicit path must exist; ``$MME3DR_WEIGHTS`` copies of a hub id are
        preferred), else the hub id."""
        path = Path(self.model).expanduser()
        explicit = path if path.exists() or path.is_absolute() or self.model.startswith(".") else None
        return str(resolve_local(self.model, explicit) or self.model)

    def check(self) -> None:
        """Find both weights without loading them: a missing local path, or (offline) a hub id that is not in the
        hub cache, raises :class:`MissingWeightsError` saying how to provide it."""
        from huggingface_hub import constants, try_to_load_from_cache

        source = self._source()
        if not Path(source).exists() and constants.HF_HUB_OFFLINE and \
                not isinstance(try_to_load_from_cache(source, "config.json"), str):
            raise MissingWeightsError(missing_message(
                "mesh-token LLM", self.model, self.model, FileNotFoundError(
                    f"{source} is neither a local folder nor in the hub cache, and HF_HUB_OFFLINE is set"),
                "--model-arg model="))
        find_vqvae(self.vqvae_path)

    def load(self) -> None:
        """Load the language model, its processor and the VQ-VAE now."""
        if self._net is not None:
            return
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        source = self._source()
        dtype = torch.bfloat16 if str(self.device).startswith("cuda") else torch.float32
        try:  # a checkpoint's own Python code is never run, and its weights are read as tensors only
            with refusing_code(f"mesh-token LLM weights {source}"):
                processor = AutoProcessor.from_pretrained(source, trust_remote_code=False)
                net = Qwen2_5_VLForConditionalGeneration.from_pretrained(source, dtype=dtype, weights_only=True)
        except UnsafeWeightsError:
            raise
        except (OSError, ValueError) as exc:  # not found, offline, not a model folder
            raise MissingWeightsError(missing_message("mesh-token LLM", self.model, self.model, exc,
                                                      "--model-arg model=")) from exc
        missing = [t for t in (MESH_START, "<mesh0>", f"<mesh{CODEBOOK_SIZE - 1}>", MESH_END)
                   if processor.tokenizer.convert_tokens_to_ids(t) in (None, processor.tokenizer.unk_token_id)]
        if missing:
            raise InputError(f"{self.model} has no mesh tokens ({', '.join(missing)}): not a mesh-token checkpoint")
        self._vqvae = self._vqvae or load_vqvae(self.vqvae_path, self.device)
        self._processor, self._net = processor, net.to(self.device).eval()

    def prompt_text(self, prompt: str) -> str:
        """The chat-formatted model input for one prompt (user turn, then the assistant header)."""
        message = [{"role": "user", "content": [{"type": "text", "text": self.prompt_template.format(prompt=prompt)}]}]
        return self._processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)

    def sampling_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the ``generate`` call: the released sampling settings, stopping at ``<mesh-end>``."""
        tok = self._processor.tokenizer
        eos = [tok.eos_token_id, tok.convert_tokens_to_ids(MESH_END)]
        return dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                    max_new_tokens=self.max_new_tokens, eos_token_id=[e for e in eos if e is not None])

    def sample_text(self, prompt: str, seed: int) -> str:
        """The generated text (special tokens dropped, mesh tokens kept) for one prompt and seed."""
        inputs = self._processor(text=[self.prompt_text(prompt)], return_tensors="pt").to(self._net.device)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self._net.generate(**inputs, **self.sampling_kwargs())
        return self._processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def tokens_to_mesh(self, codes: list[int]) -> trimesh.Trimesh:
        """1024 codes -> occupancy (logits > 0) -> marching-cubes mesh in the z-up grid frame, [-0.5, 0.5]^3."""
        if self._vqvae is None:
            self._vqvae = load_vqvae(self.vqvae_path, self.device)
        logits = self._vqvae.decode(torch.tensor([codes]))
        return occupancy_to_mesh(logits[0] > 0)

    def generate_one(self, request: GenerationRequest) -> GenerationResult:
        self.load()
        text = self.sample_text(request.prompt, request.seed)
        try:
            codes, has_end = parse_mesh_tokens(text, self.pad_short)
        except MeshTokenError as exc:
            return GenerationResult.failure(request, f"MeshTokenError: {exc}", generated_text=text[:4000])
        mesh = self.tokens_to_mesh(codes)
        if self.texturer is not None:
            mesh = self.texturer(mesh, request.prompt)
        mesh.apply_transform(Z_UP_TO_Y_UP)
        path = request.output_dir / "mesh.glb"
        mesh.export(path)
        return GenerationResult(request.prompt_id, asset_path=path, up_axis=self.up_axis, metadata={
            "model": self.model, "n_codes": len(codes), "mesh_end": has_end, "n_faces": len(mesh.faces),
            "texturer": self.texturer_name})


class AR3DR1(ReleasedMeshLLM):
    """AR3D-R1 (one-step GRPO checkpoint ``IvanTang/3DGen-R1``) with the released sampling settings."""

    default_model = AR3D_R1_MODEL


class ShapeLLMOmni(ReleasedMeshLLM):
    """ShapeLLM-Omni 7B (``yejunliang23/ShapeLLM-7B-omni``) with the released sampling settings."""

    default_model = SHAPELLM_OMNI_MODEL
