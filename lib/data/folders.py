"""The image-folder reader shared by cats, artbench and folder, and those three loaders."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from lib.core.progress import progress_bar
from lib.data import find
from lib.data.cache import cached
from lib.data.find import (
    IMAGE_SUFFIXES,
    has_images,
    is_hidden,
    iter_images,
    not_found,
    search_dirs,
    subdirs,
)
from lib.data.images import DatasetError, ImageData

# ---------------------------------------------------------------------------
# The image-folder reader shared by cats, artbench and folder

PROGRESS_MIN_FILES = 500  # below this, decoding is quick enough to run silently
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error,
               Image.DecompressionBombError)  # what Pillow raises on broken files


MAX_PIXELS = 64_000_000  # per image as decoded (an 8000x8000 photo); larger is skipped


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images scaled from their own range to 8-bit gray.

    convert("RGB") would clip them: a 16-bit PNG loads nearly white, a float TIFF black.
    The range: 16-bit's 0-65535; integers', the first of 0-255 and 0-65535 that holds
    them; floats', 0-1 when it holds them; otherwise the values' own min to max.
    """
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    a = np.asarray(img, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"a {img.mode} image holding NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    ranges = {"F": [(0, 1)], "I": [(0, 255), (0, 65535)]}.get(img.mode, [(0, 65535)])
    low, high = next(((x, y) for x, y in ranges if x <= lo and hi <= y), (lo, max(hi, lo + 1)))
    return Image.fromarray(np.round((a - low) * (255 / (high - low))).astype(np.uint8))


def _decode(file: Path, size: int) -> np.ndarray:
    """One image file -> (3, size, size) uint8: centre square crop, antialiased resize."""
    with Image.open(file) as img:
        # JPEG decodes at 1/2..1/8 scale, still >= 2x the target: 256px -> 64px is fast
        img.draft("RGB", (2 * size, 2 * size))
        if img.width * img.height > MAX_PIXELS:  # a 121-megapixel PNG would take ~1.7 GB
            raise ValueError(f"{img.width}x{img.height} pixels, over {MAX_PIXELS:,}")
        ImageOps.exif_transpose(img, in_place=True)
        img = _eight_bit(img).convert("RGB")  # gray, palette, RGBA, CMYK -> 3 channels
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
                cache_dir: Path | None = None, verify_cache: bool = False) -> ImageData:
    """Decode image files into uint8 (N, 3, image_size, image_size); unreadable ones are skipped.

    Each image is resized while decoding, so a folder of 256px images costs only
    image_size-sized memory. With `cache_dir`, decoded once while the files stay the same.
    """
    if not files:
        raise DatasetError(f"{name}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                           f"under {where}")
    return cached(cache_dir, name, image_size, where, files,
                  lambda: _decode_all(files, image_size, name, where, labels, class_names),
                   verify_cache=verify_cache, labels=labels, class_names=class_names)


def _decode_all(files: list[Path], image_size: int, name: str, where: Path,
                labels: list[int] | None, class_names: list[str] | None) -> ImageData:
    out = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)
    kept: list[int] = []
    bar = progress_bar(len(files), desc=f"decoding {name}", unit="img", iterable=files,
                       disable=len(files) < PROGRESS_MIN_FILES)
    first_error = ""
    for i, file in enumerate(bar):
        try:
            out[len(kept)] = _decode(file, image_size)
        except _UNREADABLE as e:
            first_error = first_error or f"{file.name}: {e}"
            continue
        kept.append(i)
    if not kept:
        raise DatasetError(f"{name}: none of the {len(files)} image files under {where} "
                           f"could be read (the first: {first_error}); check that they are "
                           "valid images")
    out.resize((len(kept), 3, image_size, image_size), refcheck=False)  # drop unused rows in place
    label_tensor = torch.tensor([labels[i] for i in kept]) if labels is not None else None
    return ImageData(torch.from_numpy(out), label_tensor, class_names, name,
                     skipped=len(files) - len(kept))


def read_image_folder(folder: Path, image_size: int, name: str,
                      cache_dir: Path | None = None, verify_cache: bool = False) -> ImageData:
    """A folder of images: class subfolders give labels (sorted names), loose files do not.

    A class folder none of whose files can be read is dropped, with a message.
    """
    loose = [f for f in folder.iterdir()
             if f.is_file() and not is_hidden(f.name) and f.suffix.lower() in IMAGE_SUFFIXES]
    classes = [d for d in subdirs(folder) if has_images(d)]
    if loose and classes:
        raise DatasetError(
            f"{name}: {folder} holds both loose images ({len(loose)}) and class subfolders "
            f"({', '.join(d.name for d in classes)}); move the loose images into a class "
            "folder for labelled data, or point path at a folder of one kind")
    if not classes:
        return read_images(list(iter_images(folder)), image_size, name, folder,
                           cache_dir=cache_dir, verify_cache=verify_cache)
    groups = [list(iter_images(d)) for d in classes]
    files, labels = _interleave(groups)
    data = read_images(files, image_size, name, folder, labels, [d.name for d in classes],
                       cache_dir, verify_cache)
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
                verify_cache: bool = False, **_) -> ImageData:
    """Any folder of images given by `path`."""
    if path is None:
        raise DatasetError("folder: give the folder of images as path=... (data.path in a "
                           "config); class subfolders, if any, become the labels")
    folder = Path(path)
    if not folder.is_dir():
        raise not_found("folder", [folder], "path must be an existing folder of images.")
    return read_image_folder(folder, image_size, "folder", cache_dir, verify_cache)


CATS_KAGGLE = "spandan2/cats-faces-64x64-for-generative-models"


def load_cats(image_size: int, root: str | Path = "data", path: str | None = None,
              cache_dir: Path | None = None, verify_cache: bool = False, **_) -> ImageData:
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
                                     search_dirs(find.KAGGLE_INPUT, "cats*", max_depth=7))
        looked_at = [Path(root) / "cats", find.KAGGLE_INPUT / "**" / "cats*"]
    folder = next((c for c in candidates if c.is_dir() and has_images(c)), None)
    if folder is None:
        raise not_found("cats", looked_at, (
            f"Get the Kaggle dataset {CATS_KAGGLE} (on Kaggle: Add Input; elsewhere: "
            f"`kaggle datasets download -d {CATS_KAGGLE}` and unzip) into "
            f"{Path(root) / 'cats'}, or pass its folder as path=..."))
    return read_images(list(iter_images(folder)), image_size, "cats", folder,
                       cache_dir=cache_dir, verify_cache=verify_cache)


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
            children = subdirs(d)
            if any(s.name.lower() in ARTBENCH_STYLES for s in children):
                return d
            below += sorted(children, key=lambda s: s.name.lower() != "train")
        level = below
    return None


def load_artbench(image_size: int, root: str | Path = "data", path: str | None = None,
                  cache_dir: Path | None = None, verify_cache: bool = False,
                  **_) -> ImageData:
    """ArtBench-10 256x256 ImageFolder layout (<style>/*.jpg), resized; the training split."""
    if path is not None:
        candidates = [Path(path)]
        looked_at: list[Path | str] = candidates
    else:
        candidates = [Path(root) / "artbench", *search_dirs(find.KAGGLE_INPUT, "*artbench*")]
        looked_at = [Path(root) / "artbench", find.KAGGLE_INPUT / "**" / "*artbench*"]
    style_root = next((r for c in candidates if (r := _find_style_root(c)) is not None), None)
    if style_root is None:
        raise not_found("artbench", looked_at, (
            "Expected style folders (" + ", ".join(ARTBENCH_STYLES) + ") holding JPEGs, "
            f"possibly under train/. Get the '256x256 a-la-ImageFolder' archive listed at "
            f"{ARTBENCH_URL} or the Kaggle dataset {ARTBENCH_KAGGLE}, "
            f"and extract it into {Path(root) / 'artbench'} or pass its folder as path=..."))
    # labels index the fixed style list, so they agree with artbench32 even if a style is absent
    dirs = {d.name.lower(): d for d in subdirs(style_root)}
    groups = [list(iter_images(dirs[s])) if s in dirs else [] for s in ARTBENCH_STYLES]
    files, labels = _interleave(groups)
    return read_images(files, image_size, "artbench", style_root, labels, list(ARTBENCH_STYLES),
                       cache_dir, verify_cache)
