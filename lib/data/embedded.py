"""The embedded datasets: scikit-learn's digits and procedural shapes (no files needed)."""

from __future__ import annotations

import numpy as np
import torch

from lib.data.images import ImageData, resize_images

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
        3: ((np.abs(dx) <= r * 0.3) | (np.abs(dy) <= r * 0.3))
        & (np.abs(dx) <= r) & (np.abs(dy) <= r),
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
