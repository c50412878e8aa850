"""Where data is looked for: the Kaggle input mount, folders found by glob, image files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from lib.data.images import DatasetError

# Kaggle's read-only dataset mounts, searched for data and for Inception weights (lib.metrics);
# GENLAB_KAGGLE_INPUT points both elsewhere (a test's fake input, an unusual mount)
KAGGLE_INPUT = Path(os.environ.get("GENLAB_KAGGLE_INPUT", "/kaggle/input"))


# ---------------------------------------------------------------------------
# Finding data on disk


def not_found(name: str, looked_at: list[Path | str], how: str) -> DatasetError:
    places = "\n".join(f"  - {p}" for p in looked_at)
    return DatasetError(f"{name}: no data found. Looked at:\n{places}\n{how}")


def search_dirs(base: Path, pattern: str, max_depth: int = 5) -> Iterator[Path]:
    """Folders under `base` whose name matches `pattern`, shallowest first.

    Kaggle mounts a dataset at /kaggle/input/<slug>/ or, on newer images,
    /kaggle/input/datasets/<owner>/<slug>/, so data is found by glob, not by a fixed path.
    """
    if not base.is_dir():
        return
    for depth in range(max_depth):
        yield from sorted(p for p in base.glob("*/" * depth + pattern) if p.is_dir())


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"  # .ipynb_checkpoints, macOS zip debris


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def iter_images(folder: Path) -> Iterator[Path]:
    """Image files under `folder`, recursively, in a stable (sorted) order."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for f in sorted(filenames):
            if not is_hidden(f) and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(dirpath) / f


def has_images(folder: Path) -> bool:
    return next(iter_images(folder), None) is not None


def subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and not is_hidden(d.name))
