"""Reference sets for Kernel/Frechet distances: renders of ground-truth meshes made with a run's preset.

Sources: a folder of meshes (``DIR/<category>/<mesh>`` gives the category; files directly in ``DIR`` have
none), or Toys4K given its folder and TRELLIS-500K's ``Toys4k.csv`` (columns ``sha256`` and ``file_identifier``,
e.g. ``airplane/airplane_000/airplane_000.blend``; the class is the first path component). trimesh cannot read
.blend files: point ``--toys4k`` at Toys4K's OBJ release (or meshes converted from the .blend files) with the same
``<class>/<object>/`` folders; the first mesh file found in each object's folder is used.
Output: ``REF/<preset>-<hash>/<object_id>/`` per object and ``REF/<preset>-<hash>/reference.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mme3dr.assets import ASSET_SUFFIXES
from mme3dr.defaults import DEFAULTS
from mme3dr.jsonl import atomic_write_text
from mme3dr.render.jobs import INDEX_FILE, RenderJob, run_jobs
from mme3dr.render.presets import RenderPreset
from mme3dr.render.runs import RenderSummary, summarise

REFERENCE_FILE = "reference.json"


def _mesh_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in ASSET_SUFFIXES)


def folder_objects(meshes: Path) -> list[dict]:
    """One object per mesh file under ``meshes``; id = relative path without suffix, '/' -> '__'."""
    objs = []
    for p in _mesh_files(meshes):
        rel = p.relative_to(meshes)
        objs.append({"id": "__".join(rel.with_suffix("").parts), "path": str(p),
                     "category": rel.parts[0] if len(rel.parts) > 1 else None, "source": str(rel)})
    if not objs:
        raise FileNotFoundError(f"no mesh files ({', '.join(ASSET_SUFFIXES)}) under {meshes}")
    return objs


def toys4k_objects(toys4k: Path, csv_path: Path) -> tuple[list[dict], list[dict]]:
    """(objects found, rows whose mesh is missing) for every row of ``Toys4k.csv``."""
    df = pd.read_csv(csv_path)
    missing_cols = {"sha256", "file_identifier"} - set(df.columns)
    if missing_cols:
        raise ValueError(f"{csv_path}: missing column(s) {sorted(missing_cols)}; expected TRELLIS-500K's Toys4k.csv")
    objs, missing = [], []
    for row in df.itertuples():
        ident = Path(str(row.file_identifier))
        direct = toys4k / ident
        cands = [direct] if direct.suffix.lower() in ASSET_SUFFIXES and direct.is_file() else []
        obj_dir = toys4k / ident.parent
        cands = cands or (_mesh_files(obj_dir) if obj_dir.is_dir() else [])
        entry = {"id": str(row.sha256), "category": ident.parts[0], "source": str(ident)}
        if cands:
            objs.append({**entry, "path": str(cands[0])})
        else:
            missing.append({**entry, "error": f"no mesh file in {obj_dir}"})
    return objs, missing


def build_references(out: Path | str, preset: RenderPreset, meshes: Path | str | None = None,
                     toys4k: Path | str | None = None, toys4k_csv: Path | str | None = None,
                     up_axis: str = DEFAULTS.up_axis, workers: int = 1, backend: str | None = None,
                     progress: bool = True) -> RenderSummary:
    """Render a reference set with ``preset`` and record it in ``reference.json``."""
    if (meshes is None) == (toys4k is None):
        raise ValueError("give exactly one source: --meshes DIR, or --toys4k DIR with --toys4k-csv Toys4k.csv")
    if toys4k is not None:
        if toys4k_csv is None:
            raise ValueError("--toys4k needs --toys4k-csv (TRELLIS-500K's Toys4k.csv)")
        objs, missing = toys4k_objects(Path(toys4k), Path(toys4k_csv))
    else:
        objs, missing = folder_objects(Path(meshes)), []
    folder = Path(out) / preset.tag
    jobs = [RenderJob(o["id"], o["path"], str(folder / o["id"]), up_axis, None,
                      {"category": o["category"], "source": o["source"]}) for o in objs]
    results = {r.key: r for r in run_jobs(jobs, preset, folder / INDEX_FILE, workers, backend, progress=progress,
                                          desc="references")}
    entries = [{**o, "ok": results[o["id"]].ok, "error": results[o["id"]].error} for o in objs]
    entries += [{**m, "ok": False} for m in missing]
    atomic_write_text(folder / REFERENCE_FILE, json.dumps({
        "preset": preset.params(), "preset_hash": preset.hash,
        "source": {"meshes": str(meshes)} if meshes else {"toys4k": str(toys4k), "toys4k_csv": str(toys4k_csv)},
        "n_ok": sum(e["ok"] for e in entries), "objects": entries}, indent=1))
    return summarise(folder, list(results.values()), [m["id"] for m in missing])
