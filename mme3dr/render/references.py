"""Reference sets for Kernel/Frechet distances: renders of ground-truth meshes made with a run's preset.

Sources: a folder of meshes (``DIR/<class>/<mesh>``; files directly in ``DIR`` have no class), or Toys4K given
its folder and TRELLIS-500K's ``Toys4k.csv`` (columns ``sha256`` and ``file_identifier``, e.g.
``airplane/airplane_000/airplane_000.blend``; the class is the first path component). trimesh cannot read .blend
files: point ``--toys4k`` at Toys4K's OBJ release (or meshes converted from the .blend files) with the same
``<class>/<object>/`` folders; the first mesh file found in each object's folder is used.

Each object records its ``source_class`` and its MME-3DR ``category`` (or None), which decides the reference
subset of per-category KID/FID. The category comes from a *category map* when one is given, else from the class
when the class is an MME-3DR category (``DIR/spatial/...``). Toys4K classes (``airplane``, ``dog``) are never
MME-3DR categories, so without a map every category is compared with the whole reference set.

Category map (``--category-map FILE``; :func:`read_category_map`): reference object -> MME-3DR category, as
- CSV with a header row and the columns ``object`` and ``category`` (other columns are ignored), or
- JSON: an object ``{"<object>": "<category>", ...}`` (a ``.json`` file).
``<object>`` is matched against an object's id (Toys4K: its sha256; folders: the relative path without suffix,
``/`` replaced by ``__``), then its source path (``file_identifier`` or the path relative to DIR), then its class,
the first match winning. ``<category>`` is an MME-3DR key or display name (``world-knowledge``,
``World-Knowledge Rare Objects``). Objects that match no entry have no category (they stay in the whole set);
entries that match no object are listed in ``reference.json`` (``category_map.unmatched``); a map that matches
nothing is an error.
Output: ``REF/<preset>-<hash>/<object_id>/`` per object and ``REF/<preset>-<hash>/reference.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from mme3dr import runfiles
from mme3dr.assets import ASSET_SUFFIXES
from mme3dr.defaults import DEFAULTS
from mme3dr.categories import CATEGORIES, resolve_category
from mme3dr.errors import InputError, MissingInputError
from mme3dr.jsonl import atomic_write_text, read_json
from mme3dr.paths import UnsafePathError, child_path
from mme3dr.render.jobs import RenderJob, RenderJobResult, run_jobs
from mme3dr.render.presets import RenderPreset
from mme3dr.render.runs import RenderSummary, summarise

REFERENCE_FILE = "reference.json"


def _mesh_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in ASSET_SUFFIXES)


def folder_objects(meshes: Path) -> tuple[list[dict], list[dict]]:
    """(objects, refused) for every mesh file under ``meshes``; id = relative path without suffix, '/' -> '__'.
    A file that is a symbolic link out of ``meshes`` is refused (listed with its error), not read."""
    objs, refused = [], []
    for p in _mesh_files(meshes):
        rel = p.relative_to(meshes)
        entry = {"id": "__".join(rel.with_suffix("").parts),
                 "source_class": rel.parts[0] if len(rel.parts) > 1 else None, "source": rel.as_posix()}
        try:
            objs.append({**entry, "path": str(child_path(meshes, *rel.parts, what="reference mesh"))})
        except UnsafePathError as exc:
            refused.append({**entry, "error": str(exc)})
    if not objs and not refused:
        raise MissingInputError(f"no mesh files ({', '.join(ASSET_SUFFIXES)}) under {meshes}")
    return objs, refused


def toys4k_objects(toys4k: Path, csv_path: Path) -> tuple[list[dict], list[dict]]:
    """(objects found, rows whose mesh is missing or would be read from outside ``toys4k``) for every row of
    ``Toys4k.csv``."""
    import pandas as pd  # here: render worker processes import this module and need no pandas

    df = pd.read_csv(csv_path)
    missing_cols = {"sha256", "file_identifier"} - set(df.columns)
    if missing_cols:
        raise InputError(f"{csv_path}: missing column(s) {sorted(missing_cols)}; expected TRELLIS-500K's Toys4k.csv")
    objs, missing = [], []
    for row in df.itertuples():
        ident = Path(str(row.file_identifier))
        entry = {"id": str(row.sha256), "source_class": ident.parts[0] if ident.parts else "",
                 "source": ident.as_posix()}
        try:
            direct = child_path(toys4k, *ident.parts, what="Toys4k.csv file_identifier")
            obj_dir = child_path(toys4k, *ident.parent.parts, what="Toys4k.csv file_identifier") \
                if ident.parent.parts else toys4k
            cands = [direct] if direct.suffix.lower() in ASSET_SUFFIXES and direct.is_file() else []
            cands = cands or [child_path(toys4k, *p.relative_to(toys4k).parts, what="Toys4K mesh")
                              for p in (_mesh_files(obj_dir) if obj_dir.is_dir() else [])]
        except UnsafePathError as exc:
            missing.append({**entry, "error": str(exc)})
            continue
        if cands:
            objs.append({**entry, "path": str(cands[0])})
        else:
            missing.append({**entry, "error": f"no mesh file in {obj_dir}"})
    return objs, missing


def read_category_map(path: Path | str) -> dict[str, str]:
    """Reference object -> MME-3DR category key from a CSV (columns ``object``, ``category``) or JSON file."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        raw = read_json(path, "fix the file")
        if not isinstance(raw, dict):
            raise InputError(f"{path}: expected a JSON object {{\"<object>\": \"<category>\"}}")
        pairs = list(raw.items())
    else:
        import pandas as pd

        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = {"object", "category"} - set(df.columns)
        if missing:
            raise InputError(f"{path}: missing column(s) {sorted(missing)}; a category map is a CSV with the "
                             f"columns object,category (or a .json object)")
        pairs = list(zip(df["object"], df["category"]))
    out: dict[str, str] = {}
    for obj, cat in pairs:
        key = str(obj).strip()
        try:
            out[key] = resolve_category(str(cat))
        except ValueError as exc:
            raise InputError(f"{path}: object {key!r}: {exc}") from None
    return out


def assign_categories(objs: list[dict], category_map: Mapping[str, str] | None) -> list[str]:
    """Set each object's MME-3DR ``category`` in place (see the module docstring); returns the unmatched map keys."""
    used: set[str] = set()
    for o in objs:
        if category_map is None:
            cls = o.get("source_class")
            o["category"] = cls if cls in CATEGORIES else None
            continue
        key = next((k for k in (o["id"], o.get("source"), o.get("source_class")) if k in category_map), None)
        o["category"] = category_map[key] if key is not None else None
        used.add(key)
    return sorted(set(category_map or ()) - used)


def build_references(out: Path | str, preset: RenderPreset, meshes: Path | str | None = None,
                     toys4k: Path | str | None = None, toys4k_csv: Path | str | None = None,
                     up_axis: str = DEFAULTS.up_axis, workers: int = DEFAULTS.render_workers, backend: str | None = None,
                     progress: bool = True,
                     category_map: Path | str | Mapping[str, str] | None = None) -> RenderSummary:
    """Render a reference set with ``preset`` and record it in ``reference.json``.

    ``category_map``: a file for :func:`read_category_map` or a ready mapping (object -> MME-3DR category).
    """
    if (meshes is None) == (toys4k is None):
        raise InputError("give exactly one source: --meshes DIR, or --toys4k DIR with --toys4k-csv Toys4k.csv")
    if toys4k is not None:
        if toys4k_csv is None:
            raise InputError("--toys4k needs --toys4k-csv (TRELLIS-500K's Toys4k.csv)")
        objs, missing = toys4k_objects(Path(toys4k), Path(toys4k_csv))
    else:
        objs, missing = folder_objects(Path(meshes))
    mapping = (None if category_map is None else dict(category_map) if isinstance(category_map, Mapping)
               else read_category_map(category_map))
    if mapping is not None:
        mapping = {k: resolve_category(v) for k, v in mapping.items()}
    unmatched = assign_categories(objs + missing, mapping)
    if mapping and len(unmatched) == len(mapping):
        example = (objs + missing)[0] if objs + missing else {"id": "?", "source": "?"}
        raise InputError(f"the category map matches no reference object (e.g. {unmatched[0]!r}); its keys must be "
                         f"object ids (Toys4K: sha256), source paths or classes, e.g. {example['id']!r} or "
                         f"{example['source']!r}")
    folder = child_path(out, preset.tag, what="render preset tag")
    jobs, refused = [], []
    for o in objs:  # ids come from a CSV or from file names: each folder must stay inside REF/<preset>-<hash>/
        try:
            jobs.append(RenderJob(o["id"], o["path"], str(child_path(folder, o["id"], what="reference object id")),
                                  up_axis, None, {"category": o["category"], "source": o["source"]}))
        except UnsafePathError as exc:
            refused.append(RenderJobResult(o["id"], False, "", str(exc), "unsafe_path"))
    map_info = None if mapping is None else {
        "file": None if isinstance(category_map, Mapping) else str(category_map), "entries": len(mapping),
        "objects_per_category": {c: sum(o["category"] == c for o in objs) for c in CATEGORIES},
        "unmatched": unmatched}
    results = {r.key: r for r in run_jobs(jobs, preset, folder / runfiles.RENDER_INDEX, workers, backend,
                                          progress=progress, desc="references", refused=refused)}
    entries = [{**o, "ok": results[o["id"]].ok, "error": results[o["id"]].error} for o in objs]
    entries += [{**m, "ok": False} for m in missing]
    atomic_write_text(folder / REFERENCE_FILE, json.dumps({
        "preset": preset.params(), "preset_hash": preset.hash,
        "source": {"meshes": str(meshes)} if meshes else {"toys4k": str(toys4k), "toys4k_csv": str(toys4k_csv)},
        "category_map": map_info, "n_ok": sum(e["ok"] for e in entries), "objects": entries}, indent=1))
    return summarise(folder, list(results.values()), [m["id"] for m in missing])


def category_counts(folder: Path | str) -> str:
    """One line: rendered reference objects per MME-3DR category (categories without any use the whole set)."""
    ref = read_json(Path(folder) / REFERENCE_FILE, "build the reference set again (`mme3dr references build`)")
    ok = [o for o in ref["objects"] if o.get("ok")]
    counts = {c: sum(o.get("category") == c for o in ok) for c in CATEGORIES}
    missing = [c for c, n in counts.items() if n == 0]
    return ("reference objects per category: " + ", ".join(f"{c} {n}" for c, n in counts.items())
            + f", none {sum(o.get('category') is None for o in ok)}"
            + (f"; per-category KID/FID of {', '.join(missing)} use the whole set (pass --category-map FILE)"
               if missing else ""))
