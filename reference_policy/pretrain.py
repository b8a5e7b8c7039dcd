"""Supervised pretraining of the reference policy: ``python -m reference_policy.pretrain --out DIR [--smoke]
[--device cuda] [--steps N] [--vq-steps N] [--samples N] [--seed S]``.

Stages (all seeded with ``--seed``; deterministic on CPU):

1. data: ``samples`` training-split world samples, drawn in chunks of :data:`CHUNK` (chunk ``k`` is
   ``generate(n, "train", seed * 1_000_003 + k)``) on ``--workers`` processes, so the data does not depend on
   the number of workers;
2. tokenizer: trained on every prompt, semantic plan and detail plan of the data;
3. VQ-VAE: ``vq_steps`` AdamW steps on random batches of grids (:meth:`ColourVQVAE.loss`), then the data is encoded
   to (64 coarse, 512 fine) codes; occupancy IoU / colour accuracy of the reconstructions are reported;
4. policy: ``steps`` AdamW steps of teacher forcing on the full two-step sequence
   (:meth:`ReferencePolicy.training_ids`, one of the sample's three prompts at random); the loss is the mean
   next-token cross entropy over the generated segments of both steps (prompt and padding masked); the learning
   rate warms up linearly for ``warmup`` steps and then decays linearly to 0; bfloat16 autocast on CUDA;
5. ``save_pretrained(out)``; ``out/log.jsonl`` has one record per logged step (``stage``, ``step``, losses,
   ``seconds``), ``out/loss_curves.png`` plots them and ``out/metrics.json`` holds the final numbers, including
   the VQ-VAE reconstruction IoU on :data:`HELDOUT_VQ` held-out-split shapes.

Sizes: the default (full) run is 40,000 samples, VQ-VAE width 48 with codebooks 128/512, and a 4-layer, 384-wide
Qwen2 (6.3 M parameters: CPU decoding of 20 prompts takes seconds); step counts are in :class:`PretrainConfig`.
``--smoke`` is tiny (16 samples, width 8, codebooks 16/32, occupied weight 10 so that
60 VQ steps already decode non-empty grids, 1-layer 32-wide model, 6 policy steps) and runs in
seconds on a CPU; it checks the plumbing, not quality.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from reference_policy.policy import MAX_PROMPT, ReferencePolicy, detail_plan
from reference_policy.tokenizer import PAD, UNK, TextTokenizer
from reference_policy.trainutil import Panel, RunLog, device_arg, plot_curves, seed_all
from reference_policy.vqvae import ColourVQVAE, VQConfig, colour_accuracy, reconstruction_iou
from reference_policy.world import WorldSample, generate

CHUNK = 500
HELDOUT_VQ = 500
#: With ``max_minutes``, the VQ-VAE stage stops early at this share of the budget, the policy stage at the end.
VQ_SHARE = 0.4


@dataclass(frozen=True)
class PretrainConfig:
    samples: int = 40000
    vq: VQConfig = VQConfig(width=48, code_dim=16, n_coarse=128, n_fine=512)
    vq_steps: int = 8000
    vq_batch: int = 64
    vq_lr: float = 2e-3
    hidden: int = 384
    layers: int = 4
    heads: int = 6
    max_plan: int = 96
    steps: int = 6000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    prompt_noise: float = 0.5
    log_every: int = 50


SMOKE = PretrainConfig(samples=16, vq=VQConfig(width=8, code_dim=8, n_coarse=16, n_fine=32, occupied_weight=10.0),
                       vq_steps=60, vq_batch=4, vq_lr=5e-3, hidden=32, layers=1, heads=2, max_plan=32, steps=6, batch=2,
                       lr=2e-3, warmup=2, log_every=2)


def _chunk(args: tuple[int, int]) -> list[WorldSample]:
    n, seed = args
    return generate(n, "train", seed)


def world_data(n: int, seed: int, workers: int = 1) -> list[WorldSample]:
    """``n`` training samples in chunks of :data:`CHUNK` (see the module docstring), on ``workers`` processes."""
    jobs = [(min(CHUNK, n - lo), seed * 1_000_003 + k) for k, lo in enumerate(range(0, n, CHUNK))]
    if workers <= 1 or len(jobs) == 1:
        return [s for job in jobs for s in _chunk(job)]
    with ProcessPoolExecutor(workers) as pool:
        return [s for chunk in pool.map(_chunk, jobs) for s in chunk]


def train_vqvae(grids: np.ndarray, cfg: PretrainConfig, device: str, log: RunLog,
                deadline: float = float("inf")) -> ColourVQVAE:
    """AdamW on random batches of ``grids`` (constant learning rate, then linear decay to 0 over the second half);
    stops early, and logs it, once ``time.time()`` passes ``deadline``. Returns the model in eval mode."""
    model = ColourVQVAE(cfg.vq).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), cfg.vq_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, 2.0 - 2.0 * s / cfg.vq_steps))
    rng = np.random.default_rng(0)
    data = torch.as_tensor(grids, device=device)
    for step in range(cfg.vq_steps):
        out = model.loss(data[torch.as_tensor(rng.integers(len(grids), size=cfg.vq_batch), device=device)])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
        late = time.time() > deadline and step < cfg.vq_steps - 1
        if step % cfg.log_every == 0 or step == cfg.vq_steps - 1 or late:
            log(stage="vqvae", step=step, loss=out.loss.item(), recon=out.recon, recon_coarse=out.recon_coarse,
                vq=out.vq)
        if late:
            log(stage="vqvae", step=step, stopped_early="deadline", loss=out.loss.item())
            break
    return model.eval()


def encode_all(vqvae: ColourVQVAE, grids: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(coarse ``[N, 64]``, fine ``[N, 512]``) codes of every grid."""
    coarse, fine = zip(*(vqvae.encode(grids[i:i + batch]) for i in range(0, len(grids), batch)))
    return np.concatenate(coarse), np.concatenate(fine)


def reconstruction_scores(vqvae: ColourVQVAE, grids: np.ndarray) -> dict[str, float]:
    """Mean occupancy IoU and colour accuracy of :meth:`ColourVQVAE.reconstruct` over ``grids``."""
    recon = vqvae.reconstruct(grids)
    return {"iou": float(np.mean([reconstruction_iou(r, g) for r, g in zip(recon, grids)])),
            "colour_accuracy": float(np.mean([colour_accuracy(r, g) for r, g in zip(recon, grids)]))}


class Sequences:
    """Every training sequence of the data, tokenised once: ``heads[i][j]`` = prompt ``j`` of sample ``i`` (with
    ``<bos>``), ``tails[i]`` = the two generated segments of sample ``i`` (the same for its three prompts).

    Prompt noise (so that free-form prompts with unknown or extra words still condition the policy): with
    probability ``noise`` a prompt is perturbed word by word (dropped with probability 0.1, replaced by ``<unk>``
    with probability 0.1) and ``Poisson(2)`` extra tokens are inserted at random places, each ``<unk>`` or a random
    vocabulary word with equal probability."""

    def __init__(self, policy: ReferencePolicy, samples: list[WorldSample], codes: tuple[np.ndarray, np.ndarray],
                 noise: float = 0.0):
        self.noise = noise
        self.words = (policy.tokenizer.word_offset, policy.tokenizer.vocab_size)
        self.heads: list[list[np.ndarray]] = []
        self.tails: list[np.ndarray] = []
        for i, s in enumerate(samples):
            ids, start = policy.training_ids(s.prompts[0], s.plan, detail_plan(s.parts), codes[0][i], codes[1][i])
            self.tails.append(np.asarray(ids[start:], np.int32))
            self.heads.append([np.asarray(policy.prompt_ids(p), np.int32) for p in s.prompts])

    def batch(self, rng: np.random.Generator, size: int, device: str
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``size`` random (sample, prompt) sequences: right-padded ids, attention mask and labels (-100 on the
        prompt and the padding, so the loss covers the generated segments of both steps)."""
        rows = []
        for i in rng.integers(len(self.tails), size=size):
            heads = self.heads[i]
            head = heads[int(rng.integers(len(heads)))]
            rows.append((self._perturb(head, rng) if rng.random() < self.noise else head, self.tails[i]))
        n = max(len(h) + len(t) for h, t in rows)
        ids = np.full((size, n), PAD, np.int64)
        labels = np.full((size, n), -100, np.int64)
        for r, (h, t) in enumerate(rows):
            ids[r, :len(h)] = h
            ids[r, len(h):len(h) + len(t)] = t
            labels[r, len(h):len(h) + len(t)] = t
        ids_t = torch.from_numpy(ids)
        return ids_t.to(device), (ids_t != PAD).long().to(device), torch.from_numpy(labels).to(device)

    def _perturb(self, head: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The prompt noise of the class docstring (``<bos>`` kept)."""
        words = [UNK if x < 0.2 else int(w) for w, x in zip(head[1:], rng.random(len(head) - 1)) if x >= 0.1]
        for _ in range(int(rng.poisson(2.0))):
            extra = UNK if rng.random() < 0.5 else int(rng.integers(*self.words))
            words.insert(int(rng.integers(len(words) + 1)), extra)
        return np.asarray([head[0], *words][:1 + MAX_PROMPT], np.int32)


def train_policy(policy: ReferencePolicy, samples: list[WorldSample], codes: tuple[np.ndarray, np.ndarray],
                 cfg: PretrainConfig, device: str, log: RunLog, deadline: float = float("inf")) -> int:
    """Teacher forcing on the two-step sequences; linear warm-up, then linear decay to 0. Stops early (and says
    so in the log) once ``time.time()`` passes ``deadline``; returns the number of steps taken."""
    model = policy.model.train()
    data = Sequences(policy, samples, codes, cfg.prompt_noise)
    opt = torch.optim.AdamW(model.parameters(), cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / cfg.warmup, (cfg.steps - s) / max(1, cfg.steps - cfg.warmup)))
    rng = np.random.default_rng(1)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=str(device).startswith("cuda"))
    step = 0
    for step in range(cfg.steps):
        ids, mask, labels = data.batch(rng, cfg.batch, device)
        with autocast:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        late = time.time() > deadline and step < cfg.steps - 1
        if step % cfg.log_every == 0 or step == cfg.steps - 1 or late:
            log(stage="policy", step=step, loss=loss.item(), lr=sched.get_last_lr()[0])
        if late:
            log(stage="policy", step=step, stopped_early="deadline", loss=loss.item())
            break
    model.eval()
    return step + 1


#: The two panels of ``loss_curves.png``.
LOSS_PANELS = (Panel("vqvae", ("loss", "recon", "recon_coarse"), lambda r: r.get("stage") == "vqvae", yscale="log"),
               Panel("policy (teacher forcing)", ("loss",), lambda r: r.get("stage") == "policy", yscale="log"))


def pretrain(out: str | Path, cfg: PretrainConfig, device: str = "cpu", seed: int = 0, workers: int = 1,
             max_minutes: float | None = None) -> dict:
    """Run all stages of the module docstring into ``out``; returns the final metrics. ``max_minutes`` bounds the
    training time: the VQ-VAE stops early at :data:`VQ_SHARE` of it, the policy at all of it (the checkpoint is
    saved all the same, and ``metrics.json`` records the steps taken)."""
    seed_all(seed, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "log.jsonl")
    log.rewrite()
    samples = world_data(cfg.samples, seed, workers)
    log(stage="data", step=0, samples=len(samples))
    texts = [t for s in samples for t in (*s.prompts, s.plan, detail_plan(s.parts))]
    tokenizer = TextTokenizer.train(texts, cfg.vq.n_coarse, cfg.vq.n_fine)
    grids = np.stack([s.grid for s in samples])
    budget = 60 * max_minutes if max_minutes else float("inf")
    vqvae = train_vqvae(grids, cfg, device, log, log.t0 + VQ_SHARE * budget)
    codes = encode_all(vqvae, grids)
    train_recon = reconstruction_scores(vqvae, grids[:HELDOUT_VQ])
    held = np.stack([s.grid for s in generate(HELDOUT_VQ if cfg.samples >= HELDOUT_VQ else 8, "heldout", seed + 1)])
    held_recon = reconstruction_scores(vqvae, held)
    log(stage="codes", step=0, iou_heldout=held_recon["iou"])
    model = ReferencePolicy.build_model(tokenizer, cfg.hidden, cfg.layers, cfg.heads, seed=seed).to(device)
    policy = ReferencePolicy(model, tokenizer, vqvae, cfg.max_plan)
    policy_steps = train_policy(policy, samples, codes, cfg, device, log, log.t0 + budget)
    policy.to("cpu").save_pretrained(out)
    metrics = {
        "config": {k: (v.__dict__ if isinstance(v, VQConfig) else v) for k, v in cfg.__dict__.items()},
        "device": torch.cuda.get_device_name() if str(device).startswith("cuda") else "cpu",
        "parameters_policy": sum(p.numel() for p in model.parameters()),
        "parameters_vqvae": sum(p.numel() for p in vqvae.parameters()),
        "vocab_size": tokenizer.vocab_size,
        "vq_iou_train": train_recon["iou"], "vq_colour_accuracy_train": train_recon["colour_accuracy"],
        "vq_iou_heldout": held_recon["iou"], "vq_colour_accuracy_heldout": held_recon["colour_accuracy"],
        "heldout_shapes": len(held),
        "coarse_codes_used": int(len(np.unique(codes[0]))), "fine_codes_used": int(len(np.unique(codes[1]))),
        "vq_final_loss": next(r["loss"] for r in reversed(log.rows) if r["stage"] == "vqvae"),
        "vq_steps_taken": next(r["step"] for r in reversed(log.rows) if r["stage"] == "vqvae") + 1,
        "policy_steps": policy_steps, "policy_final_loss": log.rows[-1]["loss"], "seconds": time.time() - log.t0,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plot_curves(log.rows, LOSS_PANELS, out / "loss_curves.png")
    return metrics


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--device", default="cpu", type=device_arg)
    ap.add_argument("--workers", type=int, default=1, help="processes drawing the world data")
    ap.add_argument("--steps", type=int, help="policy steps")
    ap.add_argument("--vq-steps", type=int)
    ap.add_argument("--samples", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, help="stop the policy stage early at this total time")
    a = ap.parse_args(argv)
    cfg = SMOKE if a.smoke else PretrainConfig()
    overrides = {k: v for k, v in (("steps", a.steps), ("vq_steps", a.vq_steps), ("samples", a.samples))
                 if v is not None}
    print(json.dumps(pretrain(a.out, replace(cfg, **overrides), a.device, a.seed, a.workers,
                                     a.max_minutes), indent=1))


if __name__ == "__main__":
    main()
