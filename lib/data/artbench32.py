"""ArtBench-10 at 32x32: CIFAR-style pickled python batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from lib.data import find
from lib.data.cache import cached
from lib.data.find import not_found, search_dirs
from lib.data.folders import ARTBENCH_STYLES, ARTBENCH_URL
from lib.data.images import DatasetError, ImageData, resize_images

ARTBENCH32_FOLDER = "artbench-10-batches-py"
ARTBENCH32_ARCHIVE = "artbench-10-python.tar.gz"


def _unpickle(file: Path) -> dict:
    """A CIFAR-style batch; keys come back as bytes (b'data') from Python 2 pickles."""
    try:
        with open(file, "rb") as f:
            blob = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError) as e:
        raise DatasetError(f"artbench32: cannot read {file} ({e}); re-extract "
                           f"{ARTBENCH32_ARCHIVE}") from e
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in blob.items()}


def load_artbench32(image_size: int, root: str | Path = "data", path: str | None = None,
                    cache_dir: Path | None = None, verify_cache: bool = False,
                    **_) -> ImageData:
    """ArtBench-10 32x32 python batches (data_batch_1..5; test_batch is left out)."""
    if path is not None:
        candidates = [Path(path), Path(path) / ARTBENCH32_FOLDER]
    else:
        candidates = [Path(root) / ARTBENCH32_FOLDER,
                      *search_dirs(find.KAGGLE_INPUT, ARTBENCH32_FOLDER)]
    folder = next((c for c in candidates if (c / "data_batch_1").is_file()), None)
    if folder is None:
        archive = Path(root) / ARTBENCH32_ARCHIVE
        extract = (f"The archive is at {archive}: extract it with "
                   f"`tar -xzf {archive} -C {root}`." if archive.is_file() else
                   f"Download {ARTBENCH32_ARCHIVE} (32x32 CIFAR-python) from {ARTBENCH_URL} "
                   f"and extract it into {root}, or pass the {ARTBENCH32_FOLDER} folder "
                   "as path=...")
        looked_at = candidates if path is not None else [
            candidates[0], find.KAGGLE_INPUT / "**" / ARTBENCH32_FOLDER]
        raise not_found("artbench32", looked_at, "Expected data_batch_1..5 there. " + extract)
    batches = sorted(folder.glob("data_batch_*"), key=lambda f: f.name.rsplit("_", 1)[-1].zfill(3))
    meta = [folder / "meta"] if (folder / "meta").is_file() else []
    return cached(cache_dir, "artbench32", image_size, folder, batches + meta,
                  lambda: _read_artbench32(folder, batches, image_size),
                   verify_cache=verify_cache)


def _read_artbench32(folder: Path, batches: list[Path], image_size: int) -> ImageData:
    images, labels = [], []
    for file in batches:
        batch = _unpickle(file)
        data = np.asarray(batch["data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32))  # rows are 1024 R, 1024 G, 1024 B values
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    class_names = list(ARTBENCH_STYLES)
    if (folder / "meta").is_file():
        meta = _unpickle(folder / "meta")
        names = meta.get("styles", meta.get("label_names"))
        if names is not None:
            class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    label_tensor = torch.from_numpy(np.concatenate(labels))
    if label_tensor.min() < 0 or label_tensor.max() >= len(class_names):
        raise DatasetError(f"artbench32: labels in {folder} fall outside the "
                           f"{len(class_names)} classes {class_names}")
    images_tensor = resize_images(torch.from_numpy(np.concatenate(images)), image_size)
    return ImageData(images_tensor, label_tensor, class_names, "artbench32")
