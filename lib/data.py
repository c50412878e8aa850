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
sizes, modification times): adding, removing or editing one rebuilds the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import math
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from lib.checkpoint import atomic_save
from lib.progress import progress_bar

CACHE_VERSION = 2  # 2: keyed on the files read, not only on the dataset's path
# Kaggle's read-only dataset mounts, searched for data and for Inception weights (lib.metrics);
# GENLAB_KAGGLE_INPUT points both elsewhere (a test's fake input, an unusual mount)
KAGGLE_INPUT = Path(os.environ.get("GENLAB_KAGGLE_INPUT", "/kaggle/input"))


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


def _fingerprint(where: Path, files: list[Path], **extra) -> str:
    """What a cache entry is keyed on: every file read (its name under `where`, size and
    modification time), and `extra`."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for f in files:
        st = f.stat()
        name = str(f.relative_to(where)).encode(errors="surrogateescape")
        digest.update(name + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


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


def _cached(cache_dir: Path | None, name: str, image_size: int, where: Path,
            files: list[Path], make, **extra) -> ImageData:
    """`make()`, or its cached result while `files` (and `extra`) are what they were.

    One cache file per dataset, size and folder; a stale one is replaced in place
    (atomically), so a changed folder never leaves old tensors behind.
    """
    if cache_dir is None:
        return make()
    place = json.dumps([name, image_size, str(where.resolve())])
    path = cache_dir / f"{name}_{image_size}px_{hashlib.sha1(place.encode()).hexdigest()[:12]}.pt"
    fingerprint = _fingerprint(where, files, **extra)
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


# ---------------------------------------------------------------------------
# Finding data on disk


def _missing(name: str, looked_at: list[Path | str], how: str) -> DatasetError:
    places = "\n".join(f"  - {p}" for p in looked_at)
    return DatasetError(f"{name}: no data found. Looked at:\n{places}\n{how}")


def _search_dirs(base: Path, pattern: str, max_depth: int = 5) -> Iterator[Path]:
    """Folders under `base` whose name matches `pattern`, shallowest first.

    Kaggle mounts a dataset at /kaggle/input/<slug>/ or, on newer images,
    /kaggle/input/datasets/<owner>/<slug>/, so data is found by glob, not by a fixed path.
    """
    if not base.is_dir():
        return
    for depth in range(max_depth):
        yield from sorted(p for p in base.glob("*/" * depth + pattern) if p.is_dir())


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"  # .ipynb_checkpoints, macOS zip debris


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def _iter_images(folder: Path) -> Iterator[Path]:
    """Image files under `folder`, recursively, in a stable (sorted) order."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for f in sorted(filenames):
            if not _hidden(f) and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(dirpath) / f


def _has_images(folder: Path) -> bool:
    return next(_iter_images(folder), None) is not None


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and not _hidden(d.name))


# ---------------------------------------------------------------------------
# The image-folder reader shared by cats, artbench and folder

PROGRESS_MIN_FILES = 500  # below this, decoding is quick enough to run silently
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error,
               Image.DecompressionBombError)  # what Pillow raises on broken files


def _decode(file: Path, size: int) -> np.ndarray:
    """One image file -> (3, size, size) uint8: centre square crop, antialiased resize."""
    with Image.open(file) as img:
        # JPEG decodes at 1/2..1/8 scale, still >= 2x the target: 256px -> 64px is fast
        img.draft("RGB", (2 * size, 2 * size))
        ImageOps.exif_transpose(img, in_place=True)
        img = img.convert("RGB")  # grayscale, palette, RGBA, CMYK -> 3 channels
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    # crop first: resize(box=...) would blend in pixels from outside the box.
    # Pillow's bilinear resize widens its kernel when shrinking, like resize_images' antialias
    img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _interleave(groups: list[list[Path]]) -> tuple[list[Path], list[int]]:
    """Files of each class taken in turn, so the first N images (`limit`) cover every class."""
    order = sorted((i, k) for k, group in enumerate(groups) for i in range(len(group)))
    return [groups[k][i] for i, k in order], [k for _, k in order]


def read_images(files: list[Path], image_size: int, name: str, where: Path,
                labels: list[int] | None = None, class_names: list[str] | None = None,
                cache_dir: Path | None = None) -> ImageData:
    """Decode image files into uint8 (N, 3, image_size, image_size); unreadable ones are skipped.

    Each image is resized while decoding, so a folder of 256px images costs only
    image_size-sized memory. With `cache_dir`, decoded once while the files stay the same.
    """
    if not files:
        raise DatasetError(f"{name}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                           f"under {where}")
    return _cached(cache_dir, name, image_size, where, files,
                   lambda: _decode_all(files, image_size, name, where, labels, class_names),
                   labels=labels, class_names=class_names)


def _decode_all(files: list[Path], image_size: int, name: str, where: Path,
                labels: list[int] | None, class_names: list[str] | None) -> ImageData:
    out = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)
    kept: list[int] = []
    bar = progress_bar(len(files), desc=f"decoding {name}", unit="img", iterable=files,
                       disable=len(files) < PROGRESS_MIN_FILES)
    for i, file in enumerate(bar):
        try:
            out[len(kept)] = _decode(file, image_size)
        except _UNREADABLE:
            continue
        kept.append(i)
    if not kept:
        raise DatasetError(f"{name}: none of the {len(files)} image files under {where} "
                           "could be read; check that they are valid images")
    out.resize((len(kept), 3, image_size, image_size), refcheck=False)  # drop unused rows in place
    label_tensor = torch.tensor([labels[i] for i in kept]) if labels is not None else None
    return ImageData(torch.from_numpy(out), label_tensor, class_names, name,
                     skipped=len(files) - len(kept))


def read_image_folder(folder: Path, image_size: int, name: str,
                      cache_dir: Path | None = None) -> ImageData:
    """A folder of images: class subfolders give labels (sorted names), loose files do not.

    A class folder none of whose files can be read is dropped, with a message.
    """
    loose = [f for f in folder.iterdir()
             if f.is_file() and not _hidden(f.name) and f.suffix.lower() in IMAGE_SUFFIXES]
    classes = [d for d in _subdirs(folder) if _has_images(d)]
    if loose and classes:
        raise DatasetError(
            f"{name}: {folder} holds both loose images ({len(loose)}) and class subfolders "
            f"({', '.join(d.name for d in classes)}); move the loose images into a class "
            "folder for labelled data, or point path at a folder of one kind")
    if not classes:
        return read_images(list(_iter_images(folder)), image_size, name, folder,
                           cache_dir=cache_dir)
    groups = [list(_iter_images(d)) for d in classes]
    files, labels = _interleave(groups)
    data = read_images(files, image_size, name, folder, labels, [d.name for d in classes],
                       cache_dir)
    return _drop_empty_classes(data, [len(g) for g in groups], folder)


def _drop_empty_classes(data: ImageData, files_per_class: list[int], folder: Path) -> ImageData:
    """Leave out classes that kept no image (all unreadable); renumber the others."""
    counts = torch.bincount(data.labels, minlength=len(data.class_names)).tolist()
    empty = [k for k, n in enumerate(counts) if n == 0]
    if not empty:
        return data
    for k in empty:
        print(f"[{data.name}] dropped class {data.class_names[k]!r}: none of the "
              f"{files_per_class[k]} image file(s) in {folder / data.class_names[k]} "
              "could be read")
    kept = [k for k in range(len(counts)) if k not in empty]
    new_index = torch.full((len(counts),), -1, dtype=torch.int64)
    new_index[kept] = torch.arange(len(kept))
    return ImageData(data.images, new_index[data.labels], [data.class_names[k] for k in kept],
                     data.name, data.skipped)


# ---------------------------------------------------------------------------
# Datasets on disk


def load_folder(image_size: int, path: str | None = None, cache_dir: Path | None = None,
                **_) -> ImageData:
    """Any folder of images given by `path`."""
    if path is None:
        raise DatasetError("folder: give the folder of images as path=... (data.path in a "
                           "config); class subfolders, if any, become the labels")
    folder = Path(path)
    if not folder.is_dir():
        raise _missing("folder", [folder], "path must be an existing folder of images.")
    return read_image_folder(folder, image_size, "folder", cache_dir)


CATS_KAGGLE = "spandan2/cats-faces-64x64-for-generative-models"


def load_cats(image_size: int, root: str | Path = "data", path: str | None = None,
              cache_dir: Path | None = None, **_) -> ImageData:
    """64x64 cat faces: every image under the folder (subfolders included), unlabelled.

    The folder is `path`, else `root/cats` (the tarball `cats/<n>.jpg` extracted into
    root), else the shallowest folder named cats* under /kaggle/input: the dataset's
    slug `/kaggle/input/cats-faces-.../` or, on newer mounts and mirrors, a `cats/`
    folder deeper down (`/kaggle/input/datasets/<owner>/<slug>/cats/`).
    """
    if path is not None:
        candidates = [Path(path)]
        looked_at: list[Path | str] = candidates
    else:
        # lazily: the search stops at the first folder with images
        candidates = itertools.chain([Path(root) / "cats"],
                                     _search_dirs(KAGGLE_INPUT, "cats*", max_depth=7))
        looked_at = [Path(root) / "cats", KAGGLE_INPUT / "**" / "cats*"]
    folder = next((c for c in candidates if c.is_dir() and _has_images(c)), None)
    if folder is None:
        raise _missing("cats", looked_at, (
            f"Get the Kaggle dataset {CATS_KAGGLE} (on Kaggle: Add Input; elsewhere: "
            f"`kaggle datasets download -d {CATS_KAGGLE}` and unzip) into "
            f"{Path(root) / 'cats'}, or pass its folder as path=..."))
    return read_images(list(_iter_images(folder)), image_size, "cats", folder,
                       cache_dir=cache_dir)


ARTBENCH_STYLES = ["art_nouveau", "baroque", "expressionism", "impressionism",
                   "post_impressionism", "realism", "renaissance", "romanticism",
                   "surrealism", "ukiyo_e"]
ARTBENCH_URL = "https://github.com/liaopeiyuan/artbench"
ARTBENCH_KAGGLE = "alexanderliao/artbench10"


def _find_style_root(top: Path, max_depth: int = 3) -> Path | None:
    """The folder whose subfolders are ArtBench styles, searching `top` breadth first.

    The 256px archive nests them as <top>/train/<style>/ (and test/); train is tried first.
    """
    level = [top]
    for _ in range(max_depth + 1):
        below = []
        for d in level:
            subdirs = _subdirs(d)
            if any(s.name.lower() in ARTBENCH_STYLES for s in subdirs):
                return d
            below += sorted(subdirs, key=lambda s: s.name.lower() != "train")
        level = below
    return None


def load_artbench(image_size: int, root: str | Path = "data", path: str | None = None,
                  cache_dir: Path | None = None, **_) -> ImageData:
    """ArtBench-10 256x256 ImageFolder layout (<style>/*.jpg), resized; the training split."""
    if path is not None:
        candidates = [Path(path)]
        looked_at: list[Path | str] = candidates
    else:
        candidates = [Path(root) / "artbench", *_search_dirs(KAGGLE_INPUT, "*artbench*")]
        looked_at = [Path(root) / "artbench", KAGGLE_INPUT / "**" / "*artbench*"]
    style_root = next((r for c in candidates if (r := _find_style_root(c)) is not None), None)
    if style_root is None:
        raise _missing("artbench", looked_at, (
            "Expected style folders (" + ", ".join(ARTBENCH_STYLES) + ") holding JPEGs, "
            f"possibly under train/. Get the '256x256 a-la-ImageFolder' archive listed at "
            f"{ARTBENCH_URL} or the Kaggle dataset {ARTBENCH_KAGGLE}, "
            f"and extract it into {Path(root) / 'artbench'} or pass its folder as path=..."))
    # labels index the fixed style list, so they agree with artbench32 even if a style is absent
    dirs = {d.name.lower(): d for d in _subdirs(style_root)}
    groups = [list(_iter_images(dirs[s])) if s in dirs else [] for s in ARTBENCH_STYLES]
    files, labels = _interleave(groups)
    return read_images(files, image_size, "artbench", style_root, labels, list(ARTBENCH_STYLES),
                       cache_dir)


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
                    cache_dir: Path | None = None, **_) -> ImageData:
    """ArtBench-10 32x32 python batches (data_batch_1..5; test_batch is left out)."""
    if path is not None:
        candidates = [Path(path), Path(path) / ARTBENCH32_FOLDER]
    else:
        candidates = [Path(root) / ARTBENCH32_FOLDER,
                      *_search_dirs(KAGGLE_INPUT, ARTBENCH32_FOLDER)]
    folder = next((c for c in candidates if (c / "data_batch_1").is_file()), None)
    if folder is None:
        archive = Path(root) / ARTBENCH32_ARCHIVE
        extract = (f"The archive is at {archive}: extract it with "
                   f"`tar -xzf {archive} -C {root}`." if archive.is_file() else
                   f"Download {ARTBENCH32_ARCHIVE} (32x32 CIFAR-python) from {ARTBENCH_URL} "
                   f"and extract it into {root}, or pass the {ARTBENCH32_FOLDER} folder "
                   "as path=...")
        looked_at = candidates if path is not None else [
            candidates[0], KAGGLE_INPUT / "**" / ARTBENCH32_FOLDER]
        raise _missing("artbench32", looked_at, "Expected data_batch_1..5 there. " + extract)
    batches = sorted(folder.glob("data_batch_*"), key=lambda f: f.name.rsplit("_", 1)[-1].zfill(3))
    meta = [folder / "meta"] if (folder / "meta").is_file() else []
    return _cached(cache_dir, "artbench32", image_size, folder, batches + meta,
                   lambda: _read_artbench32(folder, batches, image_size))


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


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
# MD5 of the uncompressed official files: what torchvision's .gz downloads (whose own MD5s,
# f68b3c2d... and d53e105e..., torchvision checks when it fetches them) decompress to, and
# what the mirrors that ship them unpacked (e.g. "train-images.idx3-ubyte") hold.
MNIST_MD5 = {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
             "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624"}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_bytes(file: Path) -> bytes:
    """The contents of an IDX file, decompressed when it is gzipped (whatever its name)."""
    raw = file.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{file}: broken gzip data ({e}); download it again") from e
    return raw


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
               **_) -> ImageData:
    """MNIST's 60,000 training digits (the 10,000 test digits are left out), resized.

    `verify`: the files must be the official ones (their MD5); False reads any IDX files
    under MNIST's names, such as a subset made for a test.
    """
    base = Path(path) if path is not None else Path(root)
    candidates = [base, base / "raw", base / "MNIST" / "raw"] if path is not None else [
        base / "MNIST" / "raw"]
    if path is None:
        candidates += [d / sub for d in _search_dirs(KAGGLE_INPUT, "*mnist*")
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
                     else [candidates[0], KAGGLE_INPUT / "**" / "*mnist*"])
        raise _missing("mnist", looked_at, (
            f"Expected {' and '.join(MNIST_FILES)} (.gz or not). Fetch them with "
            "load_dataset('mnist', ..., download=True) (data.download=true in a config; uses "
            f"torchvision.datasets.MNIST), or copy the raw files into {base / 'MNIST' / 'raw'}."))
    files = [_idx_file(folder, stem) for stem in MNIST_FILES]
    return _cached(cache_dir, "mnist", image_size, folder, files,
                   lambda: _read_mnist(folder, files, image_size, verify), verify=verify)


def _verified_idx(file: Path, stem: str, verify: bool) -> np.ndarray:
    """The IDX array of `file`; with `verify`, only if its contents are the official `stem`'s."""
    raw = _idx_bytes(file)
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
) -> ImageData:
    """Load `dataset` as uint8 (N, C, H, W) at `image_size`, cached under `root/cache/`.

    The keyword names match the `data` section of a config, so
    `load_dataset(**asdict(cfg.data))` works. `dedupe` keeps the first of each set of
    identical images (see `duplicate_groups`), before `limit` takes the first N.
    """
    if dataset not in LOADERS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {sorted(LOADERS)}")
    if image_size < 4:
        raise DatasetError(f"image_size must be at least 4, got {image_size}")
    root = Path(root)
    # the loaders on disk cache what they decode, keyed on the files they read
    cache_dir = root / "cache" if cache and dataset not in EMBEDDED else None
    data = LOADERS[dataset](image_size=image_size, root=root, path=path, download=download,
                            seed=seed, verify=verify, cache_dir=cache_dir)
    if data.skipped:
        print(f"[{dataset}] skipped {data.skipped} unreadable image file(s)")
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
