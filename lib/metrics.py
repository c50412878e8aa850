"""FID, KID, SSIM and a diversity score through torchmetrics, with numbers a user can trust.

Every score is computed from features of one named network, and every result
says which (`features`), at what image size and from how many samples:
numbers from different feature networks, sizes or counts are not comparable.

- `inception`: the standard Inception-v3 of torch-fidelity, through
  torchmetrics. Its weights come from a local file (checked by hash) so that
  offline machines and Kaggle can evaluate.
- `classifier`: a small CNN trained here on the labelled real data and cached
  under `cache_dir`: offline, seconds to train on a CPU, comparable only with
  itself.

`Evaluator` extracts the real features once (cached on disk), then scores
each generated batch: FID with a bootstrap interval, KID with its standard
deviation over subsets, per-class FID for class-conditional models, diversity
(mean pairwise feature distance relative to real data: ~1 as diverse as the
data, -> 0 under mode collapse) and SSIM (reconstructions, or each sample
against its nearest real image).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.kid import KernelInceptionDistance

from lib.checkpoint import atomic_save
from lib.data import ImageData, to_float, to_unit

CACHE_VERSION = 1
FEATURES = ("auto", "classifier", "inception")

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_SHA256 = "6726825d"  # torch.hub convention: the file name carries its SHA-256 prefix
INCEPTION_DIM = 2048

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


class InceptionFeatures(nn.Module):
    """torchmetrics' Inception-v3 with torch-fidelity's weights: 2048-d features of uint8 images."""

    def __init__(self, weights_path: Path):
        super().__init__()
        self.num_features = INCEPTION_DIM
        self.net = NoTrainInceptionV3(name="inception-v3-compat",
                                      features_list=[str(INCEPTION_DIM)],
                                      feature_extractor_weights_path=str(weights_path))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # Inception wants RGB: repeat grayscale
        return self.net(x)  # (N, 2048); resizes to 299 inside


class _Precomputed(nn.Module):
    """Hands features already extracted straight to torchmetrics.

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
# Inception weights: found locally, checked, never fetched unless asked


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inception_candidates() -> list[Path]:
    """Where a weights file is looked for: torch.hub's cache, then Kaggle inputs."""
    places = [Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE]
    kaggle = Path("/kaggle/input")
    if kaggle.is_dir():  # newer Kaggle mounts nest deeper: search a few levels
        for depth in range(1, 5):
            places += sorted(kaggle.glob("/".join(["*"] * depth + [INCEPTION_FILE])))
    return places


def _missing_weights(searched: list[Path], why: str) -> MetricsError:
    where = "\n  ".join(str(p) for p in searched)
    return MetricsError(
        f"Inception weights not found ({why}). Looked in:\n  {where}\n"
        f"Get the file {INCEPTION_FILE} from {INCEPTION_URL} (on Kaggle: add a dataset that "
        f"holds it) and put it at {searched[0] if searched else 'a path of your choice'}, "
        f"or pass its path as weights_path. On a machine with internet, download=True "
        f"fetches it there. For labelled data, features='classifier' needs no download."
    )


def resolve_inception_weights(weights_path: str | Path | None = None,
                              sha256: str = INCEPTION_SHA256, download: bool = False) -> Path:
    """Find the Inception weights file, check its hash and that it holds only tensors."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise _missing_weights([path], f"weights_path {path} does not exist")
    else:
        candidates = _inception_candidates()
        path = next((p for p in candidates if p.is_file()), None)
        if path is None and not download:
            raise _missing_weights(candidates, "download=False")
        if path is None:
            path = candidates[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(INCEPTION_URL, str(path),
                                               hash_prefix=INCEPTION_SHA256)
            except (OSError, RuntimeError) as e:  # URLError is an OSError
                raise _missing_weights(candidates, f"download failed: {e}") from e
    actual = _sha256(path)
    if not actual.startswith(sha256.lower()):
        raise MetricsError(
            f"{path}: SHA-256 {actual[:16]}... does not start with {sha256}; the file is corrupt "
            f"or not torch-fidelity's Inception weights. Delete it and fetch {INCEPTION_URL} again."
        )
    # torch-fidelity unpickles this file with weights_only=False: prove first that it holds
    # nothing but tensors, since a short hash prefix alone can be forged.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises several types for foreign objects
        raise MetricsError(
            f"{path} is not a plain state dict of tensors ({e}); refusing to load it"
        ) from e
    if not isinstance(state, dict):
        raise MetricsError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return path


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
# Scores on features (torchmetrics does the maths)


def _fid_metric(dim: int) -> FrechetInceptionDistance:
    # sync_on_compute=False: under DDP rank 0 scores alone; a sync would wait for the others
    return FrechetInceptionDistance(feature=_Precomputed(dim), reset_real_features=False,
                                    sync_on_compute=False)


def _fid_with_interval(metric: FrechetInceptionDistance, fake: torch.Tensor, bootstrap: int,
                       seed: int) -> tuple[float, float]:
    """FID of `fake` against the real statistics held by `metric`, and its bootstrap std.

    Resampling with replacement biases FID upward, so only the spread of the
    replicates is used: the interval is centred on the estimate.
    """
    metric.reset()  # keeps the real statistics (reset_real_features=False)
    metric.update(fake, real=False)
    fid = float(metric.compute())
    replicates = []
    gen = torch.Generator().manual_seed(seed)
    for _ in range(bootstrap):
        metric.reset()
        metric.update(fake[torch.randint(len(fake), (len(fake),), generator=gen)], real=False)
        replicates.append(float(metric.compute()))
    metric.reset()  # hold no fake state between calls
    std = torch.tensor(replicates).std().item() if len(replicates) > 1 else float("nan")
    return fid, std


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets (N, D), through torchmetrics."""
    metric = _fid_metric(real.shape[1])
    metric.update(real, real=True)
    return _fid_with_interval(metric, fake, bootstrap=0, seed=0)[0]


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean Euclidean distance between distinct rows of (N, D) features (first 2,000 rows)."""
    f = features[:DIVERSITY_MAX].double()
    n = len(f)
    if n < 2:
        return float("nan")
    # the exact (not matmul-based) form: duplicates give 0, never sqrt of a tiny negative
    dist = torch.cdist(f, f, compute_mode="donot_use_mm_for_euclid_dist")  # (n, n), zero diagonal
    return float(dist.sum() / (n * (n - 1)))


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

    Real features are extracted once (and cached on disk under `cache_dir`,
    keyed by data content, feature network, image size and count); each
    `evaluate` call extracts only the fake features. Results do not depend on
    the batch size fed in, and calls hold no state between them.
    """

    def __init__(self, real: ImageData, features: str = "auto", num_samples: int = 500,
                 device: str | torch.device = "cpu", cache_dir: str | Path = "data/cache",
                 weights_path: str | Path | None = None, weights_sha256: str = INCEPTION_SHA256,
                 download: bool = False, num_real: int | None = None, bootstrap: int = 10,
                 batch_size: int = 100, seed: int = 0):
        if features not in FEATURES:
            raise ValueError(f"unknown features {features!r}; choose one of {list(FEATURES)}")
        if features == "auto":
            features = default_features(real, device)
        self.features = features
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir)
        self.num_samples = num_samples
        self.bootstrap = bootstrap
        self.batch_size = batch_size
        self.seed = seed
        self.dataset = real.name
        self.image_shape = tuple(real.images.shape[1:])
        self.meta: dict = {}
        fingerprint = _fingerprint(real)
        if features == "classifier":
            self.net, accuracy, net_path = load_classifier(real, self.cache_dir, self.device,
                                                           fingerprint)
            self.meta["classifier_accuracy"] = round(accuracy, 4)
            net_id = net_path.name
        else:
            weights = resolve_inception_weights(weights_path, weights_sha256, download)
            self.net = InceptionFeatures(weights).to(self.device)
            net_id = _sha256(weights)
        self.dim = self.net.num_features

        # A fixed random subset of the real data: the same for every call and every run.
        n_real = min(len(real), num_real or num_samples)
        subset = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:n_real]
        self.real_images = real.images.cpu()[subset]  # (n_real, C, H, W)
        self.real_labels = real.labels.cpu()[subset] if real.labels is not None else None
        self.class_names = real.class_names
        key = {"data": fingerprint, "features": features, "net": net_id,
               "image_size": real.image_size, "n_real": n_real, "seed": seed}
        prefix = f"real_{real.name}_{features}_{real.image_size}px_n{n_real}"
        self.cache_path = _cache_path(self.cache_dir, prefix, key)
        blob = _load(self.cache_path)
        if blob is None:
            blob = {"features": self.extract(self.real_images)}
            _save(self.cache_path, blob)
        self.real_features = blob["features"]  # (n_real, D) float32, CPU

        self._fid = _fid_metric(self.dim)
        self._fid.update(self.real_features, real=True)
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
        out = [self.net(x.to(self.device)).float().cpu() for x in images.split(self.batch_size)]
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
            metric = _fid_metric(self.dim)
            metric.update(real_k, real=True)
            fid, std = _fid_with_interval(metric, fake_k, self.bootstrap, self.seed + 1 + k)
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
                 recon_pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """Score uint8 (N, C, H, W) samples; returns a flat dict for history.jsonl.

        Numbers: fid (+ fid_std, fid_low, fid_high), kid, kid_std, diversity,
        ssim_nearest, ssim_recon (with `recon_pairs` = (originals, reconstructions)),
        fid_class_<k> (+ _std) and fid_class_mean (with `fake_labels`).
        Metadata: features, feature_dim, image_size, dataset, n_real, n_fake, warnings.
        """
        fake = fake.detach()
        if len(fake) < 2:
            raise MetricsError(f"evaluation needs at least 2 generated images, got {len(fake)}")
        if fake_labels is not None and len(fake_labels) != len(fake):
            raise MetricsError(f"{len(fake_labels)} fake_labels for {len(fake)} generated images")
        notes: list[str] = []
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(self.seed)  # KID's subsets: reproducible, caller's RNG untouched
            fake_features = self.extract(fake)
            fid, fid_std = _fid_with_interval(self._fid, fake_features, self.bootstrap, self.seed)
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
                "warnings": notes}


META_KEYS = ("features", "feature_dim", "image_size", "dataset", "n_real", "n_fake",
             "classifier_accuracy", "warnings")


def scores(result: dict) -> dict:
    """The scores of an `evaluate` result without its metadata (what curves and trackers want)."""
    return {k: v for k, v in result.items() if k not in META_KEYS}
