"""Hi-GRPO advantages and losses (:mod:`reference_policy.rl.algos`) against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from reference_policy.rl import algos


def test_group_advantages_population_std_and_scaling_modes() -> None:
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    # group 0: mean 3, population std sqrt((4 + 1 + 0 + 9) / 4) = sqrt(3.5); group 1: mean 0.5, std 0.5
    s0 = math.sqrt(3.5)
    want = [[-2 / (s0 + 1e-4), -1 / (s0 + 1e-4), 0.0, 3 / (s0 + 1e-4)],
            [-0.5 / 0.5001, -0.5 / 0.5001, 0.5 / 0.5001, 0.5 / 0.5001]]
    assert torch.allclose(algos.group_advantages(r), torch.tensor(want, dtype=torch.float64))
    centred = torch.tensor([[-2.0, -1.0, 0.0, 3.0], [-0.5, -0.5, 0.5, 0.5]], dtype=torch.float64)
    assert torch.allclose(algos.group_advantages(r, "none"), centred)
    flat = [1, 2, 3, 6, 0, 0, 1, 1]
    mean = sum(flat) / 8
    batch_std = math.sqrt(sum((x - mean) ** 2 for x in flat) / 8)
    assert torch.allclose(algos.group_advantages(r, "batch"), centred / (batch_std + 1e-4))
    assert torch.equal(algos.group_advantages(torch.full((1, 8), 0.7)), torch.zeros(1, 8))
    with pytest.raises(ValueError, match="scale_rewards"):
        algos.group_advantages(r, "std")


def test_hi_grpo_coupling_and_per_step_advantages_by_hand() -> None:
    # P = 1 prompt, G = 3 step-1 samples, C = 2 children each
    r1 = torch.tensor([[0.5, 0.0, 1.0]])
    r2 = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]])
    # R1' = R1 + 1.0 * mean_c R2 = [0.5 + 0.5, 0 + 0, 1 + 1] = [1, 0, 2]; mean 1, std sqrt(2/3)
    coupled = algos.coupled_step1_rewards(r1, r2, 1.0)
    assert torch.allclose(coupled, torch.tensor([[1.0, 0.0, 2.0]]))
    assert torch.allclose(algos.coupled_step1_rewards(r1, r2, 0.0), r1)
    a1, a2 = algos.hi_grpo_advantages(r1, r2, lam=1.0)
    s = math.sqrt(2 / 3)
    assert torch.allclose(a1, torch.tensor([[0.0, -1 / (s + 1e-4), 1 / (s + 1e-4)]]))
    # C > 1: step 2 grouped per parent: [1, 0] -> +-1/(0.5+1e-4); [0, 0] and [1, 1] -> 0
    h = 0.5 / (0.5 + 1e-4)
    assert torch.allclose(a2, torch.tensor([[[h, -h], [0.0, 0.0], [0.0, 0.0]]]))
    # C = 1 (the paper): step 2 grouped per prompt, over the G children of different parents
    r2_one = torch.tensor([[[1.0], [0.0], [0.0]]])
    a1, a2 = algos.hi_grpo_advantages(r1, r2_one, lam=1.0)
    # R1' = [1.5, 0, 1]: mean 5/6; R2 = [1, 0, 0]: mean 1/3, std sqrt(2)/3
    c = torch.tensor([1.5, 0.0, 1.0])
    assert torch.allclose(a1[0], (c - c.mean()) / (c.std(correction=0) + 1e-4))
    sd = math.sqrt(2) / 3
    assert torch.allclose(a2[0, :, 0], torch.tensor([2 / 3, -1 / 3, -1 / 3]) / (sd + 1e-4))
    assert algos.step2_groups(r2).shape == (3, 2) and algos.step2_groups(r2_one).shape == (1, 3)


def test_zero_spread_groups_are_dropped() -> None:
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.5, 0.0], [0.2, 0.2, 0.2 + 1e-9], [0.0, 0.0, 0.0]])
    assert algos.groups_with_spread(r).tolist() == [False, True, False, False]


def test_clipping_removes_the_gradient_beyond_the_range_for_the_right_sign() -> None:
    eps_lo, eps_hi = 0.2, 0.28
    # four tokens (one sequence): ratio 1.5 with A > 0 (clipped high), 0.5 with A < 0 (clipped low),
    # 1.5 with A < 0 and 0.5 with A > 0 (not clipped: the unclipped term is the minimum)
    ratios = torch.tensor([1.5, 0.5, 1.5, 0.5])
    adv = torch.tensor([[2.0, -2.0, -2.0, 2.0]])
    old = torch.zeros(1, 4)
    logp = torch.log(ratios)[None].clone().requires_grad_(True)
    mask = torch.ones(1, 4, dtype=torch.bool)
    out = algos.policy_loss(logp, old, adv, mask, epsilon=eps_lo, epsilon_high=eps_hi)
    out.loss.backward()
    # loss = mean(-min(r A, clip(r) A)) = mean(-(1.28*2), -(0.8*-2), -(1.5*-2), -(0.5*2))
    assert out.loss.item() == pytest.approx((-2.56 + 1.6 + 3.0 - 1.0) / 4)
    # d loss / d logp = -A r / 4 where unclipped, 0 where clipped
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.0, 2.0 * 1.5 / 4, -2.0 * 0.5 / 4]]))
    assert out.clip_high == pytest.approx(0.25) and out.clip_low == pytest.approx(0.25)
    # symmetric clipping (epsilon_high=None): ratio 1.25 is clipped at 1.2 but inside 1.28
    lp = torch.log(torch.tensor([[1.25]])).requires_grad_(True)
    sym = algos.ppo_clip_loss(lp.exp(), torch.tensor([1.0]), 0.2, None)
    dec = algos.ppo_clip_loss(lp.exp(), torch.tensor([1.0]), 0.2, 0.28)
    assert sym.loss.item() == pytest.approx(-1.2) and dec.loss.item() == pytest.approx(-1.25)
    assert bool(sym.clipped_high) and not bool(dec.clipped_high)


def test_sequence_level_ratio_is_the_geometric_mean_of_token_ratios() -> None:
    logp = torch.log(torch.tensor([[2.0, 0.5, 4.0, 9.0]]))
    mask = torch.tensor([[True, True, True, False]])
    seq = algos.importance_ratio(logp, torch.zeros(1, 4), mask, "sequence")
    assert torch.allclose(seq, torch.full((1, 4), (2.0 * 0.5 * 4.0) ** (1 / 3)))
    tok = algos.importance_ratio(logp, torch.zeros(1, 4), mask, "token")
    assert torch.allclose(tok[0, :3], torch.tensor([2.0, 0.5, 4.0])) and tok[0, 3] == 1.0


def test_k3_kl_is_zero_for_equal_policies_and_positive_otherwise() -> None:
    logp = torch.log(torch.tensor([0.1, 0.5, 0.9]))
    assert torch.equal(algos.kl_k3(logp, logp), torch.zeros(3))
    ref = torch.log(torch.tensor([0.2, 0.25, 0.9]))
    k3 = algos.kl_k3(logp, ref)
    # pi_ref / pi - log(pi_ref / pi) - 1 by hand: 2 - ln 2 - 1, 0.5 - ln 0.5 - 1, 0
    assert torch.allclose(k3, torch.tensor([1 - math.log(2), math.log(2) - 0.5, 0.0]), atol=1e-6)
    assert (k3[:2] > 0).all()
    # a token 20 nats less likely than under the reference: exp(20) - 21 ~ 4.9e8, clamped to KL_CLAMP (gradient 0)
    far = torch.tensor([-25.0], requires_grad=True)
    clamped = algos.kl_k3(far, torch.tensor([-5.0]))
    assert clamped.item() == algos.KL_CLAMP
    clamped.sum().backward()
    assert far.grad.item() == 0.0
    # beta > 0 adds beta * k3 to every loss token; zero advantage leaves only that term
    mask = torch.ones(1, 3, dtype=torch.bool)
    out = algos.policy_loss(logp[None], logp[None], torch.zeros(1), mask, ref_logp=ref[None], beta=0.5)
    assert out.loss.item() == pytest.approx(0.5 * float(k3.mean()), abs=1e-6)
    assert out.kl == pytest.approx(float(k3.mean()), abs=1e-6)
    with pytest.raises(ValueError, match="ref_logp"):
        algos.policy_loss(logp[None], logp[None], torch.zeros(1), mask, beta=0.1)


def test_token_mean_and_seq_mean_differ_as_their_formulas_say() -> None:
    # two sequences of different lengths: 1 loss token (value 4) and 3 loss tokens (values 1, 1, 1)
    loss = torch.tensor([[4.0, 9.0, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    assert algos.aggregate(loss, mask, "token-mean").item() == pytest.approx((4 + 3) / 4)
    assert algos.aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx((4 / 1 + 3 / 3) / 2)
    assert algos.aggregate(loss, mask, "seq-mean-token-sum").item() == pytest.approx((4 + 3) / 2)
    # given counts (the global minibatch): halves of a batch sum to the loss of the whole
    whole = algos.aggregate(loss, mask, "token-mean")
    parts = sum(algos.aggregate(loss[i:i + 1], mask[i:i + 1], "token-mean", n_tokens=4) for i in range(2))
    assert parts.item() == pytest.approx(whole.item())
    parts = sum(algos.aggregate(loss[i:i + 1], mask[i:i + 1], "seq-mean-token-mean", n_seqs=2) for i in range(2))
    assert parts.item() == pytest.approx(algos.aggregate(loss, mask, "seq-mean-token-mean").item())
    # a row without loss tokens (forced tokens only) adds nothing and is not counted
    loss3 = torch.cat([loss, torch.full((1, 3), 100.0)])
    mask3 = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)])
    for mode in algos.LOSS_AGG_MODES:
        assert algos.aggregate(loss3, mask3, mode).item() == pytest.approx(algos.aggregate(loss, mask, mode).item())


def test_forced_tokens_carry_no_loss_or_gradient() -> None:
    logp = torch.tensor([[-1.0, 0.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.2, 0.0, -1.5]])
    sampled = torch.tensor([[True, False, True]])  # the middle token was forced by the grammar
    out = algos.policy_loss(logp, old, torch.tensor([1.0]), sampled)
    out.loss.backward()
    assert logp.grad[0, 1] == 0.0
    # token-mean over the two sampled tokens only: -(e^0.2 + clip(e^-0.5)) / 2
    assert out.loss.item() == pytest.approx(-(min(math.exp(0.2), 1.28) + math.exp(-0.5)) / 2)


def test_entropy_of_a_constrained_distribution() -> None:
    logp = torch.log_softmax(torch.tensor([[0.0, 0.0, float("-inf"), 0.0], [5.0, float("-inf"), -3.0, 1.0]]), -1)
    ent = algos.entropy_from_logprobs(logp)
    p = logp[1].exp()
    assert ent[0].item() == pytest.approx(math.log(3))
    assert ent[1].item() == pytest.approx(-sum(float(x * math.log(x)) for x in p if x > 0))
    forced = torch.log_softmax(torch.tensor([float("-inf"), 2.0, float("-inf")]), -1)
    assert algos.entropy_from_logprobs(forced).item() == 0.0
