"""Cached real features and classifiers, under cache_dir and never inside the package."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lib.core.checkpoint import atomic_save
from lib.data import ImageData

CACHE_VERSION = 2  # 2: real statistics of distinct images, fixed-size feature batches


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
