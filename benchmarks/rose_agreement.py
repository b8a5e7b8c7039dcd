"""Agreement of our renders with the official Blender renders of the Toys4K rose (``shared/fixtures/toys4k_rose``).

Prints, for the ``canonical`` preset rendered from the fixture's 24 camera poses:
- per-view mean luminance over each image's fully covered pixels (alpha = 255), ours and official, and their
  Pearson correlation across the 24 views (luminance: PIL's "L", 0.299 R + 0.587 G + 0.114 B on the 8-bit sRGB
  values). Partly covered edge pixels are left out: their colour depends on each renderer's anti-aliasing
  filter, and the rose's stem is only 2-3 pixels wide;
- silhouette agreement: per view, min(share of the official mask covered by ours, share of ours inside the
  official one), 2-pixel tolerance; the worst view is reported.

Usage: python benchmarks/rose_agreement.py [FIXTURE_DIR] [--resolution 512] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mme3dr.assets import load_asset
from mme3dr.render.cameras import read_transforms
from mme3dr.render.presets import get_preset
from mme3dr.render.renderer import get_renderer

SHARED = Path(os.environ.get("MME3DR_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DEFAULT = SHARED / "fixtures" / "toys4k_rose"


def masked_luminance(rgba: np.ndarray) -> float:
    """Mean PIL "L" luminance of the fully covered pixels (alpha = 255)."""
    luma = np.asarray(Image.fromarray(np.ascontiguousarray(rgba[..., :3])).convert("L"), dtype=float)
    return float(luma[rgba[..., 3] == 255].mean())


def silhouette_agreement(ours: np.ndarray, theirs: np.ndarray, tol_px: int = 2) -> float:
    """min(covered, inside) of two boolean masks with a (2 tol + 1)^2 dilation tolerance."""
    tol = np.ones((2 * tol_px + 1,) * 2, bool)
    covered = (theirs & ndimage.binary_dilation(ours, tol)).sum() / theirs.sum()
    inside = (ours & ndimage.binary_dilation(theirs, tol)).sum() / ours.sum()
    return float(min(covered, inside))


def measure(fixture: Path, resolution: int = 512) -> dict:
    cams = read_transforms(fixture / "transforms.json")
    preset = get_preset("canonical").with_overrides(resolution=resolution)
    out = get_renderer().render(load_asset(fixture / "mesh.ply"), preset, cameras=cams)
    official = [np.asarray(Image.open(fixture / f"{i:03d}.png").convert("RGBA")) for i in range(len(cams))]
    if resolution != official[0].shape[0]:
        official = [np.asarray(Image.fromarray(o).resize((resolution, resolution), Image.BILINEAR)) for o in official]
    ours_l = [masked_luminance(o) for o in out.rgba]
    theirs_l = [masked_luminance(o) for o in official]
    sil = [silhouette_agreement(o[..., 3] > 127, t[..., 3] > 127) for o, t in zip(out.rgba, official)]
    return {"preset": preset.tag, "resolution": resolution, "luminance_ours": ours_l, "luminance_official": theirs_l,
            "luminance_correlation": float(np.corrcoef(ours_l, theirs_l)[0, 1]), "silhouette_worst": min(sil)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fixture", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    r = measure(a.fixture, a.resolution)
    for i, (o, t) in enumerate(zip(r["luminance_ours"], r["luminance_official"])):
        print(f"view {i:2d}: ours {o:6.1f}  official {t:6.1f}")
    print(f"{r['preset']}: luminance correlation {r['luminance_correlation']:.3f}, "
          f"worst silhouette agreement {r['silhouette_worst']:.4f}")
    if a.json:
        a.json.write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
