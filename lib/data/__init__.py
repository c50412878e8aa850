"""Datasets as cached uint8 tensors, and the one place where pixels change range.

Every loader returns an `ImageData`: images stored once as uint8 (N, C, H, W)
plus int64 labels where the dataset has classes. Models see floats in [-1, 1];
`to_float` and `to_uint8` are the only conversions between the two.

Datasets (the README's table): "digits" and "shapes" are embedded; "mnist" reads
torchvision's raw IDX files; "cats", "artbench" and "folder" read folders of
images through one reader; "artbench32" reads CIFAR-style pickled batches.
Labelled datasets on disk use their training split only (MNIST's 60,000
images, ArtBench-10's 50,000); the test split stays untouched for evaluation.
Decoded tensors are cached under `root/cache/`, keyed on the files read (names,
sizes, modification times): adding, removing or editing one rebuilds the cache;
`verify_cache` adds a hash of their contents (for copies that keep size and mtime).

Modules: `images` (`ImageData`, the pixel contract, resizing, duplicates),
`embedded` (digits, shapes), `find` (where data is looked for, `KAGGLE_INPUT`),
`folders` (the image-folder reader: cats, artbench, folder), `artbench32`,
`mnist`, `cache` (decoded tensors on disk). Tests that monkeypatch a module
constant patch the module that reads it (`lib.data.find.KAGGLE_INPUT`).
"""

from __future__ import annotations

from pathlib import Path

from lib.data.artbench32 import load_artbench32
from lib.data.cache import cached_files
from lib.data.embedded import SHAPE_NAMES, load_digits, make_shapes
from lib.data.folders import (
    ARTBENCH_STYLES,
    load_artbench,
    load_cats,
    load_folder,
    read_image_folder,
    read_images,
)
from lib.data.images import (
    DatasetError,
    ImageData,
    distinct_indices,
    duplicate_groups,
    resize_images,
    set_channels,
    to_float,
    to_uint8,
    to_unit,
)
from lib.data.mnist import MNIST_FILES, load_mnist, read_idx

__all__ = [
    "ARTBENCH_STYLES",
    "EMBEDDED",
    "LOADERS",
    "MNIST_FILES",
    "SHAPE_NAMES",
    "DatasetError",
    "ImageData",
    "cached_files",
    "distinct_indices",
    "duplicate_groups",
    "load_artbench",
    "load_artbench32",
    "load_cats",
    "load_dataset",
    "load_digits",
    "load_folder",
    "load_mnist",
    "make_shapes",
    "read_idx",
    "read_image_folder",
    "read_images",
    "resize_images",
    "set_channels",
    "to_float",
    "to_uint8",
    "to_unit",
]


# ---------------------------------------------------------------------------
# Entry point

LOADERS = {
    "digits": lambda image_size, **_: load_digits(image_size),
    "shapes": lambda image_size, seed=0, **_: make_shapes(image_size, seed=seed),
    "mnist": load_mnist,
    "cats": load_cats,
    "artbench32": load_artbench32,
    "artbench": load_artbench,
    "folder": load_folder,
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
    verify: bool = True,
    dedupe: bool = False,
    cache: bool = True,
    verify_cache: bool = False,
) -> ImageData:
    """Load `dataset` as uint8 (N, C, H, W) at `image_size`, cached under `root/cache/`.

    The keyword names match the `data` section of a config, so
    `load_dataset(**asdict(cfg.data))` works. `dedupe` keeps the first of each set of
    identical images (see `duplicate_groups`), before `limit` takes the first N.
    `verify_cache` keys the cache on the files' contents too (see lib.data.cache).
    """
    if dataset not in LOADERS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {sorted(LOADERS)}")
    if image_size < 4:
        raise DatasetError(f"image_size must be at least 4, got {image_size}")
    root = Path(root)
    # the loaders on disk cache what they decode, keyed on the files they read
    cache_dir = root / "cache" if cache and dataset not in EMBEDDED else None
    data = LOADERS[dataset](image_size=image_size, root=root, path=path, download=download,
                            seed=seed, verify=verify, cache_dir=cache_dir,
                            verify_cache=verify_cache)
    if data.skipped:
        print(f"[{dataset}] skipped {data.skipped} unreadable image file(s) (broken, a "
              "dangling link, or over the pixel limit)")
    images, labels = data.images, data.labels
    if dedupe:
        keep = distinct_indices(images)  # the first of each set, with its label
        print(f"[{dataset}] dedupe: dropped {len(images) - len(keep)} exact duplicate "
              f"image(s); {len(keep)} distinct of {len(images)}")
        images = images[keep]
        labels = labels[keep] if labels is not None else None
    images = set_channels(images, channels)
    if limit is not None and limit < len(images):
        images, labels = images[:limit], labels[:limit] if labels is not None else None
    return ImageData(images, labels, data.class_names, dataset, data.skipped)
