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
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
from PIL import Image

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


def encode_png(pixels: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """Lossless PNG of an (H, W, 3 or 4) uint8 array: zlib level 1 with no row filter (filter type 0; libpng
    through imagecodecs), and ``text`` right after the header: a ``tEXt`` chunk per entry, or ``iTXt`` (UTF-8) for
    a value that Latin-1, the character set of ``tEXt``, cannot hold.

    Pillow chooses a filter per row by trying all five; on 512^2 RGBA views that choice costs more than the
    compression. Rendered views (flat background, smooth shading) compress about as well unfiltered: on the
    official renders of the Toys4K rose, 4.8 ms a view against Pillow's 10.9 ms at level 1, 122 kB against 136 kB,
    and Pillow decodes them in 2.3 ms instead of 2.9 (no filter to undo), which the scoring stage gains back
    (``benchmarks/write_bench.py``, ``benchmarks/results/write_cpu.json``). libpng releases the GIL, so views are
    encoded in threads side by side.
    """
    png = imagecodecs.png_encode(np.ascontiguousarray(pixels), level=1, filter=imagecodecs.PNG.FILTER.NONE)
    chunks = b"".join(_text_chunk(key, value) for key, value in (text or {}).items())
    end_of_header = 8 + 12 + 13  # signature, then IHDR: length, type, 13 bytes of data, CRC
    return png[:end_of_header] + chunks + png[end_of_header:]


def _text_chunk(key: str, value: str) -> bytes:
    """``tEXt``: keyword, NUL, Latin-1 text; ``iTXt``: keyword, NUL, no compression (two zero bytes), empty language
    tag and translated keyword (each NUL-terminated), UTF-8 text (PNG spec, sections 11.3.4.3 and 11.3.4.5)."""
    try:
        return _png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _png_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: big-endian length, type, data, CRC-32 of type and data (PNG spec, section 5.3)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


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
    text = {"mme3dr_preset": preset.tag}
    channels = 4 if preset.background == "transparent" else 3
    images = [(tmp / name, view[..., :channels], text) for name, view in zip(names, out.rgba)]
    if out.normals is not None:
        images += [(tmp / name.replace(".png", "_normal.png"), n, None) for name, n in zip(names, out.normals)]
    # the encoder runs without the GIL, so the views and the contact sheet are written side by side
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sheet = pool.submit(lambda: (tmp / runfiles.CONTACT_SHEET).write_bytes(
            encode_png(np.asarray(contact_sheet(out.rgba)))))
        list(pool.map(lambda job: job[0].write_bytes(encode_png(job[1], job[2])), images))
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
