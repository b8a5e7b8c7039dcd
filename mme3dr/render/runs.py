"""Render the assets of a run, or one asset file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mme3dr import runfiles
from mme3dr.defaults import DEFAULTS
from mme3dr.distributed import Ranks
from mme3dr.errors import MissingInputError
from mme3dr.generation import read_generations
from mme3dr.paths import UnsafePathError, child_path
from mme3dr.render.jobs import RenderJob, RenderJobResult, resolve_cameras, run_jobs, write_index
from mme3dr.render.presets import RenderPreset


@dataclass
class RenderSummary:
    folder: Path
    rendered: int
    skipped: int
    failed: list[RenderJobResult]
    not_generated: list[str]

    def lines(self) -> list[str]:
        out = [f"{self.rendered} rendered, {self.skipped} up to date, {len(self.failed)} failed, "
               f"{len(self.not_generated)} without an asset -> {self.folder}"]
        out += [f"  FAILED {r.key} [{r.reason}]: {r.error}" for r in self.failed]
        return out


def summarise(folder: Path, results: list[RenderJobResult], not_generated: list[str]) -> RenderSummary:
    return RenderSummary(folder, rendered=sum(r.ok and not r.skipped for r in results),
                         skipped=sum(r.skipped for r in results), failed=[r for r in results if not r.ok],
                         not_generated=not_generated)


def render_run(run_dir: Path | str, preset: RenderPreset, cameras: Path | str | None = None,
               workers: int = DEFAULTS.render_workers,
               backend: str | None = None, depth: bool = False, normals: bool = False,
               progress: bool = True, ranks: Ranks = Ranks()) -> RenderSummary:
    """Render every generated asset of a run into ``RUN/renders/<preset>-<hash>/<prompt_id>/``.

    ``ranks`` (:mod:`mme3dr.distributed`): each rank renders its share of the prompts; rank 0 writes the render
    index of all of them, in prompt order, and returns the summary of all (the others: of their own share).

    A prompt id that would put its folder outside that folder (a hand-edited or foreign ``generations.jsonl``)
    fails with reason ``unsafe_path`` and nothing is written for it."""
    run_dir = Path(run_dir)
    records = read_generations(run_dir)
    if not records:
        raise MissingInputError(f"{run_dir / runfiles.GENERATIONS} is missing or empty; "
                                "run `mme3dr generate ... --out RUN` first")
    folder = child_path(run_dir, runfiles.RENDERS_DIR, preset.tag, what="render preset tag")
    jobs, refused, not_generated = [], [], []
    for pid, rec in records.items():
        asset = rec.resolved_asset(run_dir)
        if not rec.ok or asset is None:
            not_generated.append(pid)
            continue
        try:
            out = child_path(folder, pid, what="prompt id")
            cams = resolve_cameras(cameras, pid)
        except UnsafePathError as exc:
            refused.append(RenderJobResult(pid, False, "", str(exc), "unsafe_path"))
            continue
        jobs.append(RenderJob(pid, str(asset), str(out), rec.up_axis, cams, {"category": rec.category}))
    index = folder / runfiles.RENDER_INDEX
    if ranks.world == 1:
        return summarise(folder, run_jobs(jobs, preset, index, workers, backend, depth, normals, progress,
                                          refused=refused), not_generated)
    results = run_jobs(ranks.shard(jobs), preset, None, workers, backend, depth, normals, progress and ranks.main,
                       refused=refused if ranks.main else ())
    gathered = ranks.gather(results)
    if gathered is None:
        return summarise(folder, results, not_generated)
    order = {r.key: i for i, r in enumerate([*refused, *jobs])}
    every = sorted((r for part in gathered for r in part), key=lambda r: order[r.key])
    write_index(index, every)
    return summarise(folder, every, not_generated)


def render_asset(asset: Path | str, out_dir: Path | str, preset: RenderPreset, cameras: Path | str | None = None,
                 up_axis: str = DEFAULTS.up_axis, backend: str | None = None, depth: bool = False,
                 normals: bool = False) -> RenderSummary:
    """Render one mesh file into ``out_dir`` (views, transforms.json, contact sheet, render.json)."""
    out_dir = Path(out_dir)
    job = RenderJob(Path(asset).stem, str(Path(asset).resolve()), str(out_dir), up_axis,
                    None if cameras is None else str(cameras))
    return summarise(out_dir, run_jobs([job], preset, None, 1, backend, depth, normals, progress=False), [])
