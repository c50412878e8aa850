"""MNIST from torchvision's raw IDX files (gzipped or not), checked against the official MD5s."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from lib.data import find
from lib.data.cache import cached
from lib.data.find import not_found, search_dirs
from lib.data.images import DatasetError, ImageData, resize_images

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
# MD5 of the uncompressed official files: what torchvision's .gz downloads (whose own MD5s,
# f68b3c2d... and d53e105e..., torchvision checks when it fetches them) decompress to, and
# what the mirrors that ship them unpacked (e.g. "train-images.idx3-ubyte") hold.
MNIST_MD5 = {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
             "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624"}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# The official files' shapes: a header that declares more is refused before anything is
# decompressed (a small .gz can expand to gigabytes)
MNIST_SHAPES = {"train-images-idx3-ubyte": (60_000, 28, 28), "train-labels-idx1-ubyte": (60_000,)}


def _idx_bytes(file: Path, stem: str | None = None) -> bytes:
    """The contents of an IDX file, decompressed when it is gzipped (whatever its name), read
    only as far as its header declares; with `stem`, a header beyond MNIST_SHAPES[stem]
    (more images, or images not 28x28) is refused before the data is read."""
    with file.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"  # gzip magic
    try:
        with (gzip.open if gzipped else open)(file, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES:
                raise DatasetError(f"{file} is not an IDX file (bad header {head!r})")
            dims = f.read(4 * head[3])
            shape = struct.unpack(f">{len(dims) // 4}I", dims[: len(dims) // 4 * 4])
            if stem is not None:
                _check_shape(file, shape, MNIST_SHAPES[stem])
            size = math.prod(shape) * np.dtype(_IDX_DTYPES[head[2]]).itemsize
            return head + dims + f.read(size + 1)  # one byte more: a longer file is refused
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{file}: broken gzip data ({e}); download it again") from e


def _check_shape(file: Path, shape: tuple, official: tuple) -> None:
    if len(shape) != len(official) or shape[0] > official[0] or shape[1:] != official[1:]:
        expected = "(N, " + ", ".join(map(str, official[1:])) + ")" if len(official) > 1 else "(N,)"
        raise DatasetError(f"mnist: {file} declares shape {shape}; MNIST's is {expected} with "
                           f"N <= {official[0]:,}. The file holds other data or is damaged: "
                           "download it again")


def read_idx(file: Path) -> np.ndarray:
    """An IDX file (gzipped or not): zero, zero, dtype code, ndim, big-endian int32 dims, data."""
    return _parse_idx(_idx_bytes(file), file)


def _parse_idx(raw: bytes, file: Path) -> np.ndarray:
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{file} is not an IDX file (bad header {raw[:4]!r})")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:offset]) if len(raw) >= offset else ()
    if len(shape) != ndim or len(raw) - offset != math.prod(shape) * dtype.itemsize:
        raise DatasetError(f"{file}: {len(raw)} bytes do not match the IDX header "
                           f"(shape {shape}); the file is truncated, download it again")
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path | None:
    """torchvision's name, gzipped or not, or the dotted name some mirrors use."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _find_mnist(candidates: list[Path]) -> Path | None:
    return next((c for c in candidates if all(_idx_file(c, s) for s in MNIST_FILES)), None)


def load_mnist(image_size: int, root: str | Path = "data", path: str | None = None,
               download: bool = False, verify: bool = True, cache_dir: Path | None = None,
               verify_cache: bool = False, **_) -> ImageData:
    """MNIST's 60,000 training digits (the 10,000 test digits are left out), resized.

    `verify`: the files must be the official ones (their MD5); False reads any IDX files
    under MNIST's names, such as a subset made for a test.
    """
    base = Path(path) if path is not None else Path(root)
    candidates = [base, base / "raw", base / "MNIST" / "raw"] if path is not None else [
        base / "MNIST" / "raw"]
    if path is None:
        candidates += [d / sub for d in search_dirs(find.KAGGLE_INPUT, "*mnist*")
                       for sub in ("", "raw", "MNIST/raw")]
    folder = _find_mnist(candidates)
    if folder is None and download:
        from torchvision.datasets import MNIST  # heavy import, only needed to fetch

        try:
            MNIST(str(base), train=True, download=True)  # writes base/MNIST/raw/
        except (OSError, RuntimeError) as e:
            raise DatasetError(f"mnist: downloading into {base / 'MNIST' / 'raw'} failed ({e}); "
                               "copy the raw IDX files there by hand") from e
        folder = _find_mnist([base / "MNIST" / "raw"])
    if folder is None:
        looked_at = (candidates[:3] if path is not None
                     else [candidates[0], find.KAGGLE_INPUT / "**" / "*mnist*"])
        raise not_found("mnist", looked_at, (
            f"Expected {' and '.join(MNIST_FILES)} (.gz or not). Fetch them with "
            "load_dataset('mnist', ..., download=True) (data.download=true in a config; uses "
            f"torchvision.datasets.MNIST), or copy the raw files into {base / 'MNIST' / 'raw'}."))
    files = [_idx_file(folder, stem) for stem in MNIST_FILES]
    return cached(cache_dir, "mnist", image_size, folder, files,
                  lambda: _read_mnist(folder, files, image_size, verify),
                   verify_cache=verify_cache, verify=verify)


def _verified_idx(file: Path, stem: str, verify: bool) -> np.ndarray:
    """The IDX array of `file`; with `verify`, only if its contents are the official `stem`'s."""
    raw = _idx_bytes(file, stem)
    digest = hashlib.md5(raw, usedforsecurity=False).hexdigest() if verify else None
    if verify and digest != MNIST_MD5[stem]:
        raise DatasetError(
            f"mnist: {file} is not the official {stem} (the MD5 of its IDX contents is "
            f"{digest}, expected {MNIST_MD5[stem]}): the download is damaged or the file "
            "holds other data. Delete it and download again (data.download=true), or set "
            "data.verify=false to train on it as it is")
    return _parse_idx(raw, file)


def _read_mnist(folder: Path, files: list[Path], image_size: int, verify: bool) -> ImageData:
    images = _verified_idx(files[0], MNIST_FILES[0], verify)  # (N, 28, 28)
    labels = _verified_idx(files[1], MNIST_FILES[1], verify)  # (N,)
    if images.ndim != 3 or images.dtype != np.uint8 or len(labels) != len(images):
        raise DatasetError(f"mnist: {folder} holds images {images.shape} {images.dtype} and "
                           f"{len(labels)} labels; expected uint8 (N, 28, 28) and N labels")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"mnist: {files[1]}: labels must be integers, one per image; got "
                           f"{labels.dtype} {labels.shape}. Download the file again")
    outside = np.flatnonzero((labels < 0) | (labels > 9))
    if len(outside):
        raise DatasetError(f"mnist: {files[1]}: labels must be integers 0-9, one per image; "
                           f"{len(outside)} are not; label {labels[outside[0]]} at index "
                           f"{outside[0]}. The file is damaged: download it again")
    # copy: np.frombuffer arrays are read-only
    pixels = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28)
    return ImageData(resize_images(pixels, image_size), torch.from_numpy(labels.astype(np.int64)),
                     [str(d) for d in range(10)], "mnist")
