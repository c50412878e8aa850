"""Datasets as cached uint8 tensors, and the one place where pixels change range.

Every loader returns an `ImageData`: images stored once as uint8 (N, C, H, W)
plus int64 labels where the dataset has classes. Models see floats in [-1, 1];
`to_float` and `to_uint8` are the only conversions between the two.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CACHE_VERSION = 1


class DatasetError(ValueError):
    """A dataset is missing or malformed; the message says what to do."""


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor | None  # (N,) int64, or None for unlabelled data
    class_names: list[str] | None
    name: str
    skipped: int = 0  # unreadable files left out while loading

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DatasetError(
                f"{self.name}: images must be uint8 (N, C, H, W), "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DatasetError(f"{self.name}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0


# ---------------------------------------------------------------------------
# The pixel contract


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1] (what every model sees)."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 pixels, got {x.dtype}")
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] (clamped) -> uint8 in [0, 255]."""
    return x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model floats in [-1, 1] or uint8 -> float in [0, 1] (for SSIM and plots)."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.detach().float().clamp(-1, 1).add(1).mul(0.5)


# ---------------------------------------------------------------------------
# Shared helpers


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Center-crop to a square, then resize (antialiased) to size x size. uint8 in and out."""
    _, _, h, w = images.shape
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        images = images[:, :, top : top + s, left : left + s]
    if images.shape[-1] == size:
        return images.contiguous()
    out = []
    for chunk in images.split(512):  # bounded memory on large datasets
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def set_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Convert between grayscale and RGB when a config asks for a channel count."""
    c = images.shape[1]
    if channels is None or channels == c:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        gray = (images.float() * weights).sum(1, keepdim=True)
        return gray.round().clamp(0, 255).to(torch.uint8)
    raise DatasetError(f"cannot convert {c}-channel images to {channels} channels")


def _cache_file(root: Path, name: str, key: dict) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return root / "cache" / f"{name}_{key['image_size']}px_{digest}.pt"


def _save_cache(path: Path, data: ImageData) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"version": CACHE_VERSION, "images": data.images, "labels": data.labels,
                "class_names": data.class_names, "skipped": data.skipped}, tmp)
    tmp.replace(path)


def _load_cache(path: Path, name: str) -> ImageData | None:
    try:
        blob = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION:
        return None
    return ImageData(blob["images"], blob["labels"], blob["class_names"], name, blob["skipped"])


# ---------------------------------------------------------------------------
# Embedded datasets


def load_digits(image_size: int) -> ImageData:
    """scikit-learn's 1,797 real 8x8 handwritten digits (values 0-16), upsampled."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    pixels = torch.from_numpy(bunch.images).float().mul(255.0 / 16.0)  # (N, 8, 8)
    images = pixels.round().clamp(0, 255).to(torch.uint8).unsqueeze(1)  # (N, 1, 8, 8)
    images = resize_images(images, image_size)
    labels = torch.from_numpy(bunch.target).long()
    return ImageData(images, labels, [str(d) for d in range(10)], "digits")


SHAPE_NAMES = ["circle", "square", "triangle", "cross"]


def make_shapes(image_size: int, n: int = 2000, seed: int = 0) -> ImageData:
    """Procedural RGB shapes: one coloured shape on a contrasting background, labelled by kind."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPE_NAMES), size=n)
    ys, xs = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    ys, xs = ys / image_size, xs / image_size  # pixel centres in (0, 1)
    cx = rng.uniform(0.35, 0.65, n)[:, None, None]
    cy = rng.uniform(0.35, 0.65, n)[:, None, None]
    r = rng.uniform(0.18, 0.3, n)[:, None, None]
    dx, dy = xs[None] - cx, ys[None] - cy
    masks = {
        0: dx**2 + dy**2 <= r**2,
        1: (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85),
        2: (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6),
        3: ((np.abs(dx) <= r * 0.3) | (np.abs(dy) <= r * 0.3)) & (np.abs(dx) <= r) & (np.abs(dy) <= r),
    }
    mask = np.zeros((n, image_size, image_size), dtype=bool)
    for k, m in masks.items():
        sel = labels == k
        mask[sel] = m[sel]
    fg = rng.uniform(0.55, 1.0, (n, 3, 1, 1))
    bg = rng.uniform(0.0, 0.35, (n, 3, 1, 1))
    img = np.where(mask[:, None], fg, bg) * 255.0
    images = torch.from_numpy(img.round().astype(np.uint8))
    return ImageData(images, torch.from_numpy(labels).long(), list(SHAPE_NAMES), "shapes")


# ---------------------------------------------------------------------------
# Entry point

LOADERS = {
    "digits": lambda image_size, **_: load_digits(image_size),
    "shapes": lambda image_size, seed=0, **_: make_shapes(image_size, seed=seed),
}
EMBEDDED = {"digits", "shapes"}


def load_dataset(
    dataset: str,
    image_size: int,
    root: str | Path = "data",
    path: str | None = None,
    channels: int | None = None,
    download: bool = False,
    limit: int | None = None,
    seed: int = 0,
    cache: bool = True,
) -> ImageData:
    """Load `dataset` as uint8 (N, C, H, W) at `image_size`, cached under `root/cache/`.

    The keyword names match the `data` section of a config, so
    `load_dataset(**asdict(cfg.data))` works.
    """
    if dataset not in LOADERS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {sorted(LOADERS)}")
    if image_size < 4:
        raise DatasetError(f"image_size must be at least 4, got {image_size}")
    root = Path(root)
    key = {"dataset": dataset, "image_size": image_size, "seed": seed,
           "path": str(Path(path).resolve()) if path else None}
    cache_path = _cache_file(root, dataset, key)
    data = None
    if cache and dataset not in EMBEDDED and cache_path.exists():
        data = _load_cache(cache_path, dataset)
    if data is None:
        data = LOADERS[dataset](image_size=image_size, root=root, path=path,
                                download=download, seed=seed)
        if cache and dataset not in EMBEDDED:
            _save_cache(cache_path, data)
    if data.skipped:
        print(f"[{dataset}] skipped {data.skipped} unreadable image file(s)")
    images = set_channels(data.images, channels)
    labels = data.labels
    if limit is not None and limit < len(images):
        images, labels = images[:limit], labels[:limit] if labels is not None else None
    return ImageData(images, labels, data.class_names, dataset, data.skipped)
