"""A tiny open_clip model registered from a config, with random weights saved to a local file."""

from pathlib import Path

import open_clip
import torch

TINY_CLIP = "mme3dr-tiny-clip"
CONFIG = {"embed_dim": 32,
          "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
          "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def register() -> str:
    open_clip.factory._MODEL_CONFIGS[TINY_CLIP] = CONFIG  # same effect as add_model_config(<dir with the json>)
    return TINY_CLIP


def tiny_clip_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Random (seeded) weights of the tiny model saved as a state-dict file, loadable as ``pretrained=path``."""
    register()
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP, pretrained=None)
    path = Path(folder) / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path
