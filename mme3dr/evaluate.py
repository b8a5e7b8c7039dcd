"""``mme3dr evaluate``: generate -> render -> score -> report, resumable, under one run lock.

Every stage is content-addressed and skips finished work: generations by (model spec, prompt id, seed) -- the run
folder holds one model spec and seed --, renders by (asset sha256, preset hash), scores by (metric config hash,
preset hash, asset sha256). Records are appended with fsync and files replaced atomically, so after a crash (even
SIGKILL or a full disk) the same command continues where it stopped, and on a finished run it does no work: taking
the run lock ends the generator programs and removes the temporary files a killed run left
(:mod:`mme3dr.runlock`), each stage cuts a torn last line off its log (:func:`mme3dr.jsonl.repair_tail`), and a
render with a damaged file is rendered again (:func:`mme3dr.render.output.render_intact`).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mme3dr import runfiles
from mme3dr.adapters import ModelSpec, coerce_model_args, create_generator
from mme3dr.data import load_benchmark
from mme3dr.defaults import DEFAULTS
from mme3dr.distributed import Ranks
from mme3dr.generation import GenerationSummary, generate_run, read_generations
from mme3dr.metrics.specs import ScoreOptions
from mme3dr.render.presets import RenderPreset, get_preset
from mme3dr.render.runs import RenderSummary, render_run
from mme3dr.runinfo import update_run_info
from mme3dr.runlock import run_lock
from mme3dr.score_records import read_scores
from mme3dr.scoring import ScoreSummary, build_metrics, no_weights_hint, parse_metrics, score_run
from mme3dr.weights import WeightsCheck


@dataclass
class EvaluationSummary:
    generation: GenerationSummary
    render: RenderSummary
    score: ScoreSummary
    report: Path | None
    timings: dict[str, float]

    def lines(self) -> list[str]:
        out = self.generation.lines() + self.render.lines() + self.score.lines()
        if self.report:
            out.append(f"report: {self.report}")
        out.append("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items()))
        return out

    @property
    def work_done(self) -> int:
        """Prompts generated + assets rendered + records scored in this call (0 on a finished run)."""
        return self.generation.generated + self.generation.failed + self.render.rendered + sum(self.score.scored.values())


def _metric_configs(run_dir: Path) -> dict[str, Any]:
    configs: dict[str, Any] = {}
    for r in read_scores(run_dir):
        configs.setdefault(r.metric, {"config_hash": r.config_hash, "config": r.config})
    return configs


def evaluate(model: str, out: Path | str, model_args: dict[str, Any] | None = None,
             metrics: Sequence[str] = DEFAULTS.metrics, reference: Path | str | None = None,
             categories: Sequence[str] | None = None, limit: int | None = None, seed: int = DEFAULTS.seed,
             preset: RenderPreset | None = None, options: ScoreOptions | None = None, source: str | None = None,
             workers: int = DEFAULTS.render_workers, report: bool = True, progress: bool = True,
             retry_failed: bool = False, score_workers: int = DEFAULTS.score_workers,
             ranks: Ranks = Ranks()) -> EvaluationSummary:
    """Run the whole benchmark for one model into ``out`` (see the module docstring). ``workers``: rendering
    processes; ``score_workers``: processes of the CPU-only metrics (geometry; :func:`~mme3dr.scoring.score_run`).
    ``ranks`` (:mod:`mme3dr.distributed`, under ``torchrun``): rank 0 generates, holds the run lock, writes
    ``run.json`` and the report; every rank renders and scores its share of the prompts.

    Before anything is written (the run folder is not even created), the prompts, the model and its arguments, the
    reference set and every weight are checked; all missing weights (the generator's and every metric's) are named
    in one :class:`~mme3dr.weights.MissingWeightsError`.
    """
    out = Path(out)
    model_args = coerce_model_args(model, model_args or {})
    preset = preset or get_preset(DEFAULTS.preset)
    metrics = parse_metrics(metrics)
    bench = load_benchmark(categories=categories, limit=limit, source=source)
    generator = create_generator(model, **model_args)
    check = WeightsCheck()
    check.attempt(f"model {model}", generator.check)
    built = build_metrics(metrics, preset, reference, options, check)
    check.raise_if_missing(no_weights_hint(metrics))
    with run_lock(out) if ranks.main else nullcontext():
        spec = ModelSpec(model, model_args)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        gen = GenerationSummary(out, len(bench), 0, 0, 0, 0.0)  # rank 0's is the real one
        if ranks.main:
            update_run_info(out, model=spec.to_dict(), seed=seed, preset={"name": preset.name, "hash": preset.hash,
                            "tag": preset.tag, "params": preset.params()}, metrics=list(metrics),
                            reference=None if reference is None else str(reference))  # generate_run adds prompts
            gen = generate_run(generator, bench, out, seed=seed, model_spec=spec, progress=progress,
                               retry_failed=retry_failed)
        ranks.barrier()  # the other ranks wait for the generations
        timings["generate"] = time.perf_counter() - t
        t = time.perf_counter()
        ren = render_run(out, preset, workers=workers, progress=progress, ranks=ranks)
        timings["render"] = time.perf_counter() - t
        t = time.perf_counter()
        sco = score_run(out, metrics, preset, reference, options, progress, built, workers=score_workers, ranks=ranks)
        timings["score"] = time.perf_counter() - t
        report_dir = None
        if report and ranks.main:
            from mme3dr.report import build_report

            t = time.perf_counter()
            report_dir = build_report([out], out / runfiles.REPORT_DIR).folder
            timings["report"] = time.perf_counter() - t
        if ranks.main:
            update_run_info(out, metric_configs=_metric_configs(out),
                            timings={k: round(v, 3) for k, v in timings.items()},
                            counts={"prompts": len(bench),
                                    "generated_ok": sum(g.ok for g in read_generations(out).values())})
    return EvaluationSummary(gen, ren, sco, report_dir, timings)
