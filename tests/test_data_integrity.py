"""Data that must not go stale or wrong silently: a cache keyed on the files read,
MNIST checked against its official checksums and its class range, empty classes dropped."""

import gzip
import hashlib
import os
import pickle
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib.config import load_config
from lib.data import MNIST_FILES, DatasetError, find, folders, load_dataset, mnist
from lib.data import cache as data_cache


@pytest.fixture(autouse=True)
def no_kaggle(tmp_path, monkeypatch):
    """Keep a real /kaggle/input (tests running on Kaggle) out of every search."""
    monkeypatch.setattr(find, "KAGGLE_INPUT", tmp_path / "kaggle")


def write_images(folder: Path, n: int, start: int = 0, seed: int = 0):
    """n distinct 12x12 RGB PNGs named img<k>.png, k from `start`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(start, start + n):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
            folder / f"img{k:03d}.png")


def idx_bytes(array: np.ndarray) -> bytes:
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(raw_dir: Path, labels=None, n=6, gz=False):
    """A small IDX pair under the official names; returns the two files."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10 if labels is None else np.asarray(labels)
    files = []
    for stem, array in zip(MNIST_FILES, (images, labels), strict=True):
        file = raw_dir / (stem + (".gz" if gz else ""))
        file.write_bytes(gzip.compress(idx_bytes(array)) if gz else idx_bytes(array))
        files.append(file)
    return files


def cache_files(root: Path, name: str) -> list[Path]:
    return sorted((root / "cache").glob(f"{name}_*"))


def forbid_decoding(monkeypatch):
    def no_decoding(file, size):
        raise AssertionError(f"{file} decoded although the cache was current")

    monkeypatch.setattr(folders, "_decode", no_decoding)


# ---------------------------------------------------------------------------
# The cache follows the files


@pytest.mark.parametrize("dataset", ["folder", "cats"])
def test_cache_sees_images_added_and_removed(tmp_path, monkeypatch, dataset):
    root = tmp_path / "data"
    folder = tmp_path / "pics" if dataset == "folder" else root / "cats"
    kwargs = {"root": root, "path": str(folder) if dataset == "folder" else None}
    write_images(folder, 5)
    assert len(load_dataset(dataset, 8, **kwargs)) == 5
    (first,) = cache_files(root, dataset)

    write_images(folder, 20, start=5, seed=1)  # the probe: add 20, delete one
    (folder / "img002.png").unlink()
    data = load_dataset(dataset, 8, **kwargs)
    assert len(data) == 24
    assert cache_files(root, dataset) == [first]  # the stale file was replaced, not kept
    assert not list((root / "cache").glob(".*.tmp"))

    forbid_decoding(monkeypatch)  # unchanged since: the cache answers
    assert torch.equal(load_dataset(dataset, 8, **kwargs).images, data.images)


def test_cache_sees_an_image_rewritten_in_place(tmp_path):
    folder, root = tmp_path / "pics", tmp_path / "data"
    write_images(folder, 3)
    before = load_dataset("folder", 8, path=str(folder), root=root)
    target = folder / "img001.png"
    stat = target.stat()
    Image.new("RGB", (12, 12), (255, 0, 0)).save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # whatever the clock
    after = load_dataset("folder", 8, path=str(folder), root=root)
    assert not torch.equal(before.images[1], after.images[1])
    assert after.images[1, 0].min() == 255 and after.images[1, 1:].max() == 0


def write_batch(file: Path, n: int):
    """A CIFAR-style python batch of n random 32x32 images, as ArtBench-10 ships them."""
    rows = np.random.default_rng(n).integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(pickle.dumps({b"data": rows, b"labels": [k % 10 for k in range(n)]}))


def test_mnist_and_artbench32_caches_follow_their_files(tmp_path):
    root = tmp_path / "data"
    write_mnist(root / "MNIST" / "raw", n=6)
    assert len(load_dataset("mnist", 28, root=root, verify=False)) == 6
    write_mnist(root / "MNIST" / "raw", n=9)
    assert len(load_dataset("mnist", 28, root=root, verify=False)) == 9
    batches = root / "artbench-10-batches-py"
    write_batch(batches / "data_batch_1", 4)
    assert len(load_dataset("artbench32", 8, root=root)) == 4
    write_batch(batches / "data_batch_2", 3)  # a batch added
    assert len(load_dataset("artbench32", 8, root=root)) == 7
    assert len(cache_files(root, "mnist")) == len(cache_files(root, "artbench32")) == 1


def test_a_cache_built_unverified_does_not_answer_a_verified_load(tmp_path):
    root = tmp_path / "data"
    write_mnist(root / "MNIST" / "raw")
    load_dataset("mnist", 28, root=root, verify=False)
    with pytest.raises(DatasetError, match="not the official"):
        load_dataset("mnist", 28, root=root)


def test_a_read_only_cache_folder_only_costs_the_cache(tmp_path, monkeypatch, capsys):
    write_images(tmp_path / "pics", 2)

    def refuse(obj, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data_cache, "atomic_save", refuse)
    data = load_dataset("folder", 8, path=str(tmp_path / "pics"), root=tmp_path / "data")
    assert len(data) == 2
    assert "[folder] not cached" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# MNIST: the official files, and labels in the class range


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_files_that_are_not_the_official_ones_are_refused(tmp_path, gz):
    images, _ = write_mnist(tmp_path / "MNIST" / "raw", gz=gz)  # random pixels, right header
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", 28, root=tmp_path, cache=False)
    message = str(e.value)
    assert message.startswith(f"mnist: {images} is not the official train-images-idx3-ubyte")
    assert "6bbc9ace898e44ae57da46a324031adb" in message  # the official MD5, named
    assert "download again" in message and "data.verify=false" in message


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_checksum_is_of_the_idx_contents_gzipped_or_not(tmp_path, monkeypatch, gz):
    images, labels = write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    contents = [gzip.decompress(f.read_bytes()) if gz else f.read_bytes() for f in (images, labels)]
    monkeypatch.setitem(mnist.MNIST_MD5, MNIST_FILES[0], hashlib.md5(contents[0]).hexdigest())
    monkeypatch.setitem(mnist.MNIST_MD5, MNIST_FILES[1], hashlib.md5(contents[1]).hexdigest())
    assert len(load_dataset("mnist", 28, root=tmp_path, cache=False)) == 6  # verify=True


def test_mnist_verify_is_a_config_field_defaulting_to_true(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"model": {"type": "CVAE"}, "data": {"dataset": "mnist", "image_size": 28}}')
    assert load_config(path).data.verify is True
    assert load_config(path, ["data.verify=false"]).data.verify is False


def test_mnist_labels_outside_the_classes_are_refused_at_load(tmp_path):
    _, label_file = write_mnist(tmp_path / "MNIST" / "raw", labels=[0, 1, 2, 10, 4, 200])
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", 28, root=tmp_path, cache=False, verify=False)
    assert str(e.value).startswith(f"mnist: {label_file}: labels must be integers 0-9")
    assert "2 are not; label 10 at index 3" in str(e.value)


# ---------------------------------------------------------------------------
# Class folders that hold nothing readable


def test_a_class_of_only_unreadable_files_is_dropped_with_a_message(tmp_path, capsys):
    pics = tmp_path / "pics"
    write_images(pics / "a", 2)
    write_images(pics / "c", 3, seed=1)
    (pics / "b_junk").mkdir()
    for k in range(2):
        (pics / "b_junk" / f"broken{k}.jpg").write_bytes(b"not a jpeg at all")
    for cache in (False, True, True):  # decoded, then from the cache: the same answer
        data = load_dataset("folder", 8, path=str(pics), root=tmp_path / "data", cache=cache)
        assert data.class_names == ["a", "c"] and data.num_classes == 2
        assert sorted(data.labels.tolist()) == [0, 0, 1, 1, 1]  # c renumbered from 2 to 1
        out = capsys.readouterr().out
        assert f"dropped class 'b_junk': none of the 2 image file(s) in {pics / 'b_junk'}" in out
        assert "skipped 2 unreadable" in out


# ---------------------------------------------------------------------------
# MNIST files refused from their header: other shapes, sizes beyond the official files


def test_mnist_of_other_shapes_is_refused_even_unverified(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw)
    images = raw / MNIST_FILES[0]
    images.write_bytes(idx_bytes(np.zeros((6, 10, 40), dtype=np.uint8)))
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", 28, root=tmp_path, cache=False, verify=False)
    assert str(e.value).startswith(f"mnist: {images} declares shape (6, 10, 40); MNIST's is "
                                   "(N, 28, 28) with N <= 60,000")


@pytest.mark.parametrize("verify", [False, True])
def test_mnist_gzip_bomb_is_refused_from_its_header(tmp_path, verify):
    raw = tmp_path / "MNIST" / "raw"
    _, labels = write_mnist(raw, gz=True)
    bomb = raw / (MNIST_FILES[0] + ".gz")
    header = b"\0\0\x08\x03" + struct.pack(">3I", 2_000_000_000, 28, 28)  # 1.5 TB declared
    bomb.write_bytes(gzip.compress(header + bytes(1000)))
    with pytest.raises(DatasetError, match=r"declares shape \(2000000000, 28, 28\)"):
        load_dataset("mnist", 28, root=tmp_path, cache=False, verify=verify)


def test_mnist_data_beyond_its_header_is_not_decompressed(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw, gz=True)
    images = raw / (MNIST_FILES[0] + ".gz")
    padded = gzip.decompress(images.read_bytes()) + bytes(64 * 2**20)  # 64 MiB of zeros
    images.write_bytes(gzip.compress(padded, compresslevel=1))
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match="do not match the IDX header"):
            load_dataset("mnist", 28, root=tmp_path, cache=False, verify=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # read as far as the header declares (and one byte), not 64 MiB


# ---------------------------------------------------------------------------
# Image folders: every mode Pillow opens, entries that cannot be read, huge images


def gray_file(folder: Path, mode: str, value, suffix: str) -> Path:
    """A 12x12 image of one `value` in `mode`, in a format that keeps that mode."""
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("L", (12, 12), 128).convert(mode) if value is None else Image.new(
        mode, (12, 12), value)
    file = folder / f"{mode.replace(';', '_')}{suffix}"
    img.save(file)
    with Image.open(file) as saved:
        assert saved.mode == mode  # the test reads what it says it reads
    return file


@pytest.mark.parametrize("mode, value, suffix, expected", [
    ("1", 1, ".png", 255),
    ("L", 128, ".png", 128),
    ("LA", (128, 255), ".png", 128),
    ("P", None, ".png", 128),
    ("RGB", (128, 128, 128), ".png", 128),
    ("RGBA", (128, 128, 128, 255), ".png", 128),
    ("CMYK", (0, 0, 0, 127), ".tif", 128),
    ("YCbCr", (128, 128, 128), ".tif", 128),
    ("LAB", (128, 128, 128), ".tif", 119),  # L* 50: sRGB 119
    ("I;16", 128 * 257, ".png", 128),  # 16-bit: /257, not clipped at 255 (white)
    ("I;16B", 128 * 257, ".tif", 128),
    ("I", 128 * 257, ".tif", 128),
    ("F", 0.5, ".tif", 128),  # floats in [0, 1]: x255, not cast (black)
])
def test_every_image_mode_loads_its_gray_level(tmp_path, mode, value, suffix, expected):
    gray_file(tmp_path / "pics", mode, value, suffix)
    data = load_dataset("folder", 8, path=str(tmp_path / "pics"), cache=False)
    assert data.skipped == 0
    assert abs(data.images.float().mean().item() - expected) <= 1


def test_float_and_wide_integer_images_outside_a_known_range_use_their_own(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    ramp = np.tile(np.linspace(-3, 5, 16, dtype=np.float32), (16, 1))  # (16, 16)
    Image.fromarray(ramp).save(pics / "f.tif")
    Image.fromarray((ramp * 1e6).astype(np.int32)).save(pics / "i.tif")
    data = load_dataset("folder", 16, path=str(pics), cache=False)
    for image in data.images:
        assert image.min() == 0 and image.max() == 255  # the ramp spans the whole range


def test_images_holding_nan_are_skipped_and_counted(tmp_path, capsys):
    pics = tmp_path / "pics"
    write_images(pics, 2)
    Image.fromarray(np.full((12, 12), np.nan, dtype=np.float32)).save(pics / "nan.tif")
    assert len(load_dataset("folder", 8, path=str(pics), cache=False)) == 2
    assert "skipped 1 unreadable" in capsys.readouterr().out


def test_dangling_links_and_link_loops_are_skipped_and_counted(tmp_path, capsys):
    pics = tmp_path / "pics"
    write_images(pics, 2)
    (pics / "gone.png").symlink_to(pics / "missing.png")
    (pics / "loop.png").symlink_to(pics / "loop.png")
    for _ in range(2):  # decoded, then from the cache
        data = load_dataset("folder", 8, path=str(pics), root=tmp_path / "data")
        assert (len(data), data.skipped) == (2, 2)
        assert "skipped 2 unreadable image file(s)" in capsys.readouterr().out


def test_images_over_the_pixel_limit_are_skipped_and_counted(tmp_path, monkeypatch, capsys):
    pics = tmp_path / "pics"
    write_images(pics, 2)  # 12x12: 144 pixels
    Image.new("RGB", (8, 8)).save(pics / "small.png")
    monkeypatch.setattr(folders, "MAX_PIXELS", 100)
    data = load_dataset("folder", 8, path=str(pics), cache=False)
    assert (len(data), data.skipped) == (1, 2)
    assert "skipped 2 unreadable image file(s)" in capsys.readouterr().out


def test_an_unreadable_folder_names_the_first_failure(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"could be read \(the first: a\.png: "):
        load_dataset("folder", 8, path=str(tmp_path / "pics"), cache=False)


# ---------------------------------------------------------------------------
# A file changed in place with its size and mtime kept (cp -p, rsync -t)


def test_verify_cache_sees_a_change_that_keeps_size_and_mtime(tmp_path):
    pics, root = tmp_path / "pics", tmp_path / "data"
    pics.mkdir()
    file = pics / "a.ppm"  # uncompressed: another image of the same size is the same length
    Image.new("RGB", (12, 12), (0, 0, 0)).save(file)
    stamp = file.stat().st_mtime_ns
    assert load_dataset("folder", 8, path=str(pics), root=root).images.float().mean() == 0
    Image.new("RGB", (12, 12), (255, 255, 255)).save(file)
    os.utime(file, ns=(stamp, stamp))  # what cp -p and rsync -t do
    stale = load_dataset("folder", 8, path=str(pics), root=root)
    assert stale.images.float().mean() == 0  # the default key: names, sizes, mtimes (README)
    fresh = load_dataset("folder", 8, path=str(pics), root=root, verify_cache=True)
    assert fresh.images.float().mean() == 255


def test_verify_cache_is_a_config_field_that_a_resume_may_change(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"model": {"type": "CVAE"}, "data": {"dataset": "folder", "path": "x"}}')
    assert load_config(path).data.verify_cache is False
    assert load_config(path, ["data.verify_cache=true"]).data.verify_cache is True
