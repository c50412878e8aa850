"""Cached real features and classifiers, under cache_dir and never inside the package."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no lock; two processes may then compute the same file
    fcntl = None

import torch

from lib.core.checkpoint import atomic_save
from lib.data import ImageData

CACHE_VERSION = 2  # 2: real statistics of distinct images, fixed-size feature batches


def data_fingerprint(data: ImageData) -> str:
    """Content hash of the images and labels: the cache follows the data, not its name."""
    digest = hashlib.sha1()
    digest.update(str(tuple(data.images.shape)).encode())
    digest.update(data.images.detach().cpu().contiguous().numpy().tobytes())
    if data.labels is not None:
        digest.update(data.labels.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_path(cache_dir: Path, prefix: str, key: dict) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / "metrics" / f"{prefix}_{digest}.pt"


def save_cached(path: Path, blob: dict) -> None:
    atomic_save({"version": CACHE_VERSION, **blob}, path)  # a killed run leaves no half file


def load_cached(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    return blob if isinstance(blob, dict) and blob.get("version") == CACHE_VERSION else None


@contextlib.contextmanager
def one_at_a_time(path: Path):
    """Processes about to compute the same cache file take turns (notebooks side by side,
    DDP ranks): the second finds the first's file instead of computing it again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "w")  # noqa: SIM115 - closed below
    except OSError:  # a read-only cache folder: no file to write, no turn to take
        lock = None
    with lock or contextlib.nullcontext():
        if lock is not None and fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
