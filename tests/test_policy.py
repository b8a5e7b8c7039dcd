"""Tests of the reference policy: tokenizer, two-level VQ-VAE, constrained two-step generation, pretraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mme3dr.assets import load_asset
from reference_policy.policy import (STEP1_GRAMMAR, STEP2_GRAMMAR, GrammarState, ReferencePolicy, class_masks,
                                     detail_plan)
from reference_policy.pretrain import SMOKE, pretrain
from reference_policy.tokenizer import END_PLAN, MESH_START, PAD, UNK, TextTokenizer, normalise
from reference_policy.vqvae import (N_COARSE_TOKENS, N_FINE_TOKENS, ColourVQVAE, VQConfig, colour_accuracy,
                                    reconstruction_iou)
from reference_policy.world import generate, to_mesh

SAMPLES = generate(6, "train", 0)
TINY_VQ = VQConfig(width=8, code_dim=8, n_coarse=16, n_fine=32)


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    texts = [t for s in SAMPLES for t in (*s.prompts, s.plan, detail_plan(s.parts))]
    return TextTokenizer.train(texts, TINY_VQ.n_coarse, TINY_VQ.n_fine)


@pytest.fixture(scope="module")
def policy(tokenizer: TextTokenizer) -> ReferencePolicy:
    torch.manual_seed(0)
    model = ReferencePolicy.build_model(tokenizer, hidden=32, layers=1, heads=2)
    return ReferencePolicy(model, tokenizer, ColourVQVAE(TINY_VQ).eval(), max_plan=8)


def test_tokenizer_round_trip_unknown_and_save(tokenizer: TextTokenizer, tmp_path) -> None:
    text = SAMPLES[0].prompts[1]
    assert tokenizer.decode(tokenizer.encode(text)) == normalise(text)
    ids = tokenizer.encode("A Zyzzogeton with 12 red legs <mesh-start>")
    assert ids[1] == UNK and ids[-1] == MESH_START and all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(tokenizer.encode("12")) == "1 2"
    assert tokenizer.coarse_ids([0]) == [10] and tokenizer.fine_ids([0]) == [10 + TINY_VQ.n_coarse]
    assert tokenizer.word_offset == 10 + TINY_VQ.n_coarse + TINY_VQ.n_fine
    tokenizer.save(tmp_path)
    again = TextTokenizer.load(tmp_path)
    assert again.encode(text) == tokenizer.encode(text) and again.vocab_size == tokenizer.vocab_size


def test_vqvae_shapes_ranges_and_training() -> None:
    torch.manual_seed(0)
    model = ColourVQVAE(TINY_VQ)
    grids = torch.as_tensor(np.stack([s.grid for s in SAMPLES[:4]]))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(6):
        out = model.loss(grids)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    c, f = model.encode(SAMPLES[0].grid)
    assert c.shape == (N_COARSE_TOKENS,) and f.shape == (N_FINE_TOKENS,)
    assert 0 <= c.min() and c.max() < TINY_VQ.n_coarse and 0 <= f.min() and f.max() < TINY_VQ.n_fine
    cb, fb = model.encode(grids.numpy())
    assert cb.shape == (4, 64) and np.array_equal(cb[0], c)
    assert model.decode(c, f).shape == (32, 32, 32) and model.decode(c, f).dtype == np.uint8
    assert model.decode_coarse(cb).shape == (4, 32, 32, 32)
    assert np.array_equal(model.reconstruct(grids.numpy(), batch=3), model.decode(cb, fb))


def test_iou_and_colour_accuracy() -> None:
    a = np.zeros((32, 32, 32), np.uint8)
    b = a.copy()
    assert reconstruction_iou(a, b) == 1.0
    a[:2, 0, 0] = 3
    b[1:3, 0, 0] = 3
    b[1, 0, 0] = 5
    assert reconstruction_iou(a, b) == pytest.approx(1 / 3)
    assert colour_accuracy(a, b) == 0.0
    assert colour_accuracy(a, a) == 1.0 and reconstruction_iou(a, np.zeros_like(a)) == 0.0


def test_constrained_generation_logprobs_and_determinism(policy: ReferencePolicy) -> None:
    tok = policy.tokenizer
    r = policy.generate(["A purple zebra-striped chair"], [3], temperature=1.0, top_k=10)[0]
    coarse = [t for t in r.step1.ids if tok.coarse_offset <= t < tok.fine_offset]
    fine = [t for t in r.step2.ids if tok.fine_offset <= t < tok.word_offset]
    assert len(coarse) == N_COARSE_TOKENS and len(fine) == N_FINE_TOKENS
    assert not any(tok.fine_offset <= t < tok.word_offset for t in r.step1.ids)
    assert not any(tok.coarse_offset <= t < tok.fine_offset for t in r.step2.ids)
    assert r.step1.codes.shape == (64,) and r.step2.codes.shape == (512,) and r.grid.shape == (32, 32, 32)
    for st in (r.step1, r.step2):
        lp = torch.tensor(st.logprobs)
        assert torch.isfinite(lp).all() and (lp <= 0).all()
        assert all(l == 0.0 for l, s in zip(st.logprobs, st.sampled) if not s)
        with torch.no_grad():
            again = policy.sequence_logprobs([st.context], [st.ids]).logprobs[0]
        assert torch.allclose(again, lp, atol=1e-4)
    assert r.step2.context == r.step1.context + r.step1.ids
    same = policy.generate(["A purple zebra-striped chair"], [3], temperature=1.0, top_k=10)[0]
    assert same.step1.ids == r.step1.ids and same.step2.ids == r.step2.ids and np.array_equal(same.grid, r.grid)


def test_batched_generation_matches_one_at_a_time(policy: ReferencePolicy) -> None:
    """Left padding and the shared KV cache change nothing: each row equals its own batch-of-one run, and its
    log-probs equal :meth:`sequence_logprobs` recomputed from the ids."""
    prompts = ["x", "A purple zebra-striped chair", "A very long prompt about a red table with four legs " * 3]
    seeds = [5, 6, 7]
    batch = policy.generate(prompts, seeds, temperature=1.3, top_k=0, batch_size=3)
    assert len({len(r.step1.context) for r in batch}) == 3  # really padded
    for r, p, s in zip(batch, prompts, seeds):
        alone = policy.generate([p], [s], temperature=1.3, top_k=0)[0]
        assert r.step1.ids == alone.step1.ids and r.step2.ids == alone.step2.ids
        assert np.allclose(r.step2.logprobs, alone.step2.logprobs, atol=1e-5)
        with torch.no_grad():
            again = policy.sequence_logprobs([r.step2.context], [r.step2.ids], temperature=1.3).logprobs[0]
        assert torch.allclose(again, torch.tensor(r.step2.logprobs), atol=1e-4)
    assert batch[0].step1.ids != batch[1].step1.ids
    with pytest.raises(ValueError, match="seeds"):
        policy.generate(prompts, seeds[:2])


def test_top_k_one_is_greedy(policy: ReferencePolicy) -> None:
    a, b = policy.generate(["a chair", "a chair"], [0, 1], top_k=1)
    assert a.step1.ids == b.step1.ids and a.step2.ids == b.step2.ids
    tok = policy.tokenizer
    with torch.no_grad():  # ids[0] is the forced <plan>; ids[1] must be the best allowed plan token
        logits = policy.model(input_ids=torch.tensor([a.step1.context + a.step1.ids[:1]])).logits[0, -1]
    allowed = torch.zeros_like(logits, dtype=torch.bool)
    allowed[tok.word_offset:] = True
    allowed[END_PLAN] = True
    assert a.step1.sampled[1] and a.step1.ids[1] == int(logits.masked_fill(~allowed, float("-inf")).argmax())


def test_pretrain_smoke_end_to_end(tmp_path) -> None:
    metrics = pretrain(tmp_path / "ckpt", SMOKE)
    assert np.isfinite(metrics["policy_final_loss"]) and (tmp_path / "ckpt" / "log.jsonl").exists()
    policy = ReferencePolicy.from_pretrained(tmp_path / "ckpt")
    rollouts = policy.generate(["A steampunk gramophone with a brass horn on a walnut cabinet."] * 8, list(range(8)),
                               top_k=8)
    assert all(r.grid.shape == (32, 32, 32) for r in rollouts)
    # a 6-step smoke model decodes many seeds to an empty grid (which seeds depends on the world's data)
    grids = [g for r in rollouts for g in (r.grid, r.coarse_grid) if (g > 0).any()]
    assert grids, "smoke checkpoint decoded 8 seeds to empty grids"
    grid = grids[0]
    path = tmp_path / "gen.ply"
    to_mesh(grid).export(path)
    asset = load_asset(path)
    assert len(asset.meshes) == 1


def _reference_allowed(tok: TextTokenizer, items: tuple, tokens: list[int], max_plan: int) -> list[set[int]]:
    """An independent walk of a segment grammar: the set of allowed ids before each token (and one more after)."""
    plan = set(range(tok.word_offset, tok.vocab_size)) | {END_PLAN}
    mesh = {"coarse": set(range(tok.coarse_offset, tok.fine_offset)),
            "fine": set(range(tok.fine_offset, tok.word_offset))}
    out, i, n = [], 0, 0
    for t in [*tokens, None]:
        if i == len(items):
            out.append({PAD})
            continue
        kind = items[i]
        out.append({kind[1]} if kind[0] == "force" else ({END_PLAN} if n >= max_plan else plan)
                   if kind[0] == "plan" else mesh[kind[1]])
        if t is None:
            break
        n += 1
        if kind[0] == "force" or (kind[0] == "plan" and t == END_PLAN) or (kind[0] == "mesh" and n == kind[2]):
            i, n = i + 1, 0
    return out


def test_grammar_state_matches_an_independent_walk(tokenizer: TextTokenizer) -> None:
    """The tensor grammar state (used by decoding and scoring) gives, for rows of different grammars walked
    together, the allowed sets of a plain per-row walk, including a plan cut at max_plan."""
    rng = np.random.default_rng(0)
    max_plan = 5
    grammars = [STEP1_GRAMMAR, STEP2_GRAMMAR, STEP1_GRAMMAR + STEP2_GRAMMAR, STEP1_GRAMMAR]
    rows = []
    for r, items in enumerate(grammars):
        tokens: list[int] = []
        while True:
            allowed = _reference_allowed(tokenizer, items, tokens, max_plan)[-1]
            if allowed == {PAD}:
                break
            choices = sorted(allowed)
            if r == 3 and END_PLAN in choices and len(choices) > 1:  # row 3 never ends its plan early
                choices.remove(END_PLAN)
            tokens.append(int(rng.choice(choices)))
        rows.append(tokens)
    assert max_plan + 1 in [r.index(END_PLAN) for r in rows[3:]]  # the plan was cut by the limit
    state = GrammarState(grammars, max_plan, "cpu")
    table = class_masks(tokenizer)
    width = max(len(r) for r in rows) + 1
    for t in range(width):
        got = table[state.classes()]
        for r, tokens in enumerate(rows):
            want = _reference_allowed(tokenizer, grammars[r], tokens[:t], max_plan)[-1] if t <= len(tokens) \
                else {PAD}
            assert set(torch.nonzero(got[r])[:, 0].tolist()) == want, (r, t)
        state.advance(torch.tensor([tokens[t] if t < len(tokens) else PAD for tokens in rows]))
    assert bool(state.done.all())


def test_batched_sequence_logprobs_match_sampling_with_entropy_and_gradients(policy: ReferencePolicy) -> None:
    """One padded forward scores step-1, step-2 and joint (both steps) segments of different lengths as the
    decoder recorded them; the entropy is that of the constrained distribution; gradients flow."""
    rollouts = policy.generate(["x", "A purple zebra-striped chair with four legs", "a red table"], [1, 2, 3],
                               temperature=1.0, top_k=0)
    contexts = [r.step1.context for r in rollouts] + [rollouts[0].step2.context, rollouts[1].step1.context]
    segments = [r.step1.ids for r in rollouts] + [rollouts[0].step2.ids, rollouts[1].step1.ids + rollouts[1].step2.ids]
    recorded = [r.step1 for r in rollouts] + [rollouts[0].step2, None]
    policy.model.zero_grad()
    scores = policy.sequence_logprobs(contexts, segments, entropy=True)
    assert len({len(s) for s in segments}) >= 3 and scores.logprobs.shape == (5, max(len(s) for s in segments))
    for b, seg in enumerate(segments):
        n = len(seg)
        assert scores.valid[b, :n].all() and not scores.valid[b, n:].any()
        rec = recorded[b]
        lp = rec.logprobs if rec else rollouts[1].step1.logprobs + rollouts[1].step2.logprobs
        sampled = rec.sampled if rec else rollouts[1].step1.sampled + rollouts[1].step2.sampled
        assert torch.allclose(scores.logprobs[b, :n].detach(), torch.tensor(lp), atol=1e-4)
        assert scores.sampled[b, :n].tolist() == sampled and not scores.sampled[b, n:].any()
        assert (scores.logprobs[b, n:] == 0).all() and (scores.entropy[b][~scores.sampled[b]] == 0).all()
    # the entropy at one sampled position, from a plain forward of that row
    b, t = 3, 2
    with torch.no_grad():
        logits = policy.model(input_ids=torch.tensor([contexts[b] + segments[b][:t]])).logits[0, -1]
    st = GrammarState([STEP2_GRAMMAR], policy.max_plan, "cpu")
    for tk in segments[b][:t]:
        st.advance(torch.tensor([tk]))
    allowed = class_masks(policy.tokenizer)[st.classes()][0]
    p = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
    want = -(p[p > 0] * p[p > 0].log()).sum()
    assert scores.sampled[b, t] and scores.entropy[b, t].item() == pytest.approx(want.item(), rel=1e-4)
    scores.logprobs[scores.sampled].sum().backward()
    assert policy.model.model.embed_tokens.weight.grad.abs().sum() > 0
    policy.model.zero_grad()


def test_an_older_transformers_is_refused_with_how_to_install_the_tested_one(monkeypatch):
    """On transformers 5.17 the bundled checkpoints loaded with identical weights but sampled degenerate tokens
    (every reward ~0); loading now refuses such a version instead of decoding wrong samples."""
    from reference_policy import policy
    from reference_policy.bundled import SFT

    with pytest.raises(policy.TransformersVersionError, match="constraints.txt"):
        policy.check_transformers("5.17.0")
    policy.check_transformers("5.24.0")
    monkeypatch.setattr(policy.transformers, "__version__", "5.17.0")  # the module object the policy reads
    with pytest.raises(policy.TransformersVersionError, match=r"5\.24"):
        policy.ReferencePolicy.from_pretrained(SFT)
