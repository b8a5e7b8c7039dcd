"""Random but real weights for the feature extractors, saved to local files and loaded through the real paths."""

from pathlib import Path
from unittest import mock

import torch


def random_inception_weights(path: Path, seed: int = 0) -> Path:
    """torch-fidelity's Inception-v3 with random Kaiming-normal convolutions, saved as a state-dict file.

    PyTorch's default initialisation makes the 2048-d features vanish (~1e-8) through the deep stack; Kaiming
    initialisation keeps activations at unit scale, so the features of different images really differ.
    """
    from torch_fidelity import feature_extractor_inceptionv3 as fi

    torch.manual_seed(seed)
    with mock.patch.object(fi, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None):
        model = fi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(model.state_dict(), path)
    return Path(path)


def tiny_dinov2(folder: Path, seed: int = 0) -> Path:
    """A 2-layer DINOv2 built from a config with random weights, saved with save_pretrained."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=224)
    Dinov2Model(cfg).save_pretrained(folder)
    return Path(folder)
