"""Numbers and pictures of a dataset, for the data-exploration notebook.

Duplicates are counted because the Kaggle cat faces hold thousands of exact copies:
they weigh some images twice in training, bias FID's reference statistics, and make a
memorised copy look like a new sample. `data.dedupe` drops them at load.

The pixel histograms exist because of the course project's costliest bug: images
fed to a tanh generator's discriminator in [0, 1] instead of [-1, 1]. Drawn side
by side with the generator's output range, the mismatch is visible at a glance.
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from PIL import Image

from lib.core import viz
from lib.data import ImageData, duplicate_groups, to_float


def class_names(data: ImageData) -> list[str]:
    return data.class_names or ["(unlabelled)"]


def class_counts(data: ImageData) -> dict[str, int]:
    """Images per class, in class order (one entry for unlabelled data)."""
    if data.labels is None:
        return {"(unlabelled)": len(data)}
    counts = torch.bincount(data.labels, minlength=data.num_classes)
    return {name: int(c) for name, c in zip(class_names(data), counts, strict=True)}


def overview(data: ImageData) -> dict:
    """Counts, shape and balance: max/min class size (1.0 = perfectly balanced)."""
    counts = list(class_counts(data).values())
    return {"dataset": data.name, "images": len(data), "channels": data.channels,
            "image_size": data.image_size, "classes": data.num_classes,
            "smallest_class": min(counts), "largest_class": max(counts),
            "imbalance": round(max(counts) / max(1, min(counts)), 3),
            "skipped_files": data.skipped}


def channel_stats(data: ImageData) -> list[dict]:
    """Per-channel mean/std of the stored uint8 pixels and of what the models see ([-1, 1])."""
    rows = []
    for c in range(data.channels):
        raw = data.images[:, c].double()  # (N, H, W)
        seen = to_float(data.images[:, c]).double()
        rows.append({"channel": c, "uint8_mean": round(raw.mean().item(), 2),
                     "uint8_std": round(raw.std().item(), 2),
                     "model_mean": round(seen.mean().item(), 4),
                     "model_std": round(seen.std().item(), 4),
                     "model_min": round(seen.min().item(), 4),
                     "model_max": round(seen.max().item(), 4)})
    return rows


def balance_figure(data: ImageData) -> Figure:
    counts = class_counts(data)
    fig = Figure(figsize=(max(4, 0.6 * len(counts) + 2), 2.8), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(list(counts), list(counts.values()), color="tab:blue")
    ax.set_ylabel("images")
    ax.set_title(f"{data.name}: images per class")
    ax.tick_params(axis="x", rotation=45 if len(counts) > 6 else 0)
    return fig


def pixel_histogram_figure(data: ImageData, max_pixels: int = 2_000_000) -> Figure:
    """Pixel values as stored, as [0, 1] (the bug) and as [-1, 1] (the contract).

    The shaded band is the range a tanh generator produces: real images must fill
    the same range, or the discriminator tells real from fake by brightness alone.
    """
    pixels = data.images.flatten()
    if len(pixels) > max_pixels:  # a strided subsample keeps big datasets quick
        pixels = pixels[:: len(pixels) // max_pixels + 1]
    panels = [("stored uint8", pixels.float(), None),
              ("÷255 -> [0, 1]: the bug", pixels.float() / 255, (-1, 1)),
              ("to_float -> [-1, 1]: what models see", to_float(pixels), (-1, 1))]
    fig = Figure(figsize=(12, 2.8), layout="constrained")
    for i, (title, values, band) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        if band:
            ax.axvspan(*band, color="tab:orange", alpha=0.15, label="tanh output range")
            ax.set_xlim(-1.1, 1.1)
        ax.hist(values.numpy(), bins=64, color="tab:blue")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        if band:
            ax.legend(loc="upper center", fontsize=8)
    fig.suptitle(f"{data.name}: pixel values (log count)")
    return fig


def class_samples(data: ImageData, per_class: int = 8, seed: int = 0) -> Image.Image:
    """One labelled row of random examples per class."""
    gen = torch.Generator().manual_seed(seed)
    if data.labels is None:
        idx = torch.randperm(len(data), generator=gen)[: per_class * 4]
        return viz.label_rows(viz.make_grid(data.images[idx], nrow=per_class),
                              [""] * (len(idx) // per_class or 1))
    rows = []
    for k in range(data.num_classes):
        members = torch.nonzero(data.labels == k).flatten()
        pick = members[torch.randperm(len(members), generator=gen)[:per_class]]
        row = data.images[pick]
        if len(row) < per_class:  # pad rare classes with black tiles, keeping rows aligned
            pad = torch.zeros(per_class - len(row), *row.shape[1:], dtype=torch.uint8)
            row = torch.cat([row, pad])
        rows.append(row)
    return viz.label_rows(viz.make_grid(torch.cat(rows), nrow=per_class), class_names(data))


def mean_images(data: ImageData) -> Image.Image:
    """The mean image of each class (of the whole set when unlabelled), captioned."""
    if data.labels is None:
        means = data.images.float().mean(0, keepdim=True)  # (1, C, H, W)
    else:
        means = torch.stack([data.images[data.labels == k].float().mean(0)
                             for k in range(data.num_classes)])  # (K, C, H, W)
        means = means.nan_to_num(0.0)  # a class absent from a limited subset stays black
    grid = viz.make_grid(means.round().to(torch.uint8), nrow=len(means))
    return viz.with_caption(viz.to_pil(grid), "mean image per class, in class order",
                            min_width=max(256, 48 * len(means)))


def duplicates(data: ImageData, groups: list[list[int]] | None = None) -> dict:
    """How many images are exact copies of an earlier one (identical decoded pixels)."""
    groups = duplicate_groups(data.images) if groups is None else groups
    copies = sum(len(g) - 1 for g in groups)
    return {"images": len(data), "distinct": len(data) - copies, "duplicates": copies,
            "duplicate_share": round(copies / max(1, len(data)), 4),
            "repeated_images": len(groups), "largest_group": max(map(len, groups), default=1)}


def duplicate_rows(groups: list[list[int]], top: int = 5, show: int = 6) -> list[dict]:
    """The `top` largest groups: their size and the first `show` indices (file order)."""
    return [{"copies": len(g), "indices": ", ".join(map(str, g[:show])) +
             (", ..." if len(g) > show else "")} for g in groups[:top]]


def duplicates_figure(data: ImageData, groups: list[list[int]], top: int = 4,
                      per_group: int = 6) -> Image.Image | None:
    """The `top` largest groups side by side, one row each (blank tiles pad short rows)."""
    if not groups:
        return None
    rows = []
    for group in groups[:top]:
        row = data.images[group[:per_group]]
        if len(row) < per_group:
            pad = torch.full((per_group - len(row), *row.shape[1:]), 255, dtype=torch.uint8)
            row = torch.cat([row, pad])
        rows.append(row)
    grid = viz.make_grid(torch.cat(rows), nrow=per_group)
    return viz.label_rows(grid, [f"{len(g)} copies" for g in groups[:top]],
                          min_width=max(256, 64 * per_group))
