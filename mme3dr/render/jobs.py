"""Render many assets: resumable, in one process or several, every outcome recorded.

A job renders one asset into its own folder. A folder whose ``render.json`` has the same preset hash and asset
sha256, and whose files all have their recorded sizes, is up to date and skipped, so an interrupted command resumes
where it stopped. A bad asset or camera file fails its job only: the error (with the asset reason code) goes to the
index file and the rest goes on. A render that cannot be written (a full disk) stops the run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mme3dr import runfiles
from mme3dr.asset_files import check_regular_file
from mme3dr.assets import AssetError, load_asset
from mme3dr.defaults import DEFAULTS
from mme3dr.jsonl import append_jsonl, read_jsonl, repair_tail, write_jsonl
from mme3dr.paths import child_path
from mme3dr.processes import spawn_pool
from mme3dr.render.cameras import CameraSet, read_transforms
from mme3dr.render.output import file_sha256, read_render_record, render_intact, write_render
from mme3dr.render.presets import RenderPreset


@dataclass(frozen=True)
class RenderJob:
    key: str  # prompt id or reference object id
    asset_path: str
    folder: str
    up_axis: str = DEFAULTS.up_axis
    cameras_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass
class RenderJobResult:
    key: str
    ok: bool
    folder: str
    error: str | None = None
    reason: str | None = None  # AssetError reason code, "cameras", "render" or "unsafe_path"
    seconds: float = 0.0
    skipped: bool = False


def resolve_cameras(cameras: Path | str | None, key: str) -> str | None:
    """A transforms.json for ``key``: the file itself, or ``DIR/<key>/transforms.json`` / ``DIR/<key>.json``
    (both inside ``DIR``: :class:`~mme3dr.paths.UnsafePathError` otherwise)."""
    if cameras is None:
        return None
    path = Path(cameras)
    if path.is_dir():
        nested = child_path(path, key, runfiles.TRANSFORMS, what="prompt id")
        for cand in (nested, child_path(path, f"{key}.json", what="prompt id")):
            if cand.is_file():
                return str(cand)
        return str(nested)  # missing: the job reports it
    return str(path)


def _up_to_date(job: RenderJob, preset: RenderPreset, sha: str) -> bool:
    """The folder holds a complete render of this asset (``sha``) with ``preset`` and the job's cameras, every file
    intact (:func:`~mme3dr.render.output.render_intact`: a truncated or missing view is rendered again)."""
    rec = read_render_record(Path(job.folder))
    return bool(rec) and rec.get("preset_hash") == preset.hash and rec.get("asset_sha256") == sha and \
        rec.get("cameras") == job.cameras_path and render_intact(Path(job.folder), rec)


def render_one(job: RenderJob, preset: RenderPreset, renderer, depth: bool = False,
               normals: bool = False, sha: str | None = None) -> RenderJobResult:
    """Render one job with an open :class:`~mme3dr.render.renderer.Renderer`; never raises for bad input (an asset,
    camera file or GL failure is the job's result), only when the render cannot be written (``OSError``).

    ``sha`` is the asset's sha256 when the caller already has it (it is computed otherwise).
    """
    start = time.perf_counter()
    try:
        check_regular_file(job.asset_path)  # before hashing: a FIFO would block, a huge file take long
        sha = sha or file_sha256(job.asset_path)
    except AssetError as exc:
        return RenderJobResult(job.key, False, job.folder, exc.message, exc.reason)
    except OSError as exc:
        return RenderJobResult(job.key, False, job.folder, f"cannot read asset: {exc}", "unreadable")
    if _up_to_date(job, preset, sha):
        return RenderJobResult(job.key, True, job.folder, skipped=True)
    try:
        asset = load_asset(job.asset_path, up_axis=job.up_axis)
    except AssetError as exc:
        return RenderJobResult(job.key, False, job.folder, exc.message, exc.reason, time.perf_counter() - start)
    cams: CameraSet | None = None
    if job.cameras_path is not None:
        try:
            cams = read_transforms(job.cameras_path)
        except ValueError as exc:
            return RenderJobResult(job.key, False, job.folder, str(exc), "cameras", time.perf_counter() - start)
    try:
        out = renderer.render(asset, preset, cameras=cams, depth=depth, normals=normals)
    except ValueError as exc:  # e.g. a preset that needs --cameras
        return RenderJobResult(job.key, False, job.folder, str(exc), "cameras", time.perf_counter() - start)
    except Exception as exc:  # a GL failure for one asset must not stop the others
        return RenderJobResult(job.key, False, job.folder, f"{type(exc).__name__}: {exc}", "render",
                               time.perf_counter() - start)
    seconds = time.perf_counter() - start
    # a failure to write (disk full, permissions) is the output folder's, shared by every job: it stops the run
    write_render(Path(job.folder), out, preset, {
        "key": job.key, "asset": job.asset_path, "asset_sha256": sha, "up_axis": job.up_axis,
        "cameras": job.cameras_path, "seconds": round(seconds, 4), **job.extra})
    return RenderJobResult(job.key, True, job.folder, seconds=seconds)


_worker: dict[str, Any] = {}


def _init_worker(preset: RenderPreset, backend: str | None, depth: bool, normals: bool) -> None:
    from mme3dr.render.renderer import get_renderer

    _worker.update(renderer=get_renderer(backend), preset=preset, depth=depth, normals=normals)


def _work(task: tuple[RenderJob, str | None]) -> RenderJobResult:
    job, sha = task
    return render_one(job, _worker["preset"], _worker["renderer"], _worker["depth"], _worker["normals"], sha)


def run_jobs(jobs: Sequence[RenderJob], preset: RenderPreset, index: Path | None = None,
             workers: int = DEFAULTS.render_workers,
             backend: str | None = None, depth: bool = False, normals: bool = False, progress: bool = True,
             desc: str = "render", refused: Sequence[RenderJobResult] = ()) -> list[RenderJobResult]:
    """Render every job; each result is appended to ``index`` as soon as it is known (then compacted).
    ``refused``: failures decided before rendering (e.g. an unsafe key), recorded like the others."""
    results: list[RenderJobResult] = []
    bar = tqdm(total=len(jobs) + len(refused), desc=desc, unit="asset", disable=not progress or not (jobs or refused))

    def record(res: RenderJobResult) -> None:
        results.append(res)
        if index is not None:
            append_jsonl(index, asdict(res))
        bar.update(1)
        bar.set_postfix(failed=sum(not r.ok for r in results))

    if index is not None:
        index.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(index)  # a line torn by a crash is dropped (its job is recorded again below)
    for res in refused:
        record(res)
    todo: list[tuple[RenderJob, str | None]] = []
    for job in jobs:  # up-to-date folders need no GL context at all
        try:
            check_regular_file(job.asset_path)
            sha: str | None = file_sha256(job.asset_path)
        except (AssetError, OSError):
            sha = None  # render_one reports the file
        if sha is not None and _up_to_date(job, preset, sha):
            record(RenderJobResult(job.key, True, job.folder, skipped=True))
        else:
            todo.append((job, sha))
    if len(todo) == 1 or (todo and workers <= 1):
        from mme3dr.render.renderer import get_renderer

        renderer = get_renderer(backend)
        for job, sha in todo:
            record(render_one(job, preset, renderer, depth, normals, sha))
    elif todo:
        # spawn: EGL/OSMesa contexts do not survive fork; spawn_pool keeps the caller's script from running again
        with spawn_pool(min(workers, len(todo)), _init_worker, (preset, backend, depth, normals)) as pool:
            for res in pool.imap_unordered(_work, todo):
                record(res)
    bar.close()
    if index is not None:
        _compact(index)
    return results


def write_index(index: Path, results: Sequence[RenderJobResult]) -> None:
    """Record ``results`` in the render index ``index`` (as :func:`run_jobs` does, all at once: what rank 0 writes
    for every rank of a distributed render, :func:`mme3dr.render.runs.render_run`)."""
    index.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(index)
    for res in results:
        append_jsonl(index, asdict(res))
    _compact(index)


def _compact(index: Path) -> None:
    """One line per key, the latest."""
    latest = {r["key"]: r for r in read_jsonl(index)}
    write_jsonl(index, latest.values())
