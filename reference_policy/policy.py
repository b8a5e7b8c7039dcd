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
:meth:`ReferencePolicy.sequence_logprobs` reproduces them from the ids alone, for a whole batch of segments in one
forward (the PPO ratio needs exactly this). With temperature 1 and no top-k they are the log-probs of the
distribution the tokens were drawn from.

Batching: :meth:`ReferencePolicy.generate` decodes many prompts at once (left-padded contexts, explicit position
ids, one static KV cache); each row samples with its own seed, so a prompt's rollout does not depend on the batch
it is in (tested against batches of one).

Folder layout of :meth:`ReferencePolicy.save_pretrained`: ``model/`` (transformers ``save_pretrained``,
safetensors; ``from_pretrained`` loads the weights as float32 whatever dtype they were stored in), ``tokenizer/``,
``vqvae/`` and ``policy.json`` (``max_plan``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from packaging.version import Version
from transformers import Cache, Qwen2Config, Qwen2ForCausalLM
from transformers.cache_utils import StaticLayer

from reference_policy.rl.algos import entropy_from_logprobs
from reference_policy.tokenizer import (BOS, END_PLAN, EOS, MESH_END, MESH_START, PAD, PLAN, STEP1, STEP2,
                                        TextTokenizer)
from reference_policy.vqvae import N_COARSE_TOKENS, N_FINE_TOKENS, ColourVQVAE
from reference_policy.world.sample import Part

#: The oldest transformers whose decoding this policy is known to match: with 5.17 (the version on the H200 image)
#: the same weights (identical tensor sums) sample other, degenerate token streams and every reward is ~0; 5.24 is
#: the version of constraints.txt, with which the checkpoints were trained and evaluated.
MIN_TRANSFORMERS = "5.24"


class TransformersVersionError(RuntimeError):
    """The installed transformers is older than :data:`MIN_TRANSFORMERS`."""


def check_transformers(version: str | None = None) -> None:
    """Refuse a transformers older than :data:`MIN_TRANSFORMERS` (``version``: the installed one by default), with
    how to install the tested one, rather than decoding silently wrong samples."""
    version = version or transformers.__version__
    if Version(version) < Version(MIN_TRANSFORMERS):
        raise TransformersVersionError(
            f"the reference policy needs transformers >= {MIN_TRANSFORMERS} (found {version}): older versions decode "
            "its checkpoints into other samples. Install the tested versions: "
            "`pip install -c constraints.txt -e .` (or `pip install 'transformers>=" + MIN_TRANSFORMERS + "'`).")

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


#: Grammar-state classes: ``0 .. 9`` = only that special token allowed (a forced token, ``</plan>`` once a plan is
#: full, ``<pad>`` once the segment is complete); then a free plan position, a coarse and a fine mesh position.
CLASS_PLAN, CLASS_COARSE, CLASS_FINE = 10, 11, 12
_FORCE, _PLAN, _MESH, _DONE = 0, 1, 2, 3


def class_masks(tok: TextTokenizer, device: torch.device | str = "cpu") -> torch.Tensor:
    """``bool[13, vocab]``: row ``c`` is the set of tokens allowed in grammar-state class ``c``."""
    v = tok.vocab_size
    table = torch.zeros((CLASS_FINE + 1, v), dtype=torch.bool)
    for t in range(CLASS_PLAN):
        table[t, t] = True
    table[CLASS_PLAN, tok.word_offset:] = True
    table[CLASS_PLAN, END_PLAN] = True
    table[CLASS_COARSE, tok.coarse_offset:tok.fine_offset] = True
    table[CLASS_FINE, tok.fine_offset:tok.word_offset] = True
    return table.to(device)


class GrammarState:
    """Positions of a batch of rows in their segment grammars, as tensors (no per-row Python).

    Row ``b`` walks ``grammars[b]`` (default: one grammar for all rows) with item index ``i[b]`` and count ``n[b]``
    inside the item. :meth:`classes` gives each row's class of the next position (the :func:`class_masks` row):
    a forced token's id; for a plan, :data:`CLASS_PLAN` (or ``</plan>`` once ``max_plan`` words were written);
    for a mesh span, :data:`CLASS_COARSE` / :data:`CLASS_FINE`; ``<pad>`` once the grammar is complete.
    :meth:`advance` consumes one token per row: ``n += 1``, and the row moves to the next item after a forced
    token, after ``</plan>`` in a plan, or after the item's count of mesh tokens."""

    def __init__(self, grammars: Sequence[tuple[Item, ...]], max_plan: int, device: torch.device | str) -> None:
        width = max(len(g) for g in grammars) + 1
        kind = torch.full((len(grammars), width), _DONE, dtype=torch.long)
        cls = torch.full((len(grammars), width), PAD, dtype=torch.long)
        length = torch.zeros((len(grammars), width), dtype=torch.long)
        for r, items in enumerate(grammars):
            for j, item in enumerate(items):
                if item[0] == "force":
                    kind[r, j], cls[r, j] = _FORCE, item[1]
                elif item[0] == "plan":
                    kind[r, j], cls[r, j] = _PLAN, CLASS_PLAN
                else:
                    kind[r, j], cls[r, j], length[r, j] = _MESH, CLASS_COARSE if item[1] == "coarse" else CLASS_FINE, \
                        item[2]
        self.kind, self.cls, self.length = kind.to(device), cls.to(device), length.to(device)
        self.end = torch.tensor([len(g) for g in grammars], device=device)
        self.max_plan = max_plan
        self.i = torch.zeros(len(grammars), dtype=torch.long, device=device)
        self.n = torch.zeros_like(self.i)

    @property
    def done(self) -> torch.Tensor:
        """``bool[B]``: the row's segment is complete."""
        return self.i >= self.end

    def _at(self, table: torch.Tensor) -> torch.Tensor:
        return table.gather(1, self.i[:, None])[:, 0]

    def classes(self) -> torch.Tensor:
        """``long[B]``: the class of each row's next position."""
        full_plan = (self._at(self.kind) == _PLAN) & (self.n >= self.max_plan)
        return torch.where(full_plan, torch.full_like(self.i, END_PLAN), self._at(self.cls))

    def advance(self, tokens: torch.Tensor) -> None:
        kind = self._at(self.kind)
        n = self.n + 1
        step = (kind == _FORCE) | ((kind == _PLAN) & (tokens == END_PLAN)) | ((kind == _MESH) & (n == self._at(self.length)))
        self.i = self.i + step.long()
        self.n = torch.where(step | (kind == _DONE), torch.zeros_like(n), n)


def grammar_of(segment: Sequence[int]) -> tuple[Item, ...]:
    """The grammar of a generated segment: step 2 when it starts with ``<step2>``, both steps in a row when it
    contains ``<step2>`` later, else step 1."""
    if segment and segment[0] == STEP2:
        return STEP2_GRAMMAR
    return STEP1_GRAMMAR + STEP2_GRAMMAR if STEP2 in segment else STEP1_GRAMMAR


def max_segment_length(items: tuple[Item, ...], max_plan: int) -> int:
    """Longest segment a grammar allows (a plan is at most ``max_plan`` words plus ``</plan>``)."""
    return sum(1 if it[0] == "force" else max_plan + 1 if it[0] == "plan" else it[2] for it in items)


class _PrefixStaticLayer(StaticLayer):
    """A static KV-cache layer (preallocated, filled in place) that hands attention only its filled prefix.
    ``StaticLayer`` returns all ``max_cache_len`` slots, so every decoding step reads the whole preallocated cache
    from memory; at batch 64 that made attention about half of CPU decoding time. The masked slots it skips had
    attention weight 0."""

    filled = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        self.filled += key_states.shape[-2]
        return keys[:, :, :self.filled], values[:, :, :self.filled]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.filled + query_length, 0


@dataclass
class SegmentScores:
    """:meth:`ReferencePolicy.sequence_logprobs` of B segments right-padded to T tokens: ``logprobs [B, T]`` (with
    gradients; 0 at padding and at forced tokens), ``sampled`` (bool: the grammar allowed more than one token, so
    the token was drawn), ``valid`` (bool: inside the segment), ``entropy [B, T]`` (no gradient; entropy of the
    constrained distribution at each position, 0 where one token is allowed) when asked for."""

    logprobs: torch.Tensor
    sampled: torch.Tensor
    valid: torch.Tensor
    entropy: torch.Tensor | None = None


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
        batch it is in. The grammar of every row advances as tensors (:class:`GrammarState`); the only host sync
        per position is the check whether every row is complete.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use top_k=1 for greedy decoding), got {temperature}")
        dev, b = self.device, len(contexts)
        table = class_masks(self.tokenizer, dev)
        n_allowed = table.sum(-1)
        state = GrammarState([grammar] * b, self.max_plan, dev)
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
        # A static cache (DynamicCache concatenates every layer's keys and values at every step, which made CPU
        # decoding of ~700 tokens about 3x slower) that attends over its filled prefix only.
        cache = Cache(layers=[_PrefixStaticLayer(max_cache_len=width + steps)
                              for _ in range(self.model.config.num_hidden_layers)])
        out = self.model(input_ids=ids, attention_mask=attention, position_ids=position, cache=cache,
                         use_cache=True, logits_to_keep=1)
        logits, position = out.logits[:, -1], position[:, -1:]
        tokens = torch.full((b, steps), PAD, dtype=torch.long, device=dev)
        logprobs = torch.zeros((b, steps), device=dev)
        sampled = torch.zeros((b, steps), dtype=torch.bool, device=dev)
        length = steps
        for t in range(steps):
            cls = state.classes()
            logp = torch.log_softmax(logits.float().masked_fill(~table[cls], float("-inf")) / temperature, -1)
            scores = logp
            if top_k > 0:
                kth = logp.topk(min(top_k, logp.shape[-1]), dim=-1).values[:, -1:]
                scores = logp.masked_fill(logp < kth, float("-inf"))
            token = (scores + gumbel[:, t]).argmax(-1)
            live = ~state.done
            tokens[:, t] = torch.where(live, token, PAD)
            logprobs[:, t] = torch.where(live, logp.gather(1, token[:, None])[:, 0], 0.0)
            sampled[:, t] = live & (n_allowed[cls] > 1)
            state.advance(token)
            if bool(state.done.all()):
                length = t + 1
                break
            attention = torch.cat([attention, attention.new_ones((b, 1))], 1)
            position = position + 1
            logits = self.model(input_ids=token[:, None], attention_mask=attention, position_ids=position,
                                cache=cache, use_cache=True).logits[:, -1]
        rows = zip(contexts, tokens[:, :length].tolist(), logprobs[:, :length].tolist(),
                   sampled[:, :length].tolist())
        out_rows = []
        for c, ids_r, lp_r, s_r in rows:
            n = ids_r.index(PAD) if PAD in ids_r else len(ids_r)
            out_rows.append(StepRollout(c, ids_r[:n], lp_r[:n], s_r[:n], self._plan_text(ids_r[:n]),
                                        self._codes(ids_r[:n])))
        return out_rows

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
    def sequence_logprobs(self, contexts: Sequence[Sequence[int]], segments: Sequence[Sequence[int]],
                          temperature: float = 1.0, entropy: bool = False, model: torch.nn.Module | None = None
                          ) -> SegmentScores:
        """Constrained log-probs of many generated segments under the current weights, in one padded forward
        (with gradients).

        Row ``b`` scores ``segments[b]`` after ``contexts[b]``; its grammar is :func:`grammar_of` the segment (a
        segment may hold both steps in a row). Layout as in decoding: contexts left-padded to a common width,
        segments right-padded after them, explicit position ids; only the segment positions go through the
        output head. ``log_softmax(mask(logits) / temperature)`` at each position is what sampling used, so the
        result equals the log-probs recorded in :class:`StepRollout` (float tolerance). ``model`` runs the forward
        instead of ``self.model`` (e.g. its ``DistributedDataParallel`` wrapper)."""
        if len(contexts) != len(segments) or not segments or not all(segments):
            raise ValueError("sequence_logprobs needs as many contexts as segments, and non-empty segments")
        dev, b = self.device, len(segments)
        wc, t_max = max(len(c) for c in contexts), max(len(s) for s in segments)
        ids = torch.full((b, wc + t_max), PAD, dtype=torch.long)
        attention = torch.zeros((b, wc + t_max), dtype=torch.long)
        for r, (c, seg) in enumerate(zip(contexts, segments)):
            ids[r, wc - len(c):wc + len(seg)] = torch.tensor([*c, *seg])
            attention[r, wc - len(c):wc + len(seg)] = 1
        # the grammar walk runs on the host: ~10 tiny tensor ops per position are cheaper there than as kernels
        target, valid = ids[:, wc:], attention[:, wc:].bool()
        state = GrammarState([grammar_of(seg) for seg in segments], self.max_plan, "cpu")
        classes = torch.empty((b, t_max), dtype=torch.long)
        for t in range(t_max):
            classes[:, t] = state.classes()
            state.advance(target[:, t])
        classes = torch.where(valid, classes, PAD).to(dev)
        ids, attention, target, valid = ids.to(dev), attention.to(dev), target.to(dev), valid.to(dev)
        table = class_masks(self.tokenizer, dev)
        position = (attention.cumsum(-1) - 1).clamp(min=0)
        logits = (model or self.model)(input_ids=ids[:, :-1], attention_mask=attention[:, :-1],
                                       position_ids=position[:, :-1], logits_to_keep=t_max).logits.float()
        logp_all = torch.log_softmax(logits.masked_fill(~table[classes], float("-inf")) / temperature, -1)
        logp = logp_all.gather(2, torch.where(valid, target, PAD)[..., None])[..., 0]
        ent = entropy_from_logprobs(logp_all.detach()) if entropy else None
        return SegmentScores(logp, valid & (table.sum(-1)[classes] > 1), valid, ent)

    # ----- persistence -----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.model.save_pretrained(folder / "model")
        self.tokenizer.save(folder / "tokenizer")
        self.vqvae.save(folder / "vqvae")
        (folder / "policy.json").write_text(json.dumps({"max_plan": self.max_plan}))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> ReferencePolicy:
        check_transformers()
        folder = Path(folder)
        # the policy's own format is safetensors: nothing else (no pickled .bin) is read; float32 whatever the
        # stored dtype (a bf16 checkpoint is loaded as float32)
        model = Qwen2ForCausalLM.from_pretrained(folder / "model", use_safetensors=True,
                                                 dtype=torch.float32).to(device).eval()
        meta = json.loads((folder / "policy.json").read_text())
        return cls(model, TextTokenizer.load(folder / "tokenizer"), ColourVQVAE.load(folder / "vqvae").to(device),
                   meta["max_plan"])
