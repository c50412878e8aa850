"""Dataset loaders on tiny fixtures written in each real on-disk format."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from lib.data import (
    ARTBENCH_STYLES,
    LOADERS,
    DatasetError,
    ImageData,
    duplicate_groups,
    find,
    folders,
    load_dataset,
    set_channels,
    to_float,
)

BUILTIN = ["digits", "shapes", "mnist", "cats", "artbench32", "artbench", "folder"]
CHANNELS = {"digits": 1, "shapes": 3, "mnist": 1, "cats": 3, "artbench32": 3, "artbench": 3,
            "folder": 3}


@pytest.fixture(autouse=True)
def no_kaggle(tmp_path, monkeypatch):
    """Keep a real /kaggle/input (tests running on Kaggle) out of every search."""
    monkeypatch.setattr(find, "KAGGLE_INPUT", tmp_path / "kaggle")


# ---------------------------------------------------------------------------
# Fixture writers, one per real format


def pattern(n, h, w, c=3, seed=0):
    """uint8 (n, h, w, c): dark top half, bright bottom half, noisy, so that
    after resizing (and JPEG) both ends of the pixel range are still present."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, h, w, c), dtype=np.uint8)
    x[:, : h // 2] = rng.integers(0, 30, (n, h // 2, w, c))
    x[:, h // 2 :] = rng.integers(225, 256, (n, h - h // 2, w, c))
    return x


def write_idx(file: Path, array: np.ndarray, gz: bool = True):
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(gzip.compress(raw) if gz else raw)


def write_mnist(raw_dir: Path, n=12, gz=True):
    images = pattern(n, 28, 28, 1)[..., 0]
    labels = np.arange(n) % 10
    suffix = ".gz" if gz else ""
    write_idx(raw_dir / f"train-images-idx3-ubyte{suffix}", images, gz)
    write_idx(raw_dir / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    write_idx(raw_dir / f"t10k-images-idx3-ubyte{suffix}", images[:5], gz)  # must stay out
    write_idx(raw_dir / f"t10k-labels-idx1-ubyte{suffix}", labels[:5], gz)
    return images, labels


def write_batch(file: Path, images: np.ndarray, labels: list[int]):
    """CIFAR-style python batch with bytes keys, as Python 2 pickles load."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # (N, 3072) R, G, B planes
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"data": rows, b"labels": labels}, f)


def write_artbench32(folder: Path):
    a, b = pattern(4, 32, 32, seed=1), pattern(3, 32, 32, seed=2)
    write_batch(folder / "data_batch_1", a, [0, 1, 2, 9])
    write_batch(folder / "data_batch_2", b, [5, 5, 3])
    write_batch(folder / "test_batch", a[:2], [7, 7])  # must stay out
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"styles": [s.encode() for s in ARTBENCH_STYLES]}, f)
    return np.concatenate([a, b]), [0, 1, 2, 9, 5, 5, 3]


def save(file: Path, array: np.ndarray):
    """(H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA; the suffix picks the format."""
    file.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(file, quality=95)  # PNG ignores quality


def write_images(folder: Path, n: int, size=(16, 12), seed=0):
    """n RGB images alternating JPEG and PNG, non-square (h, w) = size."""
    for i, img in enumerate(pattern(n, *size, seed=seed)):
        save(folder / f"img{i:02d}.{'jpg' if i % 2 == 0 else 'png'}", img)


def write_artbench(folder: Path):
    for k, style in enumerate(["baroque", "impressionism", "ukiyo_e"]):
        write_images(folder / "train" / style, 2, size=(24, 24), seed=k)
    write_images(folder / "test" / "baroque", 3, seed=9)  # must stay out


def build(name: str, tmp_path: Path) -> dict:
    """Write `name`'s fixture; return load_dataset's keyword arguments for it."""
    root = tmp_path / "data"
    if name == "mnist":
        write_mnist(root / "MNIST" / "raw")
        return {"root": root, "verify": False}  # a fixture, not the official files
    elif name == "cats":
        write_images(root / "cats", 3)
    elif name == "artbench32":
        write_artbench32(root / "artbench-10-batches-py")
    elif name == "artbench":
        write_artbench(root / "artbench")
    elif name == "folder":
        write_images(tmp_path / "pics" / "a", 2)
        write_images(tmp_path / "pics" / "b", 2, seed=1)
        return {"root": root, "path": str(tmp_path / "pics")}
    return {"root": root}


# ---------------------------------------------------------------------------
# Every built-in dataset


def test_every_builtin_dataset_has_a_fixture_here():
    assert sorted(LOADERS) == sorted(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_dataset_shapes_dtypes_and_float_range(name, tmp_path):
    data = load_dataset(name, 8, cache=False, **build(name, tmp_path))
    assert data.images.dtype == torch.uint8
    assert data.images.shape[1:] == (CHANNELS[name], 8, 8)
    assert data.channels == CHANNELS[name] and data.image_size == 8 and data.name == name
    if data.labels is not None:
        assert data.labels.dtype == torch.int64 and data.labels.shape == (len(data),)
        assert 0 <= data.labels.min() and data.labels.max() < data.num_classes
    x = to_float(data.images)
    assert x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert x.min() < -0.5 and x.max() > 0.5  # the full range is used, not [0, 1]


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(DatasetError, match="unknown dataset 'celeba'") as e:
        load_dataset("celeba", 8)
    assert all(name in str(e.value) for name in BUILTIN)


# ---------------------------------------------------------------------------
# MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_train_split_exactly(tmp_path, gz):
    images, labels = write_mnist(tmp_path / "MNIST" / "raw", n=12, gz=gz)
    data = load_dataset("mnist", 28, root=tmp_path, cache=False, verify=False)
    assert data.images.shape == (12, 1, 28, 28)  # t10k's 5 images left out
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.labels.tolist() == labels.tolist()
    assert data.class_names == [str(d) for d in range(10)]


def test_mnist_path_may_name_the_raw_folder_and_dotted_names(tmp_path):
    raw = tmp_path / "elsewhere"
    write_mnist(raw, n=4)
    for f in raw.glob("train-*-idx*"):  # the "train-images.idx3-ubyte" spelling of some mirrors
        f.rename(f.with_name(f.name.replace("-idx", ".idx")))
    data = load_dataset("mnist", 14, root=tmp_path / "data", path=str(raw), cache=False,
                        verify=False)
    assert data.images.shape == (4, 1, 14, 14)


def test_mnist_truncated_idx_is_an_error_naming_the_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw, n=4, gz=False)
    f = raw / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="truncated") as e:
        load_dataset("mnist", 28, root=tmp_path, cache=False, verify=False)
    assert str(f) in str(e.value)


def test_mnist_download_goes_through_torchvision(tmp_path, monkeypatch):
    calls = []

    class FakeMNIST:  # stands in for the network: writes what torchvision would
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_mnist(Path(root) / "MNIST" / "raw", n=3)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    data = load_dataset("mnist", 28, root=tmp_path, download=True, cache=False, verify=False)
    assert calls == [(str(tmp_path), True, True)] and len(data) == 3


# ---------------------------------------------------------------------------
# ArtBench-10


def test_artbench32_pickled_batches_with_bytes_keys(tmp_path):
    folder = tmp_path / "data" / "artbench-10-batches-py"
    images, labels = write_artbench32(folder)
    data = load_dataset("artbench32", 32, path=str(folder.parent), cache=False)  # parent works
    assert data.images.shape == (7, 3, 32, 32)  # test_batch left out
    assert torch.equal(data.images, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert data.labels.tolist() == labels
    assert data.class_names == ARTBENCH_STYLES and data.num_classes == 10


def test_artbench_style_folders_train_split_and_fixed_labels(tmp_path):
    write_artbench(tmp_path / "data" / "artbench")
    data = load_dataset("artbench", 16, root=tmp_path / "data", cache=False)
    assert data.images.shape == (6, 3, 16, 16)  # test/ left out
    style = ARTBENCH_STYLES.index
    # fixed style indices, classes interleaved so that `limit` keeps all of them
    assert data.labels.tolist() == [style("baroque"), style("impressionism"), style("ukiyo_e")] * 2
    assert data.class_names == ARTBENCH_STYLES


def test_artbench_found_under_nested_kaggle_mount(tmp_path):
    mount = tmp_path / "kaggle" / "datasets" / "alexanderliao" / "artbench10"
    write_artbench(mount / "artbench-10-imagefolder-split")
    data = load_dataset("artbench", 8, root=tmp_path / "data", cache=False)
    assert len(data) == 6


# ---------------------------------------------------------------------------
# Folders of images: cats and folder


def test_cats_found_by_glob_under_kaggle_input(tmp_path):
    slug = tmp_path / "kaggle" / "datasets" / "spandan2" / "cats-faces-64x64-for-generative-models"
    write_images(slug / "cats", 5)
    data = load_dataset("cats", 8, root=tmp_path / "data", cache=False)
    assert data.images.shape == (5, 3, 8, 8)
    assert data.labels is None and data.class_names is None and data.num_classes == 0


def test_cats_prefers_path_then_root(tmp_path):
    write_images(tmp_path / "data" / "cats", 2)
    write_images(tmp_path / "mine", 4)
    assert len(load_dataset("cats", 8, root=tmp_path / "data", cache=False)) == 2
    assert len(load_dataset("cats", 8, root=tmp_path / "data", path=str(tmp_path / "mine"),
                            cache=False)) == 4


def test_folder_with_class_subfolders_gives_sorted_labels(tmp_path):
    rgb = pattern(1, 12, 12)[0]
    save(tmp_path / "pics" / "dog" / "d0.jpg", rgb)
    save(tmp_path / "pics" / "dog" / "d1.png", rgb[..., 0])  # grayscale -> 3 channels
    save(tmp_path / "pics" / "cat" / "c0.png", np.dstack([rgb, np.full((12, 12), 255, np.uint8)]))
    save(tmp_path / "pics" / ".ipynb_checkpoints" / "x.png", rgb)  # hidden: ignored
    data = load_dataset("folder", 8, path=str(tmp_path / "pics"), cache=False)
    assert data.class_names == ["cat", "dog"]
    assert data.labels.tolist() == [0, 1, 1]
    assert data.images.shape == (3, 3, 8, 8)
    gray = data.images[2]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_folder_of_loose_files_is_unlabelled(tmp_path):
    write_images(tmp_path / "pics", 3)
    data = load_dataset("folder", 8, path=str(tmp_path / "pics"), cache=False)
    assert len(data) == 3 and data.labels is None and data.num_classes == 0


def test_images_are_centre_cropped_not_squashed(tmp_path):
    img = np.zeros((8, 24, 3), np.uint8)
    img[:, :8, 0] = img[:, 8:16, 1] = img[:, 16:, 2] = 255  # red | green | blue
    save(tmp_path / "pics" / "wide.png", img)
    data = load_dataset("folder", 4, path=str(tmp_path / "pics"), cache=False)
    assert data.images[0, 1].min() == 255  # all green
    assert data.images[0, 0].max() == 0 and data.images[0, 2].max() == 0


def test_unreadable_files_are_skipped_counted_and_reported_once(tmp_path, capsys):
    folder = tmp_path / "pics"
    write_images(folder, 2)
    (folder / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(300))
    good = (folder / "img00.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    data = load_dataset("folder", 8, path=str(folder), root=tmp_path / "data")
    assert len(data) == 2 and data.skipped == 2
    out = capsys.readouterr().out
    assert out.count("skipped 2 unreadable") == 1


def test_limit_keeps_every_class(tmp_path):
    write_images(tmp_path / "pics" / "a", 3)
    write_images(tmp_path / "pics" / "b", 3)
    data = load_dataset("folder", 8, path=str(tmp_path / "pics"), limit=2, cache=False)
    assert len(data) == 2 and data.labels.tolist() == [0, 1]


@pytest.mark.parametrize("layout, match", [
    ("empty", "no image files"),
    ("corrupt", "none of the 2 image files"),
    ("mixed", "both loose images"),
])
def test_bad_folders_are_errors(tmp_path, layout, match):
    folder = tmp_path / "pics"
    folder.mkdir()
    if layout == "corrupt":
        (folder / "a.jpg").write_bytes(b"not a jpeg")
        (folder / "b.png").write_bytes(b"")
    elif layout == "mixed":
        write_images(folder, 1)
        write_images(folder / "sub", 1)
    with pytest.raises(DatasetError, match=match) as e:
        load_dataset("folder", 8, path=str(folder), root=tmp_path / "data")
    assert str(folder) in str(e.value)


def test_folder_needs_an_existing_path(tmp_path):
    with pytest.raises(DatasetError, match="path="):
        load_dataset("folder", 8, root=tmp_path)
    with pytest.raises(DatasetError, match="folder: no data found") as e:
        load_dataset("folder", 8, root=tmp_path, path=str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e.value)


# ---------------------------------------------------------------------------
# Missing data


@pytest.mark.parametrize("name, looked_at, how", [
    ("mnist", "MNIST/raw", "download=True"),
    ("cats", "cats", "spandan2/cats-faces-64x64-for-generative-models"),
    ("artbench32", "artbench-10-batches-py", "artbench-10-python.tar.gz"),
    ("artbench", "artbench", "alexanderliao/artbench10"),
])
def test_missing_data_says_what_where_and_how(tmp_path, name, looked_at, how):
    root = tmp_path / "data"
    with pytest.raises(DatasetError) as e:
        load_dataset(name, 8, root=root)
    msg = str(e.value)
    assert msg.startswith(f"{name}: no data found")
    assert str(root / looked_at) in msg and str(tmp_path / "kaggle") in msg
    assert how in msg


def test_artbench32_points_at_an_unextracted_archive(tmp_path):
    (tmp_path / "artbench-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match="tar -xzf"):
        load_dataset("artbench32", 8, root=tmp_path)


# ---------------------------------------------------------------------------
# Cache, channels


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    write_images(tmp_path / "pics", 4)
    kwargs = {"path": str(tmp_path / "pics"), "root": tmp_path / "data"}
    first = load_dataset("folder", 8, **kwargs)

    def no_decoding(file, size):
        raise AssertionError(f"{file} decoded again")

    monkeypatch.setattr(folders, "_decode", no_decoding)  # the files are unchanged: only the cache
    second = load_dataset("folder", 8, **kwargs)
    assert torch.equal(first.images, second.images)
    assert list((tmp_path / "data" / "cache").glob("folder_8px_*.pt"))


def test_channels_conversion(tmp_path):
    write_images(tmp_path / "pics", 2)
    gray = load_dataset("folder", 8, path=str(tmp_path / "pics"), channels=1, cache=False)
    assert gray.images.shape == (2, 1, 8, 8) and gray.images.dtype == torch.uint8
    rgb = load_dataset("digits", 8, channels=3, limit=5)
    assert rgb.images.shape == (5, 3, 8, 8) and rgb.labels.shape == (5,)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 2])
    with pytest.raises(DatasetError, match="2 channels"):
        set_channels(rgb.images, 2)


def test_image_data_rejects_float_images():
    with pytest.raises(DatasetError, match="uint8"):
        ImageData(torch.zeros(1, 1, 4, 4), None, None, "x")


# ---------------------------------------------------------------------------
# Cats as they come (the tarball, Kaggle's mounts) and exact duplicates


def write_cats_with_duplicates(folder: Path) -> None:
    """<n>.jpg as the dataset names them: 7 files, 4 distinct images.

    5.jpg and 6.jpg are byte-for-byte copies of 1.jpg and 2.jpg; 7.png holds 3.jpg's
    decoded pixels in another file format (a copy only a pixel hash sees).
    """
    images = pattern(4, 64, 64, seed=3)
    for n, k in zip(range(1, 7), [0, 1, 2, 3, 0, 1], strict=True):
        save(folder / f"{n}.jpg", images[k])
    with Image.open(folder / "3.jpg") as img:
        img.convert("RGB").save(folder / "7.png")


@pytest.mark.parametrize("layout", [
    "tarball",  # data.path=<root> holding cats/<n>.jpg, as the course's cats64.tar mirror extracts
    "root",  # the tarball extracted into data.root
    "kaggle",  # /kaggle/input/<slug>/cats/
    "kaggle_nested",  # /kaggle/input/datasets/<owner>/<slug>/cats/, a slug not named cats*
    "kaggle_deeper",  # a mirror's versions/<n>/ folder under the slug
])
def test_cats_read_in_the_tarball_and_kaggle_layouts(tmp_path, layout):
    kaggle = tmp_path / "kaggle"
    folder = {"tarball": tmp_path / "extracted" / "cats",
              "root": tmp_path / "data" / "cats",
              "kaggle": kaggle / "cats-faces-64x64-for-generative-models" / "cats",
              "kaggle_nested": kaggle / "datasets" / "someone" / "cat-faces-mirror" / "cats",
              "kaggle_deeper": kaggle / "datasets" / "someone" / "mirror" / "versions" / "2"
              / "cats"}[layout]
    write_cats_with_duplicates(folder)
    (kaggle / "genlab" / "notebooks").mkdir(parents=True)  # another attached input: no images
    path = str(tmp_path / "extracted") if layout == "tarball" else None
    data = load_dataset("cats", 64, root=tmp_path / "data", path=path, cache=False)
    assert data.images.shape == (7, 3, 64, 64) and data.labels is None


def test_dedupe_drops_exact_duplicates_keeping_the_first_and_says_how_many(tmp_path, capsys):
    write_cats_with_duplicates(tmp_path / "data" / "cats")
    everything = load_dataset("cats", 64, root=tmp_path / "data")
    assert "dedupe" not in capsys.readouterr().out
    groups = duplicate_groups(everything.images)
    assert groups == [[0, 4], [1, 5], [2, 6]]  # files sort as 1.jpg ... 6.jpg, 7.png
    distinct = load_dataset("cats", 64, root=tmp_path / "data", dedupe=True)  # from the cache
    assert "dropped 3 exact duplicate image(s); 4 distinct of 7" in capsys.readouterr().out
    assert torch.equal(distinct.images, everything.images[:4])
    assert duplicate_groups(distinct.images) == []
    # dedupe first, then limit takes the first N distinct images
    limited = load_dataset("cats", 64, root=tmp_path / "data", dedupe=True, limit=2)
    assert torch.equal(limited.images, everything.images[:2])


def test_dedupe_keeps_each_label_with_its_image(tmp_path):
    x, y = pattern(2, 12, 12, seed=5)
    save(tmp_path / "pics" / "a" / "x.png", x)
    save(tmp_path / "pics" / "b" / "y.png", y)
    save(tmp_path / "pics" / "b" / "z.png", x)  # a copy of a's image filed under b
    data = load_dataset("folder", 12, path=str(tmp_path / "pics"), dedupe=True, cache=False)
    assert data.labels.tolist() == [0, 1]  # the first copy and its label stay
    assert torch.equal(data.images[0], torch.from_numpy(x).permute(2, 0, 1))
