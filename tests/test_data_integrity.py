"""Data that must not go stale or wrong silently: a cache keyed on the files read,
MNIST checked against its official checksums and its class range, empty classes dropped."""

import gzip
import hashlib
import os
import pickle
import struct
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
