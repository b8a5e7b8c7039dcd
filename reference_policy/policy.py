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

Batching: :meth:`ReferencePolicy.generate` decodes many prompts at once (left-padded contexts, explicit position
ids, one static KV cache); each row samples with its own seed, so a prompt's rollout does not depend on the batch
it is in (tested against batches of one).

Folder layout of :meth:`ReferencePolicy.save_pretrained`: ``model/`` (transformers ``save_pretrained``,
safetensors), ``tokenizer/``, ``vqvae/`` and ``policy.json`` (``max_plan``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, StaticCache

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


class _Masks:
    """The boolean vocabulary masks a grammar needs (built once per call, shared by every row of a batch)."""

    def __init__(self, tok: TextTokenizer, device: torch.device) -> None:
        v = tok.vocab_size

        def only(*ranges: tuple[int, int]) -> torch.Tensor:
            m = torch.zeros(v, dtype=torch.bool, device=device)
            for lo, hi in ranges:
                m[lo:hi] = True
            return m

        self.plan = only((tok.word_offset, v), (END_PLAN, END_PLAN + 1))
        self.token = {t: only((t, t + 1)) for t in range(tok.coarse_offset)}  # specials: forced tokens and <pad>
        self.mesh = {"coarse": only((tok.coarse_offset, tok.fine_offset)),
                     "fine": only((tok.fine_offset, tok.word_offset))}


class _Grammar:
    """Walks a segment grammar: :meth:`allowed` gives the mask of the next position, :meth:`advance` consumes."""

    def __init__(self, items: tuple[Item, ...], masks: _Masks, max_plan: int) -> None:
        self.items, self.masks, self.max_plan, self.i, self.n = items, masks, max_plan, 0, 0

    @property
    def done(self) -> bool:
        return self.i == len(self.items)

    def allowed(self) -> torch.Tensor:
        """Mask of the next position; ``<pad>`` alone once the segment is complete."""
        if self.done:
            return self.masks.token[PAD]
        item = self.items[self.i]
        if item[0] == "force":
            return self.masks.token[item[1]]
        if item[0] == "plan":
            return self.masks.token[END_PLAN] if self.n >= self.max_plan else self.masks.plan
        return self.masks.mesh[item[1]]

    def advance(self, token: int) -> None:
        item = self.items[self.i]
        self.n += 1
        if item[0] == "force" or (item[0] == "plan" and token == END_PLAN) or (item[0] == "mesh" and self.n == item[2]):
            self.i, self.n = self.i + 1, 0


def max_segment_length(items: tuple[Item, ...], max_plan: int) -> int:
    """Longest segment a grammar allows (a plan is at most ``max_plan`` words plus ``</plan>``)."""
    return sum(1 if it[0] == "force" else max_plan + 1 if it[0] == "plan" else it[2] for it in items)


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

    def to(self, device: str | torch.device) -> ReferencePolicy:
        """Move the model and the VQ-VAE; returns ``self``."""
        self.model.to(device)
        self.vqvae.to(device)
        return self

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
    def _sample_segments(self, contexts: list[list[int]], grammar: tuple[Item, ...], seeds: list[int],
                         temperature: float, top_k: int) -> list[StepRollout]:
        """One segment per context, decoded together (left-padded, one KV cache).

        Sampling is Gumbel-max on the constrained log-probs restricted to their top ``k``: row ``i`` draws its
        noise ``u ~ U(0, 1)[max_len, vocab]`` from ``torch.Generator().manual_seed(seeds[i])`` up front and takes
        ``argmax(logp + g)`` with ``g = -log(-log u)``, so a row's sample depends on its own seed only, not on the
        batch it is in.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use top_k=1 for greedy decoding), got {temperature}")
        dev, b = self.device, len(contexts)
        masks = _Masks(self.tokenizer, dev)
        grammars = [_Grammar(grammar, masks, self.max_plan) for _ in contexts]
        steps = max_segment_length(grammar, self.max_plan)
        u = torch.stack([torch.rand(steps, self.tokenizer.vocab_size, generator=torch.Generator().manual_seed(s))
                         for s in seeds]).to(dev)
        gumbel = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-7)))
        width = max(len(c) for c in contexts)
        ids = torch.full((b, width), PAD, dtype=torch.long)
        attention = torch.zeros((b, width), dtype=torch.long)
        for i, c in enumerate(contexts):
            ids[i, width - len(c):] = torch.tensor(c)
            attention[i, width - len(c):] = 1
        ids, attention = ids.to(dev), attention.to(dev)
        position = (attention.cumsum(-1) - 1).clamp(min=0)
        # A static cache: DynamicCache concatenates every layer's keys and values at every step, which makes CPU
        # decoding of ~700 tokens about 3x slower.
        cache = StaticCache(config=self.model.config, max_cache_len=width + steps)
        out = self.model(input_ids=ids, attention_mask=attention, position_ids=position, past_key_values=cache,
                         cache_position=torch.arange(width, device=dev), use_cache=True, logits_to_keep=1)
        logits, position = out.logits[:, -1], position[:, -1:]
        rows: list[tuple[list[int], list[float], list[bool]]] = [([], [], []) for _ in contexts]
        for t in range(steps):
            allowed = torch.stack([g.allowed() for g in grammars])
            logp = torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")) / temperature, -1)
            scores = logp
            if top_k > 0:
                kth = logp.topk(min(top_k, logp.shape[-1]), dim=-1).values[:, -1:]
                scores = logp.masked_fill(logp < kth, float("-inf"))
            token = (scores + gumbel[:, t]).argmax(-1)
            chosen = logp.gather(1, token[:, None])[:, 0]
            for i, (tk, lp, n) in enumerate(zip(token.tolist(), chosen.tolist(), allowed.sum(-1).tolist())):
                if not grammars[i].done:
                    rows[i][0].append(tk)
                    rows[i][1].append(lp)
                    rows[i][2].append(n > 1)
                    grammars[i].advance(tk)
            if all(g.done for g in grammars):
                break
            attention = torch.cat([attention, attention.new_ones((b, 1))], 1)
            position = position + 1
            out = self.model(input_ids=token[:, None], attention_mask=attention, position_ids=position,
                             past_key_values=cache, cache_position=torch.tensor([width + t], device=dev),
                             use_cache=True)
            logits = out.logits[:, -1]
        return [StepRollout(c, r[0], r[1], r[2], self._plan_text(r[0]), self._codes(r[0]))
                for c, r in zip(contexts, rows)]

    def _plan_text(self, ids: list[int]) -> str:
        start = ids.index(PLAN) + 1
        return self.tokenizer.decode(ids[start:ids.index(END_PLAN, start)])

    def _codes(self, ids: list[int]) -> np.ndarray:
        start = ids.index(MESH_START) + 1
        span = np.asarray(ids[start:ids.index(MESH_END, start)], dtype=np.int64)
        tok = self.tokenizer
        return span - (tok.coarse_offset if span[0] < tok.fine_offset else tok.fine_offset)

    def generate_step1(self, prompts: list[str], seeds: list[int], temperature: float = 1.0,
                       top_k: int = 0) -> list[StepRollout]:
        """Step 1 for each prompt with its own seed (``top_k <= 0``: no truncation)."""
        return self._sample_segments([self.prompt_ids(p) for p in prompts], STEP1_GRAMMAR, seeds, temperature,
                                     top_k)

    def generate_step2(self, step1: list[StepRollout], seeds: list[int], temperature: float = 1.0,
                       top_k: int = 0) -> list[StepRollout]:
        """Step 2 conditioned on step-1 rollouts (repeat a step 1 in the list to draw G step-2 samples of it)."""
        return self._sample_segments([s.context + s.ids for s in step1], STEP2_GRAMMAR, seeds, temperature, top_k)

    def generate(self, prompts: list[str], seeds: list[int], temperature: float = 1.0, top_k: int = 0,
                 batch_size: int = 64) -> list[Rollout]:
        """Both steps (step 2 of seed ``s`` uses ``s + 1``) and the decoded grids, ``batch_size`` prompts at once."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        self.model.eval()
        out: list[Rollout] = []
        for lo in range(0, len(prompts), batch_size):
            ps, ss = prompts[lo:lo + batch_size], seeds[lo:lo + batch_size]
            s1 = self.generate_step1(ps, ss, temperature, top_k)
            s2 = self.generate_step2(s1, [s + 1 for s in ss], temperature, top_k)
            coarse = self.vqvae.decode_coarse(np.stack([s.codes for s in s1]))
            full = self.vqvae.decode(np.stack([s.codes for s in s1]), np.stack([s.codes for s in s2]))
            out += [Rollout(p, a, b, c, g) for p, a, b, c, g in zip(ps, s1, s2, coarse, full)]
        return out

    # ----- log-probabilities -----------------------------------------------------------------------------------
    def sequence_logprobs(self, context_ids: list[int], generated_ids: list[int], temperature: float = 1.0,
                          step: int | None = None) -> torch.Tensor:
        """Constrained log-probs ``float32[len(generated_ids)]`` of a segment under the current weights (with
        gradients). ``step`` (1 or 2) picks the grammar; by default it is read from the segment's first id."""
        if step is None:
            step = 2 if generated_ids[0] == STEP2 else 1
        g = _Grammar(STEP1_GRAMMAR if step == 1 else STEP2_GRAMMAR, _Masks(self.tokenizer, self.device),
                     self.max_plan)
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
        # the policy's own format is safetensors: nothing else (no pickled .bin) is read
        model = Qwen2ForCausalLM.from_pretrained(folder / "model", use_safetensors=True).to(device).eval()
        meta = json.loads((folder / "policy.json").read_text())
        return cls(model, TextTokenizer.load(folder / "tokenizer"), ColourVQVAE.load(folder / "vqvae").to(device),
                   meta["max_plan"])
