"""The Hi-GRPO trainer (:mod:`reference_policy.rl.train`): the update batch, the smoke task, resume after SIGKILL
and data-parallel training on two CPU processes. The end-to-end tests run the command line in subprocesses (one
intra-op thread each, so that one and two processes do the same arithmetic)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reference_policy.policy import StepRollout
from reference_policy.rl import algos
from reference_policy.rl.batch import build_update_batch, group_kept
from reference_policy.rl.config import SMOKE, HiGRPOConfig
from reference_policy.rl.rollout import Group

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def _roll(ids: list[int], sampled: list[bool], lp: float) -> StepRollout:
    return StepRollout([1, 2], ids, [lp if s else 0.0 for s in sampled], sampled, "", np.zeros(1))


def _group(r1: list[float], r2: list[list[float]]) -> Group:
    g, c = len(r1), len(r2[0])
    step1 = [_roll([4, 20, 21], [False, True, True], -1.0) for _ in range(g)]
    kids = [[_roll([7, 4, 30], [False, False, True], -2.0) for _ in range(c)] for _ in range(g)]
    return Group(0, step1, kids, np.array(r1), np.array(r2), {})


def test_update_batch_lays_out_advantages_and_masks_per_token() -> None:
    cfg = replace(HiGRPOConfig(), num_generations=2, num_children=2)
    # prompt 0: coupled step-1 rewards 1.5 and 0 (spread), children of parent 0 differ, of parent 1 do not;
    # prompt 1: coupled step-1 rewards 1.0 and 1.0 (no spread), children of parent 1 differ only
    r1, r2 = [[1.0, 0.0], [0.5, 0.5]], [[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [1.0, 0.0]]]
    groups = [_group(r1[0], r2[0]), _group(r1[1], r2[1])]
    batch = build_update_batch(groups, cfg)
    assert len(batch.segments) == 2 * 2 * 2 and batch.segments[0] == [4, 20, 21, 7, 4, 30]
    a1, a2 = algos.hi_grpo_advantages(torch.tensor(r1, dtype=torch.float64), torch.tensor(r2, dtype=torch.float64))
    step2_spread = {(0, 0): True, (0, 1): False, (1, 0): False, (1, 1): True}
    for row in range(8):
        p, g, c = row // 4, row // 2 % 2, row % 2
        assert torch.allclose(batch.adv[row, :3], torch.full((3,), float(a1[p, g]), dtype=torch.float32))
        assert torch.allclose(batch.adv[row, 3:], torch.full((3,), float(a2[p, g, c]), dtype=torch.float32))
        # step-1 loss on the first child of a parent only, and only where the step-1 group has spread
        k1 = c == 0 and p == 0
        assert batch.mask1[row].tolist() == [False, k1, k1, False, False, False]
        # step-2 loss on the sampled step-2 token, where the parent's children differ
        assert batch.mask2[row].tolist() == [False] * 5 + [step2_spread[p, g]]
    assert torch.equal(batch.old_logp[0], torch.tensor([0.0, -1.0, -1.0, 0.0, 0.0, -2.0]))
    assert group_kept(groups[1], cfg) and not group_kept(_group([0.5, 0.5], [[1.0, 1.0], [1.0, 1.0]]), cfg)
    # dynamic sampling off: every token of every group carries loss
    off = build_update_batch(groups, replace(cfg, dynamic_sampling=False))
    assert int(off.mask2.sum()) == 8 and int(off.mask1.sum()) == 4 * 2
    # one-step GRPO: one sequence, one advantage from the final reward (children of one prompt compared)
    one = build_update_batch([_group([0.0, 0.0], [[1.0], [0.0]])], replace(cfg, paradigm="one-step",
                                                                              num_children=1))
    assert not one.mask1.any() and one.mask2[0].tolist() == [False, True, True, False, False, True]
    assert torch.allclose(one.adv[0], torch.full((6,), 0.5 / 0.5001)) and torch.allclose(one.adv[1], -one.adv[0])


def test_config_rejects_unknown_settings() -> None:
    with pytest.raises(ValueError, match="loss_agg_mode"):
        HiGRPOConfig(loss_agg_mode="token-sum")
    with pytest.raises(ValueError, match="one-step needs num_children 1"):
        HiGRPOConfig(paradigm="one-step", num_children=2)


# ----- end to end (subprocesses) ----------------------------------------------------------------------------------
#: The smoke seed of the reward-rise test (see the test).
SMOKE_SEED = 2


def _train(out: Path, init: Path | None, *args: str, procs: int = 1) -> subprocess.Popen:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    cmd = [*launcher, "-m", "reference_policy.rl.train", "--smoke", "--out", str(out),
           *(["--init", str(init)] if init else []), *args]
    return subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    text = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, text[-3000:]
    return text


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """``--smoke`` as CI runs it: a tiny pretrained policy in ``OUT/init``, then the RL steps."""
    out = tmp_path_factory.mktemp("smoke_run")
    _finish(_train(out, None, "--seed", str(SMOKE_SEED)))
    return out


@pytest.fixture(scope="module")
def init(smoke_run: Path) -> Path:
    return smoke_run / "init"


@pytest.mark.slow
def test_smoke_run_raises_the_reward(smoke_run: Path) -> None:
    rows = [json.loads(line) for line in (smoke_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(SMOKE.steps))
    # step-2 reward, two first steps against three last: seeds 0, 1, 2 rise by 0.23, 0.69 and 0.71 (seed 0's tiny
    # policy happens to start high); CPU runs are deterministic, so the seed used here always rises by 0.71
    first = np.mean([r["r2"] for r in rows[:2]])
    last = np.mean([r["r2"] for r in rows[-3:]])
    assert last > first + 0.4, [round(r["r2"], 3) for r in rows]
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["steps"] == SMOKE.steps and summary["final"]["r2"] > summary["first"]["r2"]
    assert (smoke_run / "curves.png").stat().st_size > 0
    for key in ("kl", "clip_low", "clip_high", "entropy2", "kept_frac", "adv1_std", "tokens_per_s", "t_rollout"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert max(r["clip_low"] + r["clip_high"] for r in rows) > 0  # the second PPO epoch moves the ratio


@pytest.mark.slow
def test_sigkill_then_the_same_command_resumes_to_the_uninterrupted_weights(init: Path, smoke_run: Path,
                                                                            tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = _train(out, init, "--save-every", "2", "--seed", str(SMOKE_SEED))
    state = out / "state.pt"
    while not state.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "summary.json").exists()
    killed_at = torch.load(state, weights_only=False)["step"]
    assert 0 < killed_at < SMOKE.steps
    text = _finish(_train(out, init, "--save-every", "2", "--seed", str(SMOKE_SEED)))
    assert f"step={killed_at} " in text and "step=0 " not in text  # resumed, not restarted
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(SMOKE.steps))
    resumed, straight = _weights(out), _weights(smoke_run)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


@pytest.mark.slow
def test_two_processes_make_the_one_process_update(init: Path, tmp_path: Path) -> None:
    args = ("--steps", "1", "--learning-rate", "1e-4", "--num-minibatches", "2", "--num-iterations", "1")
    one, two = _train(tmp_path / "one", init, *args), _train(tmp_path / "two", init, *args, procs=2)
    _finish(one)
    _finish(two)
    w1, w2, w0 = _weights(tmp_path / "one"), _weights(tmp_path / "two"), _weights(init)
    moved = max(float((w1[k] - w0[k]).abs().max()) for k in w0)
    gap = max(float((w1[k] - w2[k]).abs().max()) for k in w0)
    assert moved > 5e-5 and gap < 1e-5, (moved, gap)
    log1 = json.loads((tmp_path / "one" / "log.jsonl").read_text())
    log2 = json.loads((tmp_path / "two" / "log.jsonl").read_text())
    assert log1["r2"] == pytest.approx(log2["r2"]) and log1["loss"] == pytest.approx(log2["loss"], rel=1e-4)
    assert log1["grad_norm"] == pytest.approx(log2["grad_norm"], rel=1e-4)


def test_final_policy_in_bfloat16_loads_as_float32(tmp_path: Path) -> None:
    from reference_policy.policy import ReferencePolicy, detail_plan
    from reference_policy.rl.train import save_policy
    from reference_policy.tokenizer import TextTokenizer
    from reference_policy.vqvae import ColourVQVAE, VQConfig
    from reference_policy.world import generate

    samples = generate(2, "train", 0)
    tok = TextTokenizer.train([t for s in samples for t in (*s.prompts, s.plan, detail_plan(s.parts))], 16, 32)
    policy = ReferencePolicy(ReferencePolicy.build_model(tok, hidden=32, layers=1, heads=2), tok,
                             ColourVQVAE(VQConfig(width=8, code_dim=8, n_coarse=16, n_fine=32)).eval(), max_plan=8)
    save_policy(policy, tmp_path / "f32")
    save_policy(policy, tmp_path / "bf16", "bfloat16")
    size = {k: (tmp_path / k / "model" / "model.safetensors").stat().st_size for k in ("f32", "bf16")}
    assert size["bf16"] < 0.6 * size["f32"]
    again = ReferencePolicy.from_pretrained(tmp_path / "bf16")
    for name, p in again.model.state_dict().items():
        assert p.dtype == torch.float32
        assert torch.equal(p, policy.model.state_dict()[name].to(torch.bfloat16).float())
    assert next(policy.model.parameters()).dtype == torch.float32  # the trained model itself is untouched


@pytest.mark.slow
@pytest.mark.parametrize("change", [
    {"paradigm": "one-step"}, {"importance_sampling_level": "sequence", "loss_agg_mode": "seq-mean-token-mean"},
    {"beta": 0.0, "step1_reward": False, "coupling_lambda": 0.0, "loss_agg_mode": "seq-mean-token-sum"},
    {"num_children": 2, "num_generations": 4, "dynamic_sampling": False, "scale_rewards": "batch",
     "epsilon_high": 0.2}])
def test_every_ablation_switch_trains_a_step(init: Path, tmp_path: Path, change: dict) -> None:
    from reference_policy.rl.train import Trainer

    cfg = replace(SMOKE, steps=1, **change)
    trainer = Trainer(tmp_path, cfg, init)
    summary = trainer.run()
    row = trainer.log.rows[0]
    assert summary["steps"] == 1 and np.isfinite(row["loss"]) and row["grad_norm"] > 0
    assert ("kl" in row) == (cfg.beta > 0) and ("r1" in row) == (cfg.step1_reward and cfg.paradigm == "hi-grpo")
    moved = _weights(tmp_path)
    start = _weights(init)
    assert any(not torch.equal(moved[k], start[k]) for k in start)


@pytest.mark.slow
def test_time_budget_stops_the_run_and_says_so(init: Path, tmp_path: Path) -> None:
    from reference_policy.rl.train import Trainer

    summary = Trainer(tmp_path, replace(SMOKE, steps=3), init, max_minutes=0.0).run()
    assert summary["steps"] == 0 and summary["stopped_early"] == "max_minutes"
    assert (tmp_path / "state.pt").exists() and (tmp_path / "policy.json").exists()
