"""Launched by tests/test_distributed.py, alone or under ``torchrun``: ``mme3dr.evaluate.evaluate`` with the tests'
tiny CLIP / Inception / DINOv2 on the CPU, each process taking its ranks from the environment.

    python tests/dist_evaluate.py OUT ASSETS REF WEIGHTS_DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tiny_clip  # noqa: E402
from mme3dr.distributed import joined  # noqa: E402
from mme3dr.evaluate import evaluate  # noqa: E402
from mme3dr.metrics.specs import ScoreOptions  # noqa: E402
from mme3dr.render.presets import get_preset  # noqa: E402

PRESET = get_preset("canonical").with_overrides(resolution=48, n_views=4)
METRICS = ["clip", "geometry", "kid", "fid", "kid_dinov2"]
LIMIT = 7

if __name__ == "__main__":
    out, assets, ref, weights = (Path(a) for a in sys.argv[1:5])
    tiny_clip.register()
    options = ScoreOptions(device="cpu", clip_model=tiny_clip.TINY_CLIP, clip_pretrained=str(weights / "tiny_clip.pt"),
                           inception_weights=str(weights / "inc.pth"), dinov2_model=str(weights / "dino"),
                           batch_size=5, decode_workers=1)
    with joined() as ranks:
        evaluate("folder", out, {"root": str(assets)}, METRICS, reference=ref, limit=LIMIT, preset=PRESET,
                 options=options, progress=False, score_workers=1, ranks=ranks)
