"""The classifier feature network: a small CNN trained on the labelled real data, cached."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lib.data import ImageData, to_float
from lib.metrics.cache import cache_path, data_fingerprint, load_cached, one_at_a_time, save_cached
from lib.metrics.scores import MetricsError

CLASSIFIER_DIM = 64  # small, so CPU-sized sample counts still give a full-rank covariance
CLASSIFIER_MAX_SIZE = 32  # larger images are downscaled: the net stays seconds-cheap on a CPU
CLASSIFIER_STEPS = 200  # ~99% held-out accuracy on digits; a few CPU seconds


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
    key = {"net": "classifier", "data": fingerprint or data_fingerprint(real),
           "image_size": real.image_size, "steps": CLASSIFIER_STEPS, "dim": CLASSIFIER_DIM}
    path = cache_path(Path(cache_dir), f"classifier_{real.name}_{real.image_size}px", key)
    with one_at_a_time(path):
        blob = load_cached(path)
        if blob is None:
            net, accuracy = train_classifier(real, device=device)
            save_cached(path, {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
                               "accuracy": accuracy})
    if blob is not None:
        net = ClassifierFeatures(real.channels, real.num_classes, real.image_size)
        net.load_state_dict(blob["state_dict"])
        accuracy = float(blob["accuracy"])
    return net.to(device).eval().requires_grad_(False), accuracy, path
