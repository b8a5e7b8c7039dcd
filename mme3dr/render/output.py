"""Write renders to disk: one folder per object, written atomically.

Layout of a folder: ``000.png ...`` (RGBA for a transparent background, else RGB; each PNG carries the preset tag
in its text chunk ``mme3dr_preset``), ``transforms.json`` (TRELLIS style, plus the preset and its hash),
``contact_sheet.png`` (all views in a grid), ``render.json`` (what was rendered, by what, how long, and the size of
every file of the folder), and where asked ``depth.npz`` (float32, views x H x W) and ``NNN_normal.png``.
The folder is built under a temporary name and renamed when complete, so a crash never leaves a half-written
render under the real name; a file damaged afterwards (truncated, deleted) no longer matches the size recorded in
``render.json``, and :func:`render_intact` says so, so the folder is rendered again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from mme3dr import runfiles
from mme3dr.errors import naming
from mme3dr.jsonl import make_temp_dir
from mme3dr.render.cameras import transforms_dict
from mme3dr.render.presets import RenderPreset
from mme3dr.render.renderer import RenderOutput


def file_sha256(path: Path | str) -> str:
    """sha256 of a regular file. Anything else (a FIFO, a device, a folder) raises ``OSError`` at once: it is
    opened without blocking and checked before any read, so a FIFO never hangs the caller."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def contact_sheet(rgba: np.ndarray, columns: int = 6, tile: int = 256, background=(255, 255, 255)) -> Image.Image:
    """All views in a grid (row-major, view 0 top-left), composited on ``background``, ``tile`` px per view."""
    n = len(rgba)
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    sheet = Image.new("RGB", (columns * tile, rows * tile), background)
    for i, view in enumerate(rgba):
        img = Image.fromarray(view, "RGBA")
        factor = img.width // tile
        img = img.reduce(factor) if factor * tile == img.width else img.resize((tile, tile), Image.LANCZOS)
        canvas = Image.new("RGB", (tile, tile), background)
        canvas.paste(img, mask=img.split()[3])
        sheet.paste(canvas, ((i % columns) * tile, (i // columns) * tile))
    return sheet


def view_names(n: int) -> list[str]:
    return [f"{i:03d}.png" for i in range(n)]


def write_render(folder: Path, out: RenderOutput, preset: RenderPreset, record: dict[str, Any]) -> dict[str, Any]:
    """Write every file of one render into ``folder`` (replacing it atomically); return the render record."""
    folder = Path(folder)
    tmp = make_temp_dir(folder)
    try:
        with naming(folder):  # a failed write (disk full) names the render folder
            record = _write_files(tmp, out, preset, record)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _write_files(tmp: Path, out: RenderOutput, preset: RenderPreset, record: dict[str, Any]) -> dict[str, Any]:
    """The files of one render in the folder ``tmp``, ``render.json`` last (with the size of every other file)."""
    names = view_names(len(out.rgba))
    info = PngInfo()
    info.add_text("mme3dr_preset", preset.tag)
    mode = "RGBA" if preset.background == "transparent" else "RGB"
    images = [(tmp / name, view if mode == "RGBA" else view[..., :3], mode) for name, view in zip(names, out.rgba)]
    if out.normals is not None:
        images += [(tmp / name.replace(".png", "_normal.png"), n, "RGB") for name, n in zip(names, out.normals)]
    # PNG level 1: lossless, about twice as fast to write as the default; PIL encodes without the GIL, so the views
    # and the contact sheet are written side by side
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sheet = pool.submit(lambda: contact_sheet(out.rgba).save(tmp / runfiles.CONTACT_SHEET, compress_level=1))
        list(pool.map(lambda job: Image.fromarray(job[1], job[2]).save(job[0], pnginfo=info, compress_level=1),
                      images))
        sheet.result()
    if out.depth is not None:
        np.savez_compressed(tmp / "depth.npz", depth=out.depth)
    meta = {"preset": preset.params(), "preset_hash": preset.hash}
    (tmp / runfiles.TRANSFORMS).write_text(json.dumps(transforms_dict(out.cameras, names, meta), indent=1))
    record = {**record, "preset": preset.name, "preset_hash": preset.hash, "backend": out.backend,
              "n_views": len(names), "resolution": preset.resolution,
              "files": {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}}
    (tmp / runfiles.RENDER_RECORD).write_text(json.dumps(record, indent=1))
    return record


def render_intact(folder: Path, record: dict[str, Any]) -> bool:
    """True when every file ``record`` (the folder's ``render.json``) lists is there with its recorded size, and
    the views it counts are among them: a cheap check (one ``stat`` per file) that catches truncated or deleted
    files. A record without file sizes (written by mme3dr <= 0.1) does not count as intact."""
    files = record.get("files")
    if not isinstance(files, dict) or not set(view_names(int(record.get("n_views", 0)))) <= set(files):
        return False
    for name, size in files.items():
        try:
            if (Path(folder) / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def read_render_record(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / runfiles.RENDER_RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
