"""Evaluation: scores against known values, caching, and the offline Inception path."""

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg
from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

import lib
from lib.checkpoint import load_checkpoint
from lib.config import load_config
from lib.data import ImageData, load_dataset
from lib.device import Engine
from lib.families import FAMILIES, Parts
from lib.metrics import (
    INCEPTION_FILE,
    INCEPTION_URL,
    Evaluator,
    MetricsError,
    frechet_distance,
    scores,
    ssim_pairs,
)
from lib.training.loop import evaluate_parts, train
from lib.training.tracking import read_history
from lib.viz import plot_metrics


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 16)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def evaluator(digits, cache):
    return Evaluator(digits, features="classifier", num_samples=300, cache_dir=cache, bootstrap=5)


def held_out(evaluator, digits, n=300):
    """Real digits that are not among the evaluator's real subset."""
    used = {bytes(x.numpy().tobytes()) for x in evaluator.real_images}
    keep = [i for i in range(len(digits)) if bytes(digits.images[i].numpy().tobytes()) not in used]
    return digits.images[keep[:n]], digits.labels[keep[:n]]


def add_noise(images, sigma, seed=0):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * sigma
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------
# FID


def test_fid_of_data_with_itself_is_zero(evaluator):
    result = evaluator.evaluate(evaluator.real_images)
    assert abs(result["fid"]) < 1e-3
    assert result["ssim_nearest"] == pytest.approx(1.0, abs=1e-5)  # each image's nearest is itself


def test_fid_grows_monotonically_with_noise(evaluator):
    sigmas = (0, 10, 25, 50, 100)
    fids = [evaluator.evaluate(add_noise(evaluator.real_images, s))["fid"] for s in sigmas]
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids


def test_fid_matches_scipy_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(0.5, 1.0, size=(300, 8)) @ rng.normal(size=(8, 8))
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    got = frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert got == pytest.approx(expected, rel=1e-3)


def test_fid_has_a_bootstrap_interval(evaluator):
    result = evaluator.evaluate(add_noise(evaluator.real_images, 25))
    assert result["fid_std"] > 0
    assert result["fid_low"] < result["fid"] < result["fid_high"]
    assert result["kid_std"] > 0 and result["kid"] > 0


def test_result_records_features_size_and_counts(evaluator):
    result = evaluator.evaluate(evaluator.real_images[:120])
    assert result["features"] == "classifier"
    assert (result["image_size"], result["n_real"], result["n_fake"]) == (16, 300, 120)
    assert result["feature_dim"] == 64
    assert set(scores(result)).isdisjoint({"features", "n_fake", "warnings"})


def test_too_few_samples_for_full_rank_is_warned(digits, cache, evaluator):
    assert not evaluator.evaluate(evaluator.real_images)["warnings"]
    small = Evaluator(digits, features="classifier", num_samples=40, cache_dir=cache, bootstrap=0)
    result = small.evaluate(small.real_images)
    assert any("full-rank" in w for w in result["warnings"])
    assert "fid_std" not in result  # bootstrap=0 asked for no interval


# ---------------------------------------------------------------------------
# Diversity, SSIM, per-class FID


def test_diversity_of_one_repeated_image_is_zero(evaluator):
    collapsed = evaluator.real_images[:1].repeat(200, 1, 1, 1)
    assert evaluator.evaluate(collapsed)["diversity"] < 1e-3
    few = evaluator.evaluate(evaluator.real_images[:5].repeat(40, 1, 1, 1))["diversity"]
    assert 0 < few < 0.9  # duplicates give distances of exactly 0, never NaN


def test_diversity_of_real_data_is_one(evaluator, digits):
    images, _ = held_out(evaluator, digits)
    assert evaluator.evaluate(images)["diversity"] == pytest.approx(1.0, abs=0.1)


def test_ssim_of_identical_images_is_one(evaluator):
    x = evaluator.real_images[:50]
    assert torch.allclose(ssim_pairs(x, x), torch.ones(50))
    noisy = ssim_pairs(x, add_noise(x, 40))
    assert (noisy < 0.95).all()
    result = evaluator.evaluate(x, recon_pairs=(x, x))
    assert result["ssim_recon"] == pytest.approx(1.0)


def test_per_class_fid(evaluator, digits):
    images, labels = held_out(evaluator, digits)
    result = evaluator.evaluate(images, fake_labels=labels)
    assert all(f"fid_class_{k}" in result for k in range(10))
    assert "fid_class_mean" in result
    assert any("per-class" in w for w in result["warnings"])  # ~30 per class < 64 dims
    # a generator that ignores its label: every sample is a 0, whatever it was asked for
    zeros = images[labels == 0]
    wrong = evaluator.evaluate(zeros, fake_labels=torch.ones(len(zeros), dtype=torch.long))
    right = evaluator.evaluate(zeros, fake_labels=torch.zeros(len(zeros), dtype=torch.long))
    assert right["fid_class_0"] * 5 < wrong["fid_class_1"]


# ---------------------------------------------------------------------------
# Classifier features, batch independence, state, caching


def test_classifier_reaches_95_percent_on_digits(evaluator):
    assert evaluator.meta["classifier_accuracy"] >= 0.95


def test_results_do_not_depend_on_batch_size(evaluator, digits, cache):
    fake = add_noise(evaluator.real_images, 25)
    other = Evaluator(digits, features="classifier", num_samples=300, cache_dir=cache,
                      bootstrap=5, batch_size=7)
    assert torch.allclose(evaluator.extract(fake), other.extract(fake), atol=1e-5)
    a, b = evaluator.evaluate(fake), other.evaluate(fake)
    for key in ("fid", "fid_std", "kid", "diversity", "ssim_nearest"):
        assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_repeated_calls_hold_no_state_and_leave_rng_alone(evaluator):
    fake = add_noise(evaluator.real_images[:200], 25)
    rng = torch.get_rng_state()
    results = [evaluator.evaluate(fake) for _ in range(3)]
    assert torch.equal(rng, torch.get_rng_state())
    assert results[0] == results[1] == results[2]
    assert int(evaluator._fid.fake_features_num_samples) == 0
    assert int(evaluator._fid.real_features_num_samples) == 300


def test_classifier_and_real_statistics_are_cached(digits, cache, evaluator, monkeypatch):
    files = sorted(p.name for p in (cache / "metrics").iterdir())
    assert any(f.startswith("classifier_digits_16px") for f in files)
    assert any(f.startswith("real_digits_classifier_16px_n300") for f in files)
    assert not list(Path(lib.__file__).parent.rglob("*.pt"))

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of read from the cache")

    monkeypatch.setattr("lib.metrics.train_classifier", fail)
    monkeypatch.setattr(Evaluator, "extract", fail)
    again = Evaluator(digits, features="classifier", num_samples=300, cache_dir=cache)
    assert torch.equal(again.real_features, evaluator.real_features)


def test_classifier_needs_labels(cache):
    unlabelled = ImageData(torch.zeros(20, 1, 8, 8, dtype=torch.uint8), None, None, "blank")
    with pytest.raises(MetricsError, match="labelled"):
        Evaluator(unlabelled, features="classifier", cache_dir=cache)
    with pytest.raises(ValueError, match="classifier"):
        Evaluator(unlabelled, features="vgg", cache_dir=cache)


def test_wrong_images_are_rejected(evaluator):
    with pytest.raises(MetricsError, match="uint8"):
        evaluator.evaluate(torch.zeros(10, 1, 16, 16))
    with pytest.raises(MetricsError, match="shape"):
        evaluator.evaluate(torch.zeros(10, 3, 16, 16, dtype=torch.uint8))


# ---------------------------------------------------------------------------
# Inception, offline: real loading code, stand-in weights


@pytest.fixture(scope="module")
def fake_inception(tmp_path_factory):
    """torch-fidelity's Inception-v3 state dict with random weights, and its SHA-256."""
    with pytest.MonkeyPatch.context() as m:  # build the module without fetching weights
        m.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("weights") / "stand-in-inception.pth"
    torch.save(net.state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), net.state_dict()


def test_inception_path_runs_offline_with_local_weights(fake_inception, tmp_path):
    path, sha, state = fake_inception
    gen = torch.Generator().manual_seed(0)
    real = ImageData(torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8, generator=gen),
                     None, None, "noise")
    ev = Evaluator(real, features="inception", num_samples=12, cache_dir=tmp_path,
                   weights_path=path, weights_sha256=sha, bootstrap=0)
    name = "Mixed_7c.branch_pool.conv.weight"
    assert torch.equal(ev.net.net.state_dict()[name], state[name])  # the file's weights, loaded
    result = ev.evaluate(add_noise(real.images, 60))
    assert result["features"] == "inception" and result["feature_dim"] == 2048
    assert np.isfinite(result["fid"]) and result["fid"] > 0
    assert any("full-rank" in w for w in result["warnings"])
    assert any("grayscale" in w for w in result["warnings"])


def test_missing_inception_weights_say_what_to_get(tmp_path, monkeypatch):
    real = ImageData(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), None, None, "x")
    with pytest.raises(MetricsError) as err:
        Evaluator(real, features="inception", cache_dir=tmp_path,
                  weights_path=tmp_path / "nope.pth")
    assert INCEPTION_FILE in str(err.value) and INCEPTION_URL in str(err.value)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MetricsError) as err:
        Evaluator(real, features="inception", cache_dir=tmp_path)  # download=False: no network use
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE) in str(err.value)


def test_inception_weights_are_checked_before_loading(fake_inception, tmp_path):
    path, sha, _ = fake_inception
    real = ImageData(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), None, None, "x")
    with pytest.raises(MetricsError, match="SHA-256"):
        Evaluator(real, features="inception", cache_dir=tmp_path, weights_path=path)  # real hash
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"weights": Path("not a tensor")}, unsafe)
    with pytest.raises(MetricsError, match="plain state dict"):
        Evaluator(real, features="inception", cache_dir=tmp_path, weights_path=unsafe,
                  weights_sha256=hashlib.sha256(unsafe.read_bytes()).hexdigest())


# ---------------------------------------------------------------------------
# In training and from the command line


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    """A tiny DCGAN run scored every 2 steps (classifier features on digits)."""
    root = tmp_path_factory.mktemp("run")
    cfg = load_config("configs/dcgan_demo.json", [
        f"data.root={root / 'data'}", "trainer.epochs=1", "trainer.iterations_per_epoch=6",
        "trainer.log_every_step=3", "trainer.batch_size=16", "trainer.eval_every=2",
        "trainer.eval_samples=80"])
    return train(cfg, out_root=root, progress=False)


def test_training_logs_metrics_and_keeps_the_best_checkpoint(evaluated_run):
    history = read_history(evaluated_run)
    evals = [r for r in history if "fid" in r]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert all(r["features"] == "classifier" and r["n_fake"] == 80 for r in evals)
    assert "loss_g" in next(r for r in evals if r["step"] == 6)  # merged into the log line
    logged = [r["step"] for r in history if "event" not in r]  # events: collapse warnings
    assert logged == [2, 3, 4, 6]  # one line per step
    by_step = {r["step"]: r["diversity"] for r in evals}
    for event in (r for r in history if r.get("event") == "collapse"):  # the collapse watch
        assert event["diversity"] == by_step[event["step"]] < event["threshold"] == 0.3
    collapsed = {r["step"] for r in history if r.get("event") == "collapse"}
    assert collapsed == {step for step, d in by_step.items() if d < 0.3}
    best = min(evals, key=lambda r: r["fid"])
    assert load_checkpoint(evaluated_run / "checkpoints" / "best.pt")["step"] == best["step"]
    assert (evaluated_run / "metrics.png").stat().st_size > 1000


def test_cli_evaluate_writes_metrics_json(evaluated_run):
    out = subprocess.run([sys.executable, "-m", "lib", "evaluate", str(evaluated_run),
                          "--samples", "40", "--features", "classifier"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "FID" in out.stdout
    result = json.loads((evaluated_run / "metrics.json").read_text())
    assert result["step"] == 6 and result["n_fake"] == 40 and result["features"] == "classifier"
    assert result["fid"] > 0 and 0 <= result["diversity"]


def test_evaluate_parts_scores_classes_and_reconstructions(evaluator, digits):
    by_class = {k: digits.images[digits.labels == k] for k in range(10)}
    asked = []

    def sample(parts, n, labels, generator):  # a perfect conditional model: real digits
        asked.append(labels)
        return torch.stack([by_class[int(k)][i // 10].float() / 127.5 - 1
                            for i, k in enumerate(labels)])

    family = dataclasses.replace(FAMILIES["cvae"], sample=sample,
                                 reconstruct=lambda parts, x, y: x)
    parts = Parts(nets={}, optimizers={}, schedulers={},
                  specs={"model": {"type": "Stub", "args": {"num_classes": 10}}})
    result = evaluate_parts(family, parts, evaluator, Engine(torch.device("cpu"), None), seed=0)
    assert torch.equal(asked[0], torch.arange(300) % 10)  # balanced labels, every class scored
    assert all(f"fid_class_{k}" in result for k in range(10))
    assert result["ssim_recon"] == pytest.approx(1.0)


def test_plot_metrics_draws_what_was_logged(tmp_path):
    assert plot_metrics([], tmp_path / "m.png") is None  # nothing logged yet
    assert plot_metrics([{"step": 1, "loss": 0.5}], tmp_path / "l.png").stat().st_size > 1000
    history = [{"step": s, "fid": 10.0 / s, "fid_low": 8.0 / s, "fid_high": 12.0 / s,
                "kid": 0.1, "kid_std": 0.01, "diversity": 0.9, "fid_class_0": 3.0,
                "features": "classifier"} for s in (1, 2, 3)]
    assert plot_metrics(history, tmp_path / "m.png").stat().st_size > 1000
