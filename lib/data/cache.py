"""Decoded datasets cached on disk, keyed on the files read (names, sizes, modification times).

That key misses a change that keeps a file's size and mtime (`cp -p`, `rsync -t`, an archive
with fixed timestamps); `verify_cache` adds a hash of every file's contents (reads them all).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import torch

from lib.core.checkpoint import atomic_save
from lib.data.images import ImageData

CACHE_VERSION = 2  # 2: keyed on the files read, not only on the dataset's path


def _fingerprint(where: Path, files: list[Path], verify_cache: bool = False, **extra) -> str:
    """What a cache entry is keyed on: every file read (its name under `where`, size and
    modification time; with `verify_cache`, its contents' hash too), and `extra`. A file
    that cannot be read (a dangling link, a loop) is keyed as such; decoding skips it."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for f in files:
        name = str(f.relative_to(where)).encode(errors="surrogateescape")
        try:
            st = f.stat()
            seen = f"{st.st_size}\0{st.st_mtime_ns}"
            if verify_cache:
                with f.open("rb") as file:
                    seen += "\0" + hashlib.file_digest(file, "blake2b").hexdigest()
        except OSError:
            seen = "unreadable"
        digest.update(name + f"\0{seen}\n".encode())
    return digest.hexdigest()


def cached_files(cache_dir: Path, name: str, image_size: int) -> list[Path]:
    """The cache files of dataset `name` at `image_size` under `cache_dir` (one per folder
    read): what a run folder keeps copies of for its next session."""
    return sorted(cache_dir.glob(f"{name}_{image_size}px_*.pt"))


def cached(cache_dir: Path | None, name: str, image_size: int, where: Path,
           files: list[Path], make, verify_cache: bool = False, **extra) -> ImageData:
    """`make()`, or its cached result while `files` (and `extra`) are what they were.

    One cache file per dataset, size and folder; a stale one is replaced in place
    (atomically), so a changed folder never leaves old tensors behind.
    """
    if cache_dir is None:
        return make()
    place = json.dumps([name, image_size, str(where.resolve())])
    path = cache_dir / f"{name}_{image_size}px_{hashlib.sha1(place.encode()).hexdigest()[:12]}.pt"
    fingerprint = _fingerprint(where, files, verify_cache, **extra)
    data = _load_cache(path, name, fingerprint) if path.exists() else None
    if data is None:
        data = make()
        try:
            atomic_save({"version": CACHE_VERSION, "fingerprint": fingerprint,
                         "images": data.images, "labels": data.labels,
                         "class_names": data.class_names, "skipped": data.skipped}, path)
        except OSError as e:  # a read-only data root: the cache only saves time
            print(f"[{name}] not cached, {path.parent} is not writable ({e.strerror})")
    return data


def _load_cache(path: Path, name: str, fingerprint: str) -> ImageData | None:
    try:
        blob = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        return None
    if (not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION
            or blob.get("fingerprint") != fingerprint):
        return None
    return ImageData(blob["images"], blob["labels"], blob["class_names"], name, blob["skipped"])
