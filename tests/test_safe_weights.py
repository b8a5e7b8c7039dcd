"""Weights files are read as tensors only: a crafted pickle is refused before any of it runs, through every CLI
option and API path that takes a weights file or folder (issue 13, point 2)."""

import builtins
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tiny_clip
import tiny_features
from mme3dr.cli import app
from mme3dr.metrics.features import INCEPTION_FILE, DinoV2Features, InceptionFeatures
from mme3dr.render.presets import get_preset
from mme3dr.weights import MissingWeightsError, UnsafeWeightsError, load_tensors


class _Boom:
    """Unpickling this calls ``open(path, "w")``: the file appears exactly when the pickle's code runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def crafted(path: Path, sentinel: Path, like: dict | None = None) -> Path:
    """A torch.save file holding real-looking tensors and a payload that creates ``sentinel`` when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**(like or {"weight": torch.zeros(2)}), "payload": _Boom(sentinel)}, path)
    return path


@pytest.fixture
def sentinel(tmp_path):
    return tmp_path / "PWNED"


def test_the_payload_really_runs_when_unpickled(tmp_path, sentinel):
    """The control: an unrestricted load of the crafted file creates the sentinel (what torch-fidelity did)."""
    path = crafted(tmp_path / "w.pth", sentinel)
    torch.load(path, weights_only=False)
    assert sentinel.exists()


@pytest.mark.filterwarnings("ignore:.*jit:FutureWarning", "ignore:.*TorchScript:UserWarning")
def test_load_tensors_reads_tensors_and_refuses_the_rest(tmp_path, sentinel):
    from safetensors.torch import save_file

    torch.save({"a": torch.ones(3)}, tmp_path / "ok.pth")
    save_file({"b": torch.zeros(2)}, str(tmp_path / "ok.safetensors"))
    assert torch.equal(load_tensors(tmp_path / "ok.pth")["a"], torch.ones(3))
    assert torch.equal(load_tensors(tmp_path / "ok.safetensors")["b"], torch.zeros(2))
    with pytest.raises(UnsafeWeightsError, match=r"refusing to load .*w\.pth.*Unsupported global"):
        load_tensors(crafted(tmp_path / "w.pth", sentinel))
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "ts.pt")
    with pytest.raises(UnsafeWeightsError, match="TorchScript"):
        load_tensors(tmp_path / "ts.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict"):
        load_tensors(tmp_path / "list.pth")
    assert not sentinel.exists()


# ---- Inception (KID/FID): torch-fidelity unpickles with weights_only=False, so we never let it read a file -----

def test_inception_weights_option(tmp_path, sentinel):
    with pytest.raises(UnsafeWeightsError, match="refusing to load"):
        InceptionFeatures(weights=crafted(tmp_path / "inc.pth", sentinel), device="cpu")
    assert not sentinel.exists()


def test_inception_from_weights_env(tmp_path, sentinel, monkeypatch):
    crafted(tmp_path / "w" / INCEPTION_FILE, sentinel)
    monkeypatch.setenv("MME3DR_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(UnsafeWeightsError):
        InceptionFeatures(device="cpu")
    assert not sentinel.exists()


def test_inception_from_the_torch_hub_cache(tmp_path, sentinel, monkeypatch):
    """Without a path, torch-fidelity's download goes to the torch hub cache; a file planted there is refused."""
    monkeypatch.delenv("MME3DR_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    crafted(tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE, sentinel)
    with pytest.raises(UnsafeWeightsError, match="cached"):
        InceptionFeatures(device="cpu")
    assert not sentinel.exists()


def test_good_inception_weights_still_load(tmp_path):
    weights = tiny_features.random_inception_weights(tmp_path / "inc.pth")
    ext = InceptionFeatures(weights=weights, device="cpu")
    state = torch.load(weights, weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in ext.model.state_dict().items())


@pytest.fixture
def dummy_reference(tmp_path):
    preset = get_preset("canonical")
    (tmp_path / "REF" / preset.tag).mkdir(parents=True)
    (tmp_path / "REF" / preset.tag / "reference.json").write_text(json.dumps({"objects": []}))
    return tmp_path / "REF"


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_cli_inception_weights(tmp_path, sentinel, dummy_reference, command):
    evil = crafted(tmp_path / "inc.pth", sentinel)
    run = tmp_path / "RUN"
    common = ["--metrics", "kid", "--reference", dummy_reference, "--inception-weights", evil, "--device", "cpu",
              "--no-progress"]
    if command == "score":
        res = _cli("score", run, *common)
    else:
        (tmp_path / "assets").mkdir()
        res = _cli("evaluate", "--model", "folder", "-a", f"root={tmp_path / 'assets'}", "--out", run,
                   "--limit", 1, *common)
    assert res.exit_code == 2 and "refusing to load" in res.output, res.output
    assert not sentinel.exists() and not run.exists()


# ---- CLIP (open_clip), DINOv2 and the VLM judge (transformers) --------------------------------------------------

def test_clip_weights(tmp_path, sentinel, dummy_reference):
    from mme3dr.metrics.clip import ClipModel

    name = tiny_clip.register()
    evil = crafted(tmp_path / "clip.pt", sentinel)
    with pytest.raises(UnsafeWeightsError):
        ClipModel(name, weights=evil, device="cpu")
    with pytest.raises(UnsafeWeightsError):
        ClipModel(name, pretrained=str(evil), device="cpu")
    res = _cli("score", tmp_path / "RUN", "--metrics", "clip", "--clip-model", name, "--clip-weights", evil,
               "--device", "cpu", "--no-progress")
    assert res.exit_code == 2 and "refusing to load" in res.output, res.output
    assert not sentinel.exists()


def test_dinov2_folder(tmp_path, sentinel, dummy_reference):
    folder = tiny_features.tiny_dinov2(tmp_path / "dino")
    (folder / "model.safetensors").unlink()
    crafted(folder / "pytorch_model.bin", sentinel)
    with pytest.raises(UnsafeWeightsError):
        DinoV2Features(str(folder), device="cpu")
    res = _cli("score", tmp_path / "RUN", "--metrics", "kid_dinov2", "--reference", dummy_reference,
               "--dinov2-model", folder, "--device", "cpu", "--no-progress")
    assert res.exit_code == 2 and "refusing to load" in res.output, res.output
    assert not sentinel.exists()


def test_vlm_folder(tmp_path, sentinel):
    from tiny_qwen import build_tiny_qwen25_vl

    from mme3dr.metrics.vlm import TransformersVLM

    folder = build_tiny_qwen25_vl(tmp_path / "vlm")
    for f in folder.glob("*.safetensors"):
        f.unlink()
    crafted(folder / "pytorch_model.bin", sentinel)
    with pytest.raises(UnsafeWeightsError):
        TransformersVLM(str(folder), device="cpu").load()
    assert not sentinel.exists()


def test_checkpoint_code_is_never_run(tmp_path, sentinel, monkeypatch):
    """A model folder whose config names its own Python code (``auto_map``): transformers asks on the terminal
    whether to run it when trust_remote_code is not given; here the answer would be yes, and still nothing runs."""
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mme3dr-custom", "auto_map": {
        "AutoConfig": "custom_code.CustomConfig", "AutoProcessor": "custom_code.CustomProcessor",
        "AutoModelForImageTextToText": "custom_code.CustomModel"}}))
    (folder / "custom_code.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n"
                                           "from transformers import PretrainedConfig\n"
                                           "class CustomConfig(PretrainedConfig):\n    model_type = 'mme3dr-custom'\n")
    monkeypatch.setattr(builtins, "input", lambda *a, **k: "y")
    from mme3dr.metrics.vlm import TransformersVLM

    with pytest.raises(MissingWeightsError):
        TransformersVLM(str(folder), device="cpu").load()
    assert not sentinel.exists()


# ---- generator weights: the ShapeLLM VQ-VAE (.bin) and the reference policy ------------------------------------

def test_shapellm_vqvae_file(tmp_path, sentinel):
    from reference_policy.shapellm_vqvae import load_vqvae

    with pytest.raises(UnsafeWeightsError):
        load_vqvae(crafted(tmp_path / "3DVQVAE.bin", sentinel))
    assert not sentinel.exists()


def test_reference_policy_reads_safetensors_only(tmp_path, sentinel):
    from reference_policy.bundled import SFT as shipped
    from reference_policy.policy import ReferencePolicy

    ckpt = tmp_path / "ckpt"
    shutil.copytree(shipped, ckpt, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copy(shipped / "vqvae" / "vqvae.safetensors", ckpt / "vqvae")
    crafted(ckpt / "model" / "pytorch_model.bin", sentinel)
    with pytest.raises(OSError, match="safetensors"):
        ReferencePolicy.from_pretrained(ckpt)
    assert not sentinel.exists()
