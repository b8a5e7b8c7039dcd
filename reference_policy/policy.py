"""The two-step text -> plan -> 3D-token policy (a small ``Qwen2ForCausalLM`` over :mod:`reference_policy.tokenizer`).

Sequence formats (ids of :mod:`reference_policy.tokenizer`; ``c`` = 64 coarse, ``f`` = 512 fine mesh tokens):

- step 1: ``<bos> prompt`` (context) + ``<plan> semantic plan </plan> <step1> <mesh-start> c*64 <mesh-end>``
- step 2: step-1 context + step-1 segment (context) + ``<step2> <plan> detail plan </plan> <mesh-start> f*512
  <mesh-end> <eos>``

The semantic plan is the world sample's ``plan``; the detail plan (:func:`detail_plan`) lists every part as
``type count colour`` (``"leg 4 black ; top 1 brown"``), the low-level visual facts step 2 must get right.

Constrained decoding: a segment follows a fixed grammar (:data:`STEP1_GRAMMAR`, :data:`STEP2_GRAMMAR`) of forced
tokens, a free plan (word ids or ``</plan>``, at most ``max_plan`` words, then ``</plan>`` is forced) and a mesh
span (exactly ``n`` ids of the right codebook). At every position all other logits are set to ``-inf`` before the
softmax. Log-probabilities are those of this constrained distribution at the sampling ``temperature``
(``log_softmax(mask(logits) / T)``; top-k truncation is not part of them), so forced tokens have log-prob 0 and
:meth:`ReferencePolicy.sequence_logprobs` reproduces them from the ids alone (the PPO ratio needs exactly this).

Folder layout of :meth:`ReferencePolicy.save_pretrained`: ``model/`` (transformers ``save_pretrained``,
safetensors), ``tokenizer/``, ``vqvae/`` and ``policy.json`` (``max_plan``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from reference_policy.tokenizer import (BOS, END_PLAN, EOS, MESH_END, MESH_START, PAD, PLAN, STEP1, STEP2,
                                        TextTokenizer)
from reference_policy.vqvae import N_COARSE_TOKENS, N_FINE_TOKENS, ColourVQVAE
from reference_policy.world.sample import Part

MAX_PROMPT = 64

#: Grammar items: ("force", token id), ("plan",), ("mesh", "coarse" | "fine", count).
Item = tuple
STEP1_GRAMMAR: tuple[Item, ...] = (("force", PLAN), ("plan",), ("force", STEP1), ("force", MESH_START),
                                   ("mesh", "coarse", N_COARSE_TOKENS), ("force", MESH_END))
STEP2_GRAMMAR: tuple[Item, ...] = (("force", STEP2), ("force", PLAN), ("plan",), ("force", MESH_START),
                                   ("mesh", "fine", N_FINE_TOKENS), ("force", MESH_END), ("force", EOS))


def detail_plan(parts: tuple[Part, ...]) -> str:
    """``"leg 4 black ; top 1 brown"``: type, count (digits) and colour of every part, in drawing order."""
    return " ; ".join(f"{p.type} {p.count} {p.colour}" for p in parts)


@dataclass
class StepRollout:
    """One generated segment: ``ids`` continue ``context`` and ``logprobs[i]`` is the constrained log-prob of
    ``ids[i]``; ``sampled[i]`` is False for forced tokens (log-prob 0); ``plan`` is the plan text; ``codes`` the
    codebook indices of the mesh span."""

    context: list[int]
    ids: list[int]
    logprobs: list[float]
    sampled: list[bool]
    plan: str
    codes: np.ndarray


@dataclass
class Rollout:
    """Both steps for one prompt; ``coarse_grid`` is step 1 decoded alone, ``grid`` the final step-2 grid."""

    prompt: str
    step1: StepRollout
    step2: StepRollout
    coarse_grid: np.ndarray
    grid: np.ndarray


class _Grammar:
    """Walks a segment grammar: :meth:`allowed` gives the mask of the next position, :meth:`advance` consumes."""

    def __init__(self, items: tuple[Item, ...], tok: TextTokenizer, max_plan: int, device: torch.device) -> None:
        self.items, self.max_plan, self.i, self.n = items, max_plan, 0, 0
        v = tok.vocab_size
        self.plan_mask = torch.zeros(v, dtype=torch.bool, device=device)
        self.plan_mask[tok.word_offset:] = True
        self.plan_mask[END_PLAN] = True
        self.end_mask = torch.zeros(v, dtype=torch.bool, device=device)
        self.end_mask[END_PLAN] = True
        self.mesh = {}
        for level, lo, k in (("coarse", tok.coarse_offset, tok.n_coarse), ("fine", tok.fine_offset, tok.n_fine)):
            m = torch.zeros(v, dtype=torch.bool, device=device)
            m[lo:lo + k] = True
            self.mesh[level] = m
        self.forced = {}
        for item in items:
            if item[0] == "force":
                m = torch.zeros(v, dtype=torch.bool, device=device)
                m[item[1]] = True
                self.forced[item[1]] = m

    @property
    def done(self) -> bool:
        return self.i == len(self.items)

    def allowed(self) -> torch.Tensor:
        item = self.items[self.i]
        if item[0] == "force":
            return self.forced[item[1]]
        if item[0] == "plan":
            return self.end_mask if self.n >= self.max_plan else self.plan_mask
        return self.mesh[item[1]]

    def advance(self, token: int) -> None:
        item = self.items[self.i]
        self.n += 1
        if item[0] == "force" or (item[0] == "plan" and token == END_PLAN) or (item[0] == "mesh" and self.n == item[2]):
            self.i, self.n = self.i + 1, 0


class ReferencePolicy:
    """Model + tokenizer + VQ-VAE; see the module docstring for formats and log-probabilities."""

    def __init__(self, model: Qwen2ForCausalLM, tokenizer: TextTokenizer, vqvae: ColourVQVAE,
                 max_plan: int = 96) -> None:
        self.model, self.tokenizer, self.vqvae, self.max_plan = model, tokenizer, vqvae, max_plan

    @staticmethod
    def build_model(tokenizer: TextTokenizer, hidden: int = 256, layers: int = 4, heads: int = 4,
                    max_positions: int = 1024, seed: int = 0) -> Qwen2ForCausalLM:
        """A fresh ``Qwen2ForCausalLM`` (MLP width 2 x hidden, tied embeddings) over the tokenizer's vocabulary."""
        torch.manual_seed(seed)
        config = Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                             max_position_embeddings=max_positions, tie_word_embeddings=True,
                             pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
        return Qwen2ForCausalLM(config).eval()

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ----- sequences -------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        """``<bos>`` + the first :data:`MAX_PROMPT` word ids of the prompt."""
        return [BOS, *self.tokenizer.encode(prompt)[:MAX_PROMPT]]

    def training_ids(self, prompt: str, plan: str, detail: str, coarse: np.ndarray, fine: np.ndarray
                     ) -> tuple[list[int], int]:
        """Full teacher-forcing sequence (step 1 and step 2) and the index where the prompt ends."""
        tok = self.tokenizer
        ctx = self.prompt_ids(prompt)
        seg1 = [PLAN, *tok.encode(plan)[:self.max_plan], END_PLAN, STEP1, MESH_START, *tok.coarse_ids(coarse),
                MESH_END]
        seg2 = [STEP2, PLAN, *tok.encode(detail)[:self.max_plan], END_PLAN, MESH_START, *tok.fine_ids(fine),
                MESH_END, EOS]
        return ctx + seg1 + seg2, len(ctx)

    # ----- generation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _sample_segment(self, context: list[int], grammar: tuple[Item, ...], gen: torch.Generator,
                        temperature: float, top_k: int) -> StepRollout:
        g = _Grammar(grammar, self.tokenizer, self.max_plan, self.device)
        out = self.model(input_ids=torch.tensor([context], device=self.device), use_cache=True)
        cache, logits = out.past_key_values, out.logits[0, -1]
        ids, lps, sampled = [], [], []
        while not g.done:
            mask = g.allowed()
            logp = torch.log_softmax(logits.float().masked_fill(~mask, float("-inf")) / temperature, -1)
            if int(mask.sum()) == 1:
                token = int(mask.nonzero()[0, 0])
            else:
                k = min(top_k, int(mask.sum())) if top_k > 0 else int(mask.sum())
                vals, idx = logp.topk(k)
                token = int(idx[torch.multinomial(vals.exp(), 1, generator=gen)])
            ids.append(token)
            lps.append(float(logp[token]))
            sampled.append(int(mask.sum()) > 1)
            g.advance(token)
            if not g.done:
                out = self.model(input_ids=torch.tensor([[token]], device=self.device), past_key_values=cache,
                                 use_cache=True)
                cache, logits = out.past_key_values, out.logits[0, -1]
        return StepRollout(context, ids, lps, sampled, self._plan_text(ids), self._codes(ids))

    def _plan_text(self, ids: list[int]) -> str:
        start = ids.index(PLAN) + 1
        return self.tokenizer.decode(ids[start:ids.index(END_PLAN, start)])

    def _codes(self, ids: list[int]) -> np.ndarray:
        start = ids.index(MESH_START) + 1
        span = np.asarray(ids[start:ids.index(MESH_END, start)], dtype=np.int64)
        tok = self.tokenizer
        return span - (tok.coarse_offset if span[0] < tok.fine_offset else tok.fine_offset)

    def generate_step1(self, prompt: str, seed: int = 0, temperature: float = 1.0, top_k: int = 0) -> StepRollout:
        """Step 1 for ``prompt`` (``top_k <= 0``: no truncation), seeded by ``torch.Generator(seed)``."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return self._sample_segment(self.prompt_ids(prompt), STEP1_GRAMMAR, gen, temperature, top_k)

    def generate_step2(self, step1: StepRollout, seed: int = 0, temperature: float = 1.0,
                       top_k: int = 0) -> StepRollout:
        """Step 2 conditioned on a step-1 rollout (G step-2 samples may share one step 1)."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return self._sample_segment(step1.context + step1.ids, STEP2_GRAMMAR, gen, temperature, top_k)

    def generate(self, prompt: str, seed: int = 0, temperature: float = 1.0, top_k: int = 0) -> Rollout:
        """Both steps (step 2 seeded with ``seed + 1``) and the decoded grids."""
        self.model.eval()
        s1 = self.generate_step1(prompt, seed, temperature, top_k)
        s2 = self.generate_step2(s1, seed + 1, temperature, top_k)
        return Rollout(prompt, s1, s2, self.vqvae.decode_coarse(s1.codes), self.vqvae.decode(s1.codes, s2.codes))

    # ----- log-probabilities -----------------------------------------------------------------------------------
    def sequence_logprobs(self, context_ids: list[int], generated_ids: list[int], temperature: float = 1.0,
                          step: int | None = None) -> torch.Tensor:
        """Constrained log-probs ``float32[len(generated_ids)]`` of a segment under the current weights (with
        gradients). ``step`` (1 or 2) picks the grammar; by default it is read from the segment's first id."""
        if step is None:
            step = 2 if generated_ids[0] == STEP2 else 1
        g = _Grammar(STEP1_GRAMMAR if step == 1 else STEP2_GRAMMAR, self.tokenizer, self.max_plan, self.device)
        masks = []
        for t in generated_ids:
            masks.append(g.allowed())
            g.advance(t)
        ids = torch.tensor([context_ids + generated_ids], device=self.device)
        logits = self.model(input_ids=ids).logits[0, len(context_ids) - 1:-1].float()
        logp = torch.log_softmax(logits.masked_fill(~torch.stack(masks), float("-inf")) / temperature, -1)
        return logp.gather(1, torch.tensor(generated_ids, device=self.device)[:, None])[:, 0]

    # ----- persistence -----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.model.save_pretrained(folder / "model")
        self.tokenizer.save(folder / "tokenizer")
        self.vqvae.save(folder / "vqvae")
        (folder / "policy.json").write_text(json.dumps({"max_plan": self.max_plan}))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> ReferencePolicy:
        folder = Path(folder)
        model = Qwen2ForCausalLM.from_pretrained(folder / "model").to(device).eval()
        meta = json.loads((folder / "policy.json").read_text())
        return cls(model, TextTokenizer.load(folder / "tokenizer"), ColourVQVAE.load(folder / "vqvae").to(device),
                   meta["max_plan"])
