"""Run a generator over prompts and record every outcome in ``RUN/generations.jsonl``.

Each prompt gets ``RUN/assets/<prompt_id>/`` as its output folder. A record is appended (and fsynced) as soon
as its batch returns, so a crash loses nothing finished; running the same command again skips prompts that
already have an asset (and, with ``retry_failed``, retries the failed ones). At the end the log is compacted to one
record per prompt.
"""

from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mme3dr import runfiles
from mme3dr.adapters import GenerationRequest, GenerationResult, Generator, ModelSpec
from mme3dr.adapters.base import stops_the_run
from mme3dr.data import Benchmark, PromptRecord
from mme3dr.defaults import DEFAULTS
from mme3dr.errors import InputError
from mme3dr.jsonl import append_jsonl, read_jsonl, repair_tail, write_jsonl
from mme3dr.paths import child_path
from mme3dr.runinfo import update_run_info


class RunConflictError(InputError):
    """The run folder already holds generations made with another model spec or seed."""


@dataclass
class GenerationRecord:
    """One line of ``generations.jsonl``. ``asset_path`` is relative to the run folder when inside it."""

    prompt_id: str
    category: str
    prompt: str
    seed: int
    model: dict[str, Any]
    asset_path: str | None
    error: str | None
    up_axis: str
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)
    finished_at: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def resolved_asset(self, run_dir: Path | str) -> Path | None:
        """The asset's absolute path (``asset_path`` is relative to ``run_dir`` when inside it)."""
        return None if self.asset_path is None else (Path(run_dir) / self.asset_path).resolve()


@dataclass
class GenerationSummary:
    run_dir: Path
    total: int
    generated: int
    failed: int
    skipped: int
    seconds: float
    failures: list[tuple[str, str]] = field(default_factory=list)

    #: Prompts skipped because an earlier call recorded them as failed (``--retry-failed`` tries them again).
    failed_earlier: int = 0

    def lines(self) -> list[str]:
        out = [f"{self.generated} generated, {self.failed} failed, {self.skipped} already done "
               f"(of {self.total} prompts) in {self.seconds:.1f} s -> {self.run_dir / runfiles.GENERATIONS}"]
        out += [f"  FAILED {pid}: {err}" for pid, err in self.failures]
        if self.failed_earlier:
            out.append(f"  {self.failed_earlier} of the prompts already done failed in an earlier call; "
                       "--retry-failed generates them again")
        return out


def read_generations(run_dir: Path | str) -> dict[str, GenerationRecord]:
    """Latest record per prompt id of a run, in file order."""
    latest: dict[str, GenerationRecord] = {}
    for row in read_jsonl(Path(run_dir) / runfiles.GENERATIONS):
        rec = GenerationRecord(**row)
        latest.pop(rec.prompt_id, None)
        latest[rec.prompt_id] = rec
    return latest


def _relative(path: Path, run_dir: Path) -> str:
    path = path.resolve()
    try:
        return str(path.relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def _record(prompt: PromptRecord, seed: int, spec: ModelSpec, result: GenerationResult, run_dir: Path) -> GenerationRecord:
    error = result.error
    asset = None
    if result.asset_path is not None:
        if result.asset_path.is_file():
            asset = _relative(result.asset_path, run_dir)
        else:
            error = f"generator returned {result.asset_path}, which is not a file"
    return GenerationRecord(prompt_id=prompt.id, category=prompt.category, prompt=prompt.prompt, seed=seed,
                            model=spec.to_dict(), asset_path=asset, error=error, up_axis=result.up_axis,
                            seconds=round(result.seconds, 4), metadata=result.metadata,
                            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def generate_run(generator: Generator, prompts: Sequence[PromptRecord], run_dir: Path | str,
                 seed: int = DEFAULTS.seed, model_spec: ModelSpec | None = None,
                 progress: bool = True, retry_failed: bool = False) -> GenerationSummary:
    """Generate an asset for every prompt into ``run_dir`` and log each outcome.

    A generator that raises for a whole batch has that batch recorded as failed; the run goes on. The exception
    is :class:`~mme3dr.weights.MissingWeightsError` (its weights are not there): it propagates at once,
    with its advice text, and nothing is recorded, so the same command works once the weights are provided. Prompts already
    in the log are skipped (so a finished run does no work); ``retry_failed`` generates the failed ones again.

    Every prompt's folder must lie inside ``RUN/assets/`` (:func:`~mme3dr.paths.child_path`): an id that would
    leave it raises :class:`~mme3dr.paths.UnsafePathError` before anything is written. When ``prompts`` is a
    :class:`~mme3dr.data.Benchmark`, its provenance goes to ``run.json`` (``prompts``), where scoring finds the
    checklists of the run's own prompts.
    """
    run_dir = Path(run_dir)
    for p in prompts:  # an id that would leave RUN/assets/ stops the run before anything is written
        child_path(run_dir, runfiles.ASSETS_DIR, p.id, what="prompt id")
    generator.check()  # missing weights stop the run here, before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = model_spec or ModelSpec(f"{type(generator).__module__}:{type(generator).__qualname__}")
    log = run_dir / runfiles.GENERATIONS
    repair_tail(log)  # a line torn by a crash is dropped (its prompt is generated again)
    previous = read_generations(run_dir)
    for rec in previous.values():
        if ModelSpec(rec.model["name"], rec.model.get("args", {})).key() != spec.key() or rec.seed != seed:
            raise RunConflictError(f"{run_dir} already holds generations of model {rec.model} with seed {rec.seed} "
                                   f"(prompt {rec.prompt_id}); this run is {spec.to_dict()} with seed {seed}. "
                                   "Use another --out folder.")
    if isinstance(prompts, Benchmark):  # scoring reads the checklists from the run's own prompt set
        update_run_info(run_dir, prompts=prompts.info())
    done = {pid for pid, rec in previous.items()
            if (rec.ok and (asset := rec.resolved_asset(run_dir)) is not None and asset.is_file())
            or (not rec.ok and not retry_failed)}
    todo = [p for p in prompts if p.id not in done]
    start = time.perf_counter()
    wanted = {p.id for p in prompts}
    summary = GenerationSummary(run_dir, total=len(prompts), generated=0, failed=0,
                                skipped=len(prompts) - len(todo), seconds=0.0,
                                failed_earlier=sum(1 for pid, rec in previous.items()
                                                   if not rec.ok and pid in wanted and pid in done))
    batch = max(1, int(getattr(generator, "batch_size", 1)))
    bar = tqdm(total=len(todo), desc="generate", unit="prompt", disable=not progress or not todo)
    for i in range(0, len(todo), batch):
        chunk = todo[i:i + batch]
        requests = [GenerationRequest(p.id, p.prompt, p.category, seed, _fresh_dir(run_dir, p.id)) for p in chunk]
        t0 = time.perf_counter()
        try:
            results = {r.prompt_id: r for r in generator.generate(requests)}
        except Exception as exc:  # a crashing generator fails its batch, not the run
            if stops_the_run(exc):  # missing weights: every prompt would fail alike; stop, record nothing
                bar.close()
                raise
            tb = traceback.format_exc(limit=8)
            results = {r.prompt_id: GenerationResult.failure(r, f"generator crashed: {type(exc).__name__}: {exc}",
                                                             time.perf_counter() - t0, traceback=tb)
                       for r in requests}
        for prompt, req in zip(chunk, requests):
            result = results.get(prompt.id) or GenerationResult.failure(req, "generator returned no result for this prompt")
            rec = _record(prompt, seed, spec, result, run_dir)
            append_jsonl(log, asdict(rec))
            if rec.ok:
                summary.generated += 1
            else:
                summary.failed += 1
                summary.failures.append((prompt.id, rec.error or ""))
            bar.update(1)
            bar.set_postfix(ok=summary.generated, failed=summary.failed)
    bar.close()
    # compact: one record per prompt, latest wins
    write_jsonl(log, [asdict(r) for r in read_generations(run_dir).values()])
    summary.seconds = time.perf_counter() - start
    return summary


def _fresh_dir(run_dir: Path, prompt_id: str) -> Path:
    """An empty output folder for one prompt (leftovers of an interrupted attempt are removed). The folder is
    proven to lie inside ``RUN/assets/`` (:func:`~mme3dr.paths.child_path`) before anything is deleted."""
    path = child_path(run_dir, runfiles.ASSETS_DIR, prompt_id, what="prompt id")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
