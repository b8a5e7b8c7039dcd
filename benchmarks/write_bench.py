"""Writing a render to disk: milliseconds per 512x512 view for the render writer and for Pillow's PNG encoder.

Renders the bumpy vertex-coloured 20k-face sphere of ``render_bench.py`` once (canonical preset, transparent
background, 24 views), then times, on the same pixels:

- ``write_render``: the whole folder as a render job writes it (views in a thread pool, contact sheet,
  transforms.json, render.json), per view;
- ``encode_png``: the writer's encoder alone, one thread;
- Pillow ``save(compress_level=1)``: the encoder the writer used before (adaptive per-row filter), one thread;
  the files it makes are the reference for size.

Prints one JSON object.

    python benchmarks/write_bench.py [--repeats 5] [--out benchmarks/results/write_cpu.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from render_bench import make_meshes


def per_view_ms(fn, views: np.ndarray, repeats: int) -> float:
    t = time.perf_counter()
    for _ in range(repeats):
        for v in views:
            fn(v)
    return round((time.perf_counter() - t) / (repeats * len(views)) * 1e3, 2)


def pillow_png(view: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(view).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from mme3dr.assets import load_asset
    from mme3dr.render.output import encode_png, write_render
    from mme3dr.render.presets import get_preset
    from mme3dr.render.renderer import get_renderer

    preset = get_preset("canonical").with_overrides(background="transparent")
    with tempfile.TemporaryDirectory() as tmp:
        out = get_renderer().render(load_asset(make_meshes(Path(tmp))["20k"]), preset)
        views = out.rgba
        t = time.perf_counter()
        for i in range(a.repeats):
            write_render(Path(tmp) / f"r{i}", out, preset, {})
        write_ms = round((time.perf_counter() - t) / (a.repeats * len(views)) * 1e3, 2)
        sizes = [os.path.getsize(Path(tmp) / "r0" / f"{i:03d}.png") for i in range(len(views))]
    for v in views:  # the encoder is lossless
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(v)))), v)
    result = {
        "machine": platform.node(), "cpu_count": os.cpu_count(), "resolution": preset.resolution,
        "views": len(views), "repeats": a.repeats,
        "object_pixels_fraction": round(float((views[..., 3] > 0).mean()), 3),
        "write_render_ms_per_view": write_ms,
        "encode_png_ms_per_view_1_thread": per_view_ms(encode_png, views, a.repeats),
        "pillow_level1_ms_per_view_1_thread": per_view_ms(pillow_png, views, a.repeats),
        "encode_png_mean_bytes": int(np.mean(sizes)),
        "pillow_level1_mean_bytes": int(np.mean([len(pillow_png(v)) for v in views])),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
