"""Hi-GRPO training of the reference policy: ``python -m reference_policy.rl.train --out DIR [--init CKPT]
[--device cuda[:K]] [--smoke] [--seed S] [--steps N] [--max-minutes M] [--FIELD VALUE ...]``, where every field of
:class:`HiGRPOConfig` is an option (``--loss-agg-mode seq-mean-token-mean``, ``--dynamic-sampling false``, ...).
Data-parallel: ``torchrun --nproc_per_node N -m reference_policy.rl.train ...`` (gloo on the CPU, NCCL on CUDA).

One step (``P = prompts_per_step``, ``G = num_generations``, ``C = num_children``):

1. rollouts (:mod:`.rollout`): P prompts from the stream (the training split of the procedural world; sample
   ``k`` of the stream is drawn by ``generate(PROMPT_CHUNK, "train", ...)`` chunk by chunk, paraphrase ``k % 3``),
   split over the
   ranks (the G samples of a prompt stay on one rank). Each prompt gets G step-1 samples and each step-1 sample
   C step-2 children, decoded in batches with the static-cache constrained decoding at ``temperature`` and
   ``top_k`` (defaults 0.7, the evaluation's temperature, and none: the recorded log-probs, of
   ``logits / temperature``, are then those of the distribution the tokens were drawn from, and they are the old
   policy of the PPO ratio). Row seeds derive from (seed, stream index, sample),
   so a rollout does not depend on the rank or batch it was decoded in;
2. rewards (:mod:`reference_policy.rl.rewards`): step 1 scores the coarse grid of a step-1 sample (the VQ-VAE's
   ``decode_coarse``), step 2 the final grid of a child; the groups of all ranks are then gathered on every rank;
3. dynamic sampling (``dynamic_sampling``, :func:`.batch.group_kept`): a prompt is kept when its step-1 group (coupled rewards) or one of its
   step-2 groups has reward spread (:func:`~.algos.groups_with_spread`); rounds of P fresh prompts are drawn until
   P are kept or ``max_sampling_rounds`` rounds are done; at most P are used. Within a kept prompt, a step
   group without spread carries no loss. ``kept_frac`` = kept / drawn prompts;
4. advantages (:func:`.batch.build_update_batch`, :func:`~.algos.hi_grpo_advantages`): ``A1`` from ``R1' = R1 + lambda mean_c R2`` over a prompt's
   G samples (``R1 = 0`` with ``step1_reward=False``), ``A2`` from ``R2`` in the step-2 groups; with
   ``paradigm="one-step"`` both segments are one sequence with one advantage from ``R2`` (GRPO on the final
   output);
5. update: ``num_iterations`` PPO epochs; each epoch shuffles the rows (one per child: prompt, step-1 segment,
   step-2 segment) and makes ``num_minibatches`` optimizer steps. A row is scored in one forward
   (:meth:`~reference_policy.policy.ReferencePolicy.sequence_logprobs` of both segments after the prompt); its
   step-1 tokens carry ``L1`` (on the first child of each step-1 sample only), its step-2 tokens ``L2``
   (:func:`~.algos.policy_loss`); the loss is ``L1 + L2``. Loss tokens are the sampled ones (forced grammar tokens
   carry none). The aggregation counts (tokens, sequences) are those of the whole minibatch over all ranks, so
   ``N`` ranks compute the 1-process update (DDP averages the gradients, so each rank's loss is multiplied by
   ``N``). The reference policy (``beta > 0`` only; with ``beta = 0`` it is never loaded) is the ``--init``
   checkpoint, frozen. AdamW, gradient clipping at ``max_grad_norm``, bfloat16 autocast on CUDA (``bf16``).

Outputs in ``--out`` (rank 0): ``log.jsonl`` (one row per step: ``r1``, ``r1_coupled``, ``r2`` and every reward
component as ``r1/NAME``, ``r2/NAME`` (means over the step's rollouts); ``adv1_std``, ``adv2_std``, ``adv_absmean``;
``kl`` (mean k3 over loss tokens); ``clip_low``, ``clip_high`` (fractions of loss tokens clipped);
``entropy1``, ``entropy2`` (mean entropy of the constrained distributions over sampled tokens, first epoch);
``logprob_gap`` (mean ``|logp - old_logp|`` in the first minibatch, before any update: the rollout/training
numerics gap); ``kept_frac``, ``rounds``; ``tokens``, ``tokens_per_s``; ``t_rollout``, ``t_reward``, ``t_update``,
``seconds``), ``curves.png`` (rewards, KL, clipping, entropy), ``state.pt`` (training state, written atomically
every ``save_every`` steps and at the end: weights, optimizer, RNG, stream position), the final policy in the
:meth:`~reference_policy.policy.ReferencePolicy.save_pretrained` layout (``model/``, ``tokenizer/``, ``vqvae/``,
``policy.json``; weights in ``save_dtype``) and ``summary.json`` (config, steps, reward means of the first and the
last steps, seconds). Running the same command again resumes from ``state.pt`` (after a crash or SIGKILL) and
ends with the weights of an uninterrupted run (CPU; on CUDA up to non-deterministic kernels); ``state.pt`` can be
deleted once the run is finished.

``--smoke``: a tiny task for CI (:data:`~.config.SMOKE`, one intra-op thread): a tiny policy pretrained in-process on
16 samples (:func:`smoke_init`, about 20 s) into ``OUT/init`` unless ``--init`` is given, then 12 Hi-GRPO steps on
two prompts (about 30 s on a 2-core CPU), over which the step-2 reward rises (tested).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mme3dr.distributed import Ranks
from reference_policy.policy import ReferencePolicy
from reference_policy.rl import algos
from reference_policy.rl.batch import UpdateBatch, build_update_batch, group_kept
from reference_policy.rl.config import RESUMABLE_CHANGES, SAVE_DTYPES, SMOKE, HiGRPOConfig
from reference_policy.rl.rewards import step1_rewards, step2_rewards
from reference_policy.rl.rollout import Group, PromptStream, derive_seed, rollout_groups
from reference_policy.bundled import SFT
from reference_policy.trainutil import (Panel, RunLog, atomic_torch_save, device_arg, atomic_write_text, plot_curves,
                                        seed_all)

# ----- distributed --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist(Ranks):
    """Rank and world size (:class:`mme3dr.distributed.Ranks`; 1 process: rank 0 of 1, no process group), with the
    trainer's tensor reduction."""

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()


def init_distributed(device: str) -> tuple[Dist, str]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE > 1`` (gloo on the CPU, NCCL on CUDA, where rank ``r``
    uses ``cuda:LOCAL_RANK``); returns the rank info and the device of this process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), device
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device


# ----- the trainer -------------------------------------------------------------------------------------------------
class Trainer:
    """One run (module docstring); :meth:`run` trains until ``cfg.steps`` or the time budget."""

    def __init__(self, out: str | Path, cfg: HiGRPOConfig, init: str | Path, device: str = "cpu", seed: int = 0,
                 max_minutes: float | None = None, dist_info: Dist = Dist()) -> None:
        self.out, self.cfg, self.init, self.device, self.seed = Path(out), cfg, Path(init), device, seed
        self.max_minutes, self.dist = max_minutes, dist_info
        self.cuda = str(device).startswith("cuda")
        seed_all(seed, device)
        self.policy = ReferencePolicy.from_pretrained(self.init, device)
        self.model = self.policy.model
        self.ref = ReferencePolicy.from_pretrained(self.init, device).model.requires_grad_(False) if cfg.beta > 0 \
            else None
        self.ddp = self.model
        if dist_info.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, broadcast_buffers=False)
        self.opt = torch.optim.AdamW(self.model.parameters(), cfg.learning_rate, weight_decay=cfg.weight_decay)
        rewards = cfg.reward_config()
        self.rewards1 = step1_rewards(rewards) if cfg.step1_reward and cfg.paradigm == "hi-grpo" else None
        self.rewards2 = step2_rewards(rewards)
        self.stream = PromptStream(seed, cfg.prompt_pool)
        self.step, self.pos, self.seconds_before = 0, 0, 0.0
        rows: list[dict] = []
        if (self.out / "state.pt").exists():
            rows = self._resume()
        self.log = RunLog(self.out / "log.jsonl" if dist_info.main else None, echo=dist_info.main,
                          offset=self.seconds_before, rows=rows)
        if dist_info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.log.rewrite()

    # ----- state --------------------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"step": self.step, "pos": self.pos, "seconds": self.log.seconds, "config": asdict(self.cfg),
                "seed": self.seed, "init": str(self.init), "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if self.cuda else None}}

    def save_state(self) -> None:
        if self.dist.main:
            atomic_torch_save(self._state(), self.out / "state.pt")

    def _resume(self) -> list[dict]:
        state = torch.load(self.out / "state.pt", map_location=self.device, weights_only=False)
        diff = {k for k, v in asdict(self.cfg).items() if state["config"].get(k) != v} - RESUMABLE_CHANGES
        if diff or state["seed"] != self.seed:
            raise ValueError(f"{self.out / 'state.pt'} is a run with other settings ({sorted(diff) or 'seed'} "
                             f"differ); use another --out, or delete state.pt to start over")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if self.cuda and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.step, self.pos, self.seconds_before = state["step"], state["pos"], state["seconds"]
        return [r for r in RunLog.read(self.out / "log.jsonl") if r.get("step", -1) < self.step]

    # ----- one step -----------------------------------------------------------------------------------------------
    def collect(self) -> tuple[list[Group], dict]:
        """Rounds of rollouts until P prompts are kept (dynamic sampling) or the round cap; every rank gets every
        kept group."""
        cfg, p = self.cfg, self.cfg.prompts_per_step
        kept: list[Group] = []
        drawn: list[Group] = []
        t_rollout = t_reward = 0.0
        rounds = 0
        for rounds in range(1, (cfg.max_sampling_rounds if cfg.dynamic_sampling else 1) + 1):
            ks = list(range(self.pos, self.pos + p))
            self.pos += p
            mine = [int(k) for k in np.array_split(np.array(ks), self.dist.world)[self.dist.rank]]
            groups, tr, tw = rollout_groups(self.policy, self.stream, mine, cfg, self.seed, self.rewards1,
                                            self.rewards2)
            t_rollout, t_reward = t_rollout + tr, t_reward + tw
            every = [g for part in self.dist.everywhere(groups) for g in part]
            drawn += every
            kept += [g for g in every if group_kept(g, cfg)] if cfg.dynamic_sampling else every
            if len(kept) >= p:
                break
        stats = {"kept_frac": len(kept) / len(drawn), "rounds": rounds, "t_rollout": t_rollout,
                 "t_reward": t_reward,
                 "tokens": sum(len(s.ids) for g in drawn for s in g.step1)
                 + sum(len(s.ids) for g in drawn for kids in g.children for s in kids)}
        stats["r2"] = float(np.mean([g.r2.mean() for g in drawn]))
        if self.rewards1:
            stats["r1"] = float(np.mean([g.r1.mean() for g in drawn]))
        for key in drawn[0].components:
            stats[key] = float(np.mean([g.components[key] for g in drawn]))
        return kept[:p], stats

    def update(self, batch: UpdateBatch) -> dict:
        """``num_iterations`` epochs of ``num_minibatches`` optimizer steps; returns the step's statistics."""
        cfg, dev = self.cfg, self.device
        n = len(batch.segments)
        sums = {k: [0.0, 0.0] for k in UPDATE_STATS}

        def add(key: str, value: float, weight: float, total: float | None = None) -> None:
            """Accumulate ``value * weight`` (or ``total``) over ``weight``."""
            sums[key][0] += value * weight if total is None else total
            sums[key][1] += weight

        autocast = torch.autocast("cuda", torch.bfloat16, enabled=self.cuda and cfg.bf16)
        self.model.train()
        for epoch in range(cfg.num_iterations):
            order = np.random.default_rng(derive_seed(self.seed, self.step, epoch, 99)).permutation(n)
            for mb, rows in enumerate(np.array_split(order, cfg.num_minibatches)):
                counts = [batch.mask1[rows].sum(), (batch.mask1[rows].sum(-1) > 0).sum(),
                          batch.mask2[rows].sum(), (batch.mask2[rows].sum(-1) > 0).sum()]
                n_tok1, n_seq1, n_tok2, n_seq2 = (max(float(c), 1.0) for c in counts)
                mine = np.array_split(rows, self.dist.world)[self.dist.rank]
                empty = len(mine) == 0
                if empty:  # a rank without rows still joins the gradient all-reduce, with a zero loss
                    mine = rows[:1]
                idx = torch.as_tensor(mine)
                ctx = [batch.contexts[i] for i in mine]
                seg = [batch.segments[i] for i in mine]
                with autocast:
                    scores = self.policy.sequence_logprobs(ctx, seg, cfg.temperature, entropy=epoch == 0,
                                                           model=self.ddp)
                    ref = None
                    if self.ref is not None:
                        with torch.no_grad():
                            ref = self.policy.sequence_logprobs(ctx, seg, cfg.temperature, model=self.ref).logprobs
                t = scores.logprobs.shape[1]
                logp = scores.logprobs
                old, adv = batch.old_logp[idx, :t].to(dev), batch.adv[idx, :t].to(dev)
                m1, m2 = batch.mask1[idx, :t].to(dev), batch.mask2[idx, :t].to(dev)
                common = dict(epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                              importance_sampling_level=cfg.importance_sampling_level,
                              loss_agg_mode=cfg.loss_agg_mode, ref_logp=ref, beta=cfg.beta)
                l2 = algos.policy_loss(logp, old, adv, m2, n_tokens=n_tok2, n_seqs=n_seq2, **common)
                loss = l2.loss
                parts = [(l2, m2)]
                if cfg.paradigm == "hi-grpo":
                    l1 = algos.policy_loss(logp, old, adv, m1, n_tokens=n_tok1, n_seqs=n_seq1, **common)
                    loss = loss + l1.loss
                    parts.append((l1, m1))
                loss = loss * (0.0 if empty else float(self.dist.world))
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.opt.step()
                if self.dist.main:  # the same on every rank: counted once
                    add("grad_norm", float(grad_norm), 1.0)
                # this rank's share of the minibatch loss; the shares sum to it, one count per minibatch
                add("loss", 0.0, 1.0 if self.dist.main else 0.0, total=loss.item() / self.dist.world)
                if empty:
                    continue
                for part, m in parts:
                    w = float(m.sum())
                    add("clip_low", part.clip_low, w)
                    add("clip_high", part.clip_high, w)
                    add("ratio", part.ratio_mean, w)
                    if ref is not None:
                        add("kl", part.kl, w)
                if epoch == 0:
                    s1 = batch.sampled1[idx, :t].to(dev)
                    s2 = batch.sampled2[idx, :t].to(dev)
                    add("entropy1", float(algos.masked_mean(scores.entropy, s1)), float(s1.sum()))
                    add("entropy2", float(algos.masked_mean(scores.entropy, s2)), float(s2.sum()))
                    if mb == 0:
                        live = s1 | s2
                        add("logprob_gap", float(algos.masked_mean((logp.detach() - old).abs(), live)),
                            float(live.sum()))
        totals = self.dist.sum([v for k in UPDATE_STATS for v in sums[k]], dev)
        return {k: totals[2 * i] / totals[2 * i + 1] for i, k in enumerate(UPDATE_STATS) if totals[2 * i + 1] > 0}

    def train_step(self) -> dict:
        start = time.perf_counter()
        groups, stats = self.collect()
        row = {"step": self.step, **stats}
        t_update = 0.0
        if groups:
            batch = build_update_batch(groups, self.cfg)
            row.update(batch.stats)
            t0 = time.perf_counter()
            row.update(self.update(batch))
            t_update = time.perf_counter() - t0
        else:
            row["skipped"] = "no group with reward spread"
        row["t_update"] = t_update
        row["tokens_per_s"] = row["tokens"] / max(time.perf_counter() - start, 1e-9)
        return row

    # ----- run ----------------------------------------------------------------------------------------------------
    def out_of_time(self) -> bool:
        """The budget is spent (decided together: true on every rank when true on one)."""
        late = self.max_minutes is not None and self.log.seconds > 60 * self.max_minutes
        return self.dist.sum([float(late)], torch.device(self.device))[0] > 0

    def run(self) -> dict:
        stopped, saved = None, self.step
        while self.step < self.cfg.steps:
            if self.out_of_time():
                stopped = "max_minutes"
                break
            row = self.train_step()
            self.step += 1
            self.log(**{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
            if self.step % self.cfg.save_every == 0:
                self.save_state()
                saved = self.step
        if saved != self.step or not (self.out / "state.pt").exists():
            self.save_state()
        return self.finish(stopped)

    def finish(self, stopped: str | None) -> dict:
        """Rank 0 writes the final policy, ``curves.png`` and ``summary.json``; returns the summary."""
        summary = summarise(self.log.rows, self.cfg, self.step, self.log.seconds)
        summary.update({"seed": self.seed, "init": str(self.init), "world_size": self.dist.world,
                        "device": torch.cuda.get_device_name(self.device) if self.cuda else "cpu",
                        "stopped_early": stopped})
        if self.dist.main:
            save_policy(self.policy, self.out, self.cfg.save_dtype)
            if self.log.rows:
                plot_curves(self.log.rows, CURVE_PANELS, self.out / "curves.png")
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1))
        return summary


#: Statistics of :meth:`Trainer.update` (means over the step's minibatches, weighted by loss tokens).
UPDATE_STATS = ("loss", "grad_norm", "clip_low", "clip_high", "ratio", "kl", "entropy1", "entropy2", "logprob_gap")
CURVE_PANELS = (Panel("reward", ("r1", "r1_coupled", "r2")), Panel("KL to the reference (k3)", ("kl",)),
                Panel("clipped token fraction", ("clip_low", "clip_high")),
                Panel("entropy", ("entropy1", "entropy2")))


def summarise(rows: Sequence[dict], cfg: HiGRPOConfig, steps: int, seconds: float) -> dict:
    """Config, steps and the reward means of the first and the last ``max(1, steps // 10)`` logged steps."""
    width = max(1, len(rows) // 10)
    keys = sorted({k for r in rows for k in r if k == "r1" or k == "r2" or k.startswith(("r1/", "r2/"))})

    def means(part: Sequence[dict]) -> dict[str, float]:
        return {k: float(np.mean([r[k] for r in part if k in r])) for k in keys if any(k in r for r in part)}

    return {"config": asdict(cfg), "steps": steps, "seconds": round(seconds, 1), "window": width,
            "first": means(rows[:width]), "final": means(rows[-width:])}


def save_policy(policy: ReferencePolicy, out: Path, dtype: str = "float32") -> None:
    """``policy.save_pretrained(out)`` with the model weights stored in ``dtype``."""
    model = copy.deepcopy(policy.model).to(device="cpu", dtype=SAVE_DTYPES[dtype])
    ReferencePolicy(model, policy.tokenizer, policy.vqvae.to("cpu"), policy.max_plan).save_pretrained(out)
    policy.vqvae.to(policy.device)


# ----- command line ------------------------------------------------------------------------------------------------
def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def smoke_init(out: Path, seed: int) -> Path:
    """The smoke run's starting policy in ``out / "init"`` (kept when it exists): ``pretrain.SMOKE`` (16 samples,
    tiny VQ-VAE and 1-layer 32-wide policy) with 200 policy steps, so that the policy draws object-like grids of
    its 16 training objects (about 20 s on a 2-core CPU)."""
    from reference_policy.pretrain import SMOKE as PRETRAIN_SMOKE
    from reference_policy.pretrain import pretrain

    folder = out / "init"
    if not (folder / "policy.json").exists():
        pretrain(folder, replace(PRETRAIN_SMOKE, steps=200, batch=4, lr=5e-3, warmup=20, log_every=50), seed=seed)
    return folder


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder (resumed when it holds state.pt)")
    ap.add_argument("--init", help=f"starting checkpoint and KL reference (default {SFT}; with --smoke a "
                                   "tiny policy pretrained into OUT/init)")
    ap.add_argument("--device", default="cpu", type=device_arg, help="cpu, cuda or cuda:K")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU task for CI (SMOKE)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, help="wall-clock budget of the run (resumed runs included)")
    for f in fields(HiGRPOConfig):
        kind = _parse_bool if f.type in ("bool", bool) else {"int": int, "float": float}.get(str(f.type), str)
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None,
                        help=f"default {f.default} ({SMOKE.__dict__[f.name]} with --smoke)")
    a = ap.parse_args(argv)
    if a.smoke:  # the tiny model gains nothing from intra-op threads, and they thrash on a busy machine
        torch.set_num_threads(1)
    base = SMOKE if a.smoke else HiGRPOConfig()
    try:
        cfg = replace(base, **{f.name: getattr(a, f.name) for f in fields(HiGRPOConfig)
                               if getattr(a, f.name) is not None})
    except ValueError as exc:
        ap.error(str(exc))
    info, device = init_distributed(a.device)
    out = Path(a.out)
    try:
        if a.smoke and not a.init:
            if info.main:
                out.mkdir(parents=True, exist_ok=True)
                smoke_init(out, a.seed)
            if info.world > 1:
                dist.barrier()
            init = out / "init"
        else:
            init = Path(a.init) if a.init else SFT
        summary = Trainer(out, cfg, init, device, a.seed, a.max_minutes, info).run()
        if info.main:
            print(json.dumps(summary, indent=1))
        return summary
    finally:
        if info.world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
