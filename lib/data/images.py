"""`ImageData`, the pixel contract (`to_float` / `to_uint8` / `to_unit`, the only range
conversions) and the tensor helpers every loader shares: resizing, channels, duplicates."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
            raise DatasetError(
                f"{self.name}: {len(self.labels)} labels for {len(self.images)} images")

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



def duplicate_groups(images: torch.Tensor) -> list[list[int]]:
    """Indices of images with identical pixels, one list per repeated image, largest first.

    Exact duplicates only: a hash of each image's uint8 pixels as loaded (decoded and
    resized), so two files that decode to the same pixels count as one image.
    """
    groups: dict[bytes, list[int]] = {}
    for i, image in enumerate(images.detach().cpu().numpy()):  # (C, H, W) uint8 each
        groups.setdefault(hashlib.blake2b(image.tobytes(), digest_size=16).digest(), []).append(i)
    repeated = [g for g in groups.values() if len(g) > 1]
    return sorted(repeated, key=lambda g: (-len(g), g[0]))


def distinct_indices(images: torch.Tensor) -> torch.Tensor:
    """Indices of the first occurrence of every distinct image, in order (int64)."""
    later = {i for group in duplicate_groups(images) for i in group[1:]}
    return torch.tensor([i for i in range(len(images)) if i not in later], dtype=torch.long)
