"""Writing a render to disk: milliseconds per 512x512 view for the render writer and for Pillow's PNG encoder.

Renders the bumpy vertex-coloured 20k-face sphere of ``render_bench.py`` once (canonical preset, transparent
background, 24 views) and times, on its pixels:

- ``write_render``: the whole folder as a render job writes it (views in a thread pool, contact sheet,
  transforms.json, render.json), per view;
- ``encode_png`` (the writer's encoder) and Pillow's ``save(compress_level=1)`` (the encoder the writer used
  before: an adaptive filter per row), one thread each: encode time, file size, and Pillow's decode time of the
  files (the scoring stage decodes every view; best of five passes).

``--views DIR`` also runs the encoder comparison on the PNG views in DIR (for example the official renders of the
Toys4K rose in ``shared/fixtures/toys4k_rose``). Prints one JSON object.

    python benchmarks/write_bench.py [--repeats 5] [--views DIR] [--out benchmarks/results/write_cpu.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from render_bench import make_meshes


def pillow_png(view: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(view).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def compare(views: list[np.ndarray], encoders: dict[str, Callable[[np.ndarray], bytes]], repeats: int) -> dict:
    """Per encoder: ms per view to encode (one thread), mean bytes, ms per view for Pillow to decode the files."""
    out = {}
    for name, encode in encoders.items():
        t = time.perf_counter()
        for _ in range(repeats):
            files = [encode(v) for v in views]
        encode_ms = (time.perf_counter() - t) / (repeats * len(views)) * 1e3
        for v, png in zip(views, files):  # both encoders are lossless
            np.testing.assert_array_equal(decode(png), v)
        decode_ms = []
        for _ in range(5):
            t = time.perf_counter()
            for png in files:
                decode(png)
            decode_ms.append((time.perf_counter() - t) / len(files) * 1e3)
        out[name] = {"encode_ms_per_view": round(encode_ms, 2), "mean_bytes": int(np.mean([len(f) for f in files])),
                     "decode_ms_per_view": round(min(decode_ms), 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--views", type=Path, default=None, help="a folder of PNG views to compare the encoders on")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from mme3dr.assets import load_asset
    from mme3dr.render.output import encode_png, write_render
    from mme3dr.render.presets import get_preset
    from mme3dr.render.renderer import get_renderer

    preset = get_preset("canonical").with_overrides(background="transparent")
    with tempfile.TemporaryDirectory() as tmp:
        out = get_renderer().render(load_asset(make_meshes(Path(tmp))["20k"]), preset)
        t = time.perf_counter()
        for i in range(a.repeats):
            write_render(Path(tmp) / f"r{i}", out, preset, {})
        write_ms = round((time.perf_counter() - t) / (a.repeats * len(out.rgba)) * 1e3, 2)
    encoders = {"encode_png": encode_png, "pillow_level1": pillow_png}
    result = {
        "machine": platform.node(), "cpu_count": os.cpu_count(), "resolution": preset.resolution,
        "repeats": a.repeats, "write_render_ms_per_view": write_ms,
        "sphere_20k": {"views": len(out.rgba), "object_pixels_fraction": round(float((out.rgba[..., 3] > 0).mean()), 3),
                       **compare(list(out.rgba), encoders, a.repeats)},
    }
    if a.views:
        views = [np.asarray(Image.open(p)) for p in sorted(a.views.glob("*.png"))]
        result[a.views.name] = {"views": len(views), **compare(views, encoders, a.repeats)}
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
