"""Supervised pretraining of the reference policy: ``python -m reference_policy.pretrain --out DIR [--smoke]
[--device cuda] [--steps N] [--vq-steps N] [--samples N] [--seed S]``.

Stages (all seeded with ``--seed``; deterministic on CPU):

1. data: ``generate(samples, "train", seed)`` world samples;
2. tokenizer: trained on every prompt, semantic plan and detail plan of the data;
3. VQ-VAE: ``vq_steps`` AdamW steps on random batches of grids (:meth:`ColourVQVAE.loss`), then the data is encoded
   to (64 coarse, 512 fine) codes; occupancy IoU / colour accuracy of the reconstructions are reported;
4. policy: ``steps`` AdamW steps of teacher forcing on the full two-step sequence
   (:meth:`ReferencePolicy.training_ids`, one of the sample's three prompts at random); the loss is the mean
   next-token cross entropy over the generated segments of both steps (prompt and padding masked);
5. ``save_pretrained(out)``; ``out/log.jsonl`` has one record per logged step (``stage``, ``step``, losses) and
   ``out/metrics.json`` the final numbers.

Sizes: the default (full) run is 4,000 samples, VQ-VAE width 32 with codebooks 64/256 for 3,000 steps, and a
4-layer, 256-wide Qwen2 for 4,000 steps of batch 16 (sized for one GPU in roughly 25 minutes; not yet timed).
``--smoke`` is tiny (16 samples, width 8, codebooks 16/32, occupied weight 10 so that
40 VQ steps already decode non-empty grids, 1-layer 32-wide model, 6 policy steps) and runs in
seconds on a CPU; it checks the plumbing, not quality.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reference_policy.policy import ReferencePolicy, detail_plan
from reference_policy.tokenizer import PAD, TextTokenizer
from reference_policy.vqvae import ColourVQVAE, VQConfig, colour_accuracy, reconstruction_iou
from reference_policy.world import WorldSample, generate


@dataclass(frozen=True)
class PretrainConfig:
    samples: int = 4000
    vq: VQConfig = VQConfig()
    vq_steps: int = 3000
    vq_batch: int = 32
    vq_lr: float = 2e-3
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    max_plan: int = 96
    steps: int = 4000
    batch: int = 16
    lr: float = 5e-4
    log_every: int = 50


SMOKE = PretrainConfig(samples=16, vq=VQConfig(width=8, code_dim=8, n_coarse=16, n_fine=32, occupied_weight=10.0),
                       vq_steps=40, vq_batch=4, vq_lr=5e-3, hidden=32, layers=1, heads=2, max_plan=32, steps=6, batch=2,
                       lr=2e-3, log_every=2)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train_vqvae(grids: np.ndarray, cfg: PretrainConfig, device: str, log: list[dict]) -> ColourVQVAE:
    """AdamW on random batches of ``grids``; returns the model in eval mode."""
    model = ColourVQVAE(cfg.vq).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), cfg.vq_lr)
    rng = np.random.default_rng(0)
    data = torch.as_tensor(grids, device=device)
    for step in range(cfg.vq_steps):
        out = model.loss(data[torch.as_tensor(rng.integers(len(grids), size=cfg.vq_batch), device=device)])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.vq_steps - 1:
            log.append({"stage": "vqvae", "step": step, "loss": out.loss.item(), "recon": out.recon,
                        "recon_coarse": out.recon_coarse, "vq": out.vq})
    return model.eval()


def _batch(rows: list[tuple[list[int], int]], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 on the prompt and padding)."""
    n = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), n), PAD, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    for i, (seq, start) in enumerate(rows):
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, start:len(seq)] = ids[i, start:len(seq)]
    return ids.to(device), (ids != PAD).long().to(device), labels.to(device)


def train_policy(policy: ReferencePolicy, samples: list[WorldSample], codes: tuple[np.ndarray, np.ndarray],
                 cfg: PretrainConfig, device: str, log: list[dict]) -> None:
    """Teacher forcing on the two-step sequences; linear learning-rate decay to 0."""
    model = policy.model.train()
    opt = torch.optim.AdamW(model.parameters(), cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / cfg.steps)
    rng = np.random.default_rng(1)
    for step in range(cfg.steps):
        rows = []
        for i in rng.integers(len(samples), size=cfg.batch):
            s = samples[i]
            prompt = s.prompts[int(rng.integers(len(s.prompts)))]
            rows.append(policy.training_ids(prompt, s.plan, detail_plan(s.parts), codes[0][i], codes[1][i]))
        ids, mask, labels = _batch(rows, device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            log.append({"stage": "policy", "step": step, "loss": loss.item()})
    model.eval()


def pretrain(out: str | Path, cfg: PretrainConfig, device: str = "cpu", seed: int = 0) -> dict:
    """Run all stages of the module docstring into ``out``; returns the final metrics."""
    _seed_all(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log: list[dict] = []
    samples = generate(cfg.samples, "train", seed)
    texts = [t for s in samples for t in (*s.prompts, s.plan, detail_plan(s.parts))]
    tokenizer = TextTokenizer.train(texts, cfg.vq.n_coarse, cfg.vq.n_fine)
    grids = np.stack([s.grid for s in samples])
    vqvae = train_vqvae(grids, cfg, device, log)
    coarse, fine = zip(*(vqvae.encode(grids[i:i + 64]) for i in range(0, len(grids), 64)))
    codes = (np.concatenate(coarse), np.concatenate(fine))
    recon = np.concatenate([vqvae.decode(codes[0][i:i + 64], codes[1][i:i + 64]) for i in range(0, len(grids), 64)])
    model = ReferencePolicy.build_model(tokenizer, cfg.hidden, cfg.layers, cfg.heads, seed=seed).to(device)
    policy = ReferencePolicy(model, tokenizer, vqvae, cfg.max_plan)
    train_policy(policy, samples, codes, cfg, device, log)
    policy.save_pretrained(out)
    metrics = {
        "vq_iou": float(np.mean([reconstruction_iou(r, g) for r, g in zip(recon, grids)])),
        "vq_colour_accuracy": float(np.mean([colour_accuracy(r, g) for r, g in zip(recon, grids)])),
        "coarse_codes_used": int(len(np.unique(codes[0]))), "fine_codes_used": int(len(np.unique(codes[1]))),
        "vq_final_loss": next(r["loss"] for r in reversed(log) if r["stage"] == "vqvae"),
        "policy_final_loss": log[-1]["loss"], "seconds": time.time() - t0,
    }
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, help="policy steps")
    ap.add_argument("--vq-steps", type=int)
    ap.add_argument("--samples", type=int)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    cfg = SMOKE if a.smoke else PretrainConfig()
    overrides = {k: v for k, v in (("steps", a.steps), ("vq_steps", a.vq_steps), ("samples", a.samples))
                 if v is not None}
    cfg = PretrainConfig(**{**cfg.__dict__, **overrides})
    print(json.dumps(pretrain(a.out, cfg, a.device, a.seed), indent=1))


if __name__ == "__main__":
    main()
