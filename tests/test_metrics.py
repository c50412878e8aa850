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
from inception_standin import save_torchscript
from scipy import linalg

import lib
from lib.config import load_config
from lib.core.checkpoint import load_checkpoint
from lib.core.device import Engine
from lib.core.viz import plot_metrics
from lib.data import ImageData, load_dataset
from lib.families import FAMILIES, Parts
from lib.metrics import (
    Evaluator,
    MetricsError,
    frechet_distance,
    protocol_summary,
    scores,
    ssim_pairs,
)
from lib.metrics.scores import kid, ssim
from lib.notebook import report
from lib.training.evaluation import evaluate_checkpoint, evaluate_parts
from lib.training.loop import train
from lib.training.tracking import read_history


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


@pytest.mark.parametrize("n_real, n_fake, dim", [(400, 300, 8), (40, 30, 64)])
def test_fid_matches_scipy_frechet_distance(n_real, n_fake, dim):
    """Both ways of taking the trace term: more samples than dimensions, and fewer."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n_real, dim)) @ rng.normal(size=(dim, dim))
    b = rng.normal(0.5, 1.0, size=(n_fake, dim)) @ rng.normal(size=(dim, dim))
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    got = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert got == pytest.approx(expected, rel=1e-6)


def test_fid_has_a_bootstrap_interval(evaluator):
    result = evaluator.evaluate(add_noise(evaluator.real_images, 25))
    assert result["fid_std"] > 0
    assert result["fid_low"] < result["fid"] < result["fid_high"]
    assert result["kid_std"] > 0 and result["kid"] > 0


def test_result_records_its_protocol(evaluator, digits):
    result = evaluator.evaluate(evaluator.real_images[:120])
    assert result["features"] == "classifier"
    assert (result["image_size"], result["n_real"], result["n_fake"]) == (16, 300, 120)
    assert result["feature_dim"] == 64
    p = result["protocol"]
    assert (p["features"], p["feature_dim"], p["n_real"], p["n_fake"]) == ("classifier", 64,
                                                                          300, 120)
    assert (p["image_size"], p["reference"], p["resize"]) == (16, "train", "none")
    assert p["real_total"] == len(digits) == p["real_distinct"] + p["duplicates_removed"]
    assert len(p["weights_sha256"]) == 12 and p["feature_batch"] == 50
    summary = protocol_summary(p)
    assert summary.startswith("classifier ") and "120 gen vs 300 real (train" in summary
    assert set(scores(result)).isdisjoint({"features", "n_fake", "warnings", "protocol"})
    json.dumps(result)  # history.jsonl and metrics.json take it as it is


def test_reference_statistics_never_count_a_duplicate_twice(tmp_path):
    """Real images are deduplicated (exact bytes) before the reference subset is drawn."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 3, 8, 8), dtype=torch.uint8, generator=gen)
    once = ImageData(images, None, None, "noise")
    twice = ImageData(torch.cat([images, images[:25], images[:5]]), None, None, "noise")
    weights = save_torchscript(tmp_path / "standin.pt")
    ev = Evaluator(twice, features="inception", num_samples=1000, cache_dir=tmp_path,
                   weights_path=weights, bootstrap=0)
    p = ev.protocol
    assert (p["real_total"], p["real_distinct"], p["duplicates_removed"]) == (90, 60, 30)
    assert p["n_real"] == 60 and len({x.numpy().tobytes() for x in ev.real_images}) == 60
    drawn = [Evaluator(d, features="inception", num_samples=40, cache_dir=tmp_path,
                       weights_path=weights, bootstrap=0) for d in (once, twice)]
    assert torch.equal(drawn[0].real_images, drawn[1].real_images)  # as if never duplicated
    assert torch.equal(drawn[0].real_features, drawn[1].real_features)


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


def test_ssim_matches_torchmetrics():
    """Our SSIM (written out: torchmetrics' import cost ~5 s a process) is theirs."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 24, 24, generator=g)
    y = (x + 0.2 * torch.randn(6, 3, 24, 24, generator=g)).clamp(0, 1)
    theirs = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    assert torch.allclose(ssim(x, y), theirs, atol=1e-6)
    small = x[:, :, :8, :8], y[:, :, :8, :8]  # 8 px digits: the window is wider than half
    theirs = structural_similarity_index_measure(*small, data_range=1.0, reduction="none")
    assert torch.allclose(ssim(*small), theirs, atol=1e-6)


def test_kid_matches_torchmetrics_and_does_not_touch_the_global_rng():
    """Subsets of the whole set are permutations of it: the unbiased MMD^2 is then exact,
    and ours must equal torchmetrics' (whose subsets come from the global RNG)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    class Given(torch.nn.Module):  # hands the features straight to their KID
        num_features = 8

        def forward(self, f):
            return f

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g) + 0.5
    theirs = KernelInceptionDistance(feature=Given(), subsets=2, subset_size=40)
    theirs.update(real, real=True)
    theirs.update(fake, real=False)
    state = torch.random.get_rng_state()
    mean, std = kid(real, fake, subsets=3, subset_size=40)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert mean == pytest.approx(theirs.compute()[0].item(), rel=1e-5) and std < 1e-9
    assert kid(real, real[torch.randperm(40, generator=g)], subset_size=40)[0] < 1e-9


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


def test_results_do_not_depend_on_batching(evaluator):
    fake = add_noise(evaluator.real_images, 25)
    pieces = torch.cat([evaluator.extract(x) for x in fake.split(7)])
    assert torch.equal(evaluator.extract(fake), pieces)  # fixed, padded feature batches
    a, b = evaluator.evaluate(fake), evaluator.evaluate(fake[torch.randperm(len(fake))])
    for key in ("fid", "diversity", "ssim_nearest"):  # KID's random subsets follow the order
        assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_repeated_calls_hold_no_state_and_leave_rng_alone(evaluator):
    fake = add_noise(evaluator.real_images[:200], 25)
    rng = torch.get_rng_state()
    results = [evaluator.evaluate(fake) for _ in range(3)]
    assert torch.equal(rng, torch.get_rng_state())
    assert results[0] == results[1] == results[2]


def test_classifier_and_real_statistics_are_cached(digits, cache, evaluator, monkeypatch):
    files = sorted(p.name for p in (cache / "metrics").iterdir())
    assert any(f.startswith("classifier_digits_16px") for f in files)
    assert any(f.startswith("real_digits_classifier_16px_n300") for f in files)
    assert not list(Path(lib.__file__).parent.rglob("*.pt"))

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of read from the cache")

    monkeypatch.setattr("lib.metrics.classifier.train_classifier", fail)
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
    healthy, falls = False, set()  # a fall under 0.3 once a score was at or above it
    for step, d in sorted(by_step.items()):
        falls |= {step} if healthy and d < 0.3 else set()
        healthy = healthy or d >= 0.3
    assert collapsed == falls
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
    assert "protocol: classifier" in out.stdout and "40 gen vs 40 real (train" in out.stdout


def test_evaluate_a_run_with_a_local_inception_file(evaluated_run, tmp_path):
    """CLI `evaluate --inception-weights PATH` reaches the evaluator; metrics.json carries the
    protocol naming the file."""
    weights = save_torchscript(tmp_path / "standin-inception.pt")
    result = evaluate_checkpoint(evaluated_run, samples=20, features="inception",
                                 inception_weights=str(weights))
    saved = json.loads((evaluated_run / "metrics.json").read_text())
    assert saved["protocol"] == result["protocol"]
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    assert (saved["protocol"]["weights_sha256"], saved["protocol"]["n_fake"]) == (sha, 20)
    assert saved["protocol"]["resize"] == f"tf1-bilinear {result['image_size']}->299"


def test_evaluate_parts_scores_classes_and_reconstructions(evaluator, digits):
    by_class = {k: digits.images[digits.labels == k] for k in range(10)}
    asked = []

    def sample(parts, n, labels, generator):  # a perfect conditional model: real digits
        asked.append(labels)
        return torch.stack([by_class[int(k)][i // 10].float() / 127.5 - 1
                            for i, k in enumerate(labels)])

    def label_grid(parts, generator):  # noise m draws the m-th digit of each class
        return torch.stack([by_class[k][:16].float() / 127.5 - 1 for k in range(10)])

    family = dataclasses.replace(FAMILIES["cvae"], sample=sample,
                                 reconstruct=lambda parts, x, y: x, label_grid=label_grid)
    parts = Parts(nets={}, optimizers={}, schedulers={},
                  specs={"model": {"type": "Stub", "args": {"num_classes": 10}}})
    result = evaluate_parts(family, parts, evaluator, Engine(torch.device("cpu"), None), seed=0)
    assert torch.equal(asked[0], torch.arange(300) % 10)  # balanced labels, every class scored
    assert all(f"fid_class_{k}" in result for k in range(10))
    assert result["ssim_recon"] == pytest.approx(1.0)
    assert 0.5 < result["label_sensitivity"] < 2  # real digits: the class moves as much as style
    assert result["sampled_with"] == "raw"


def test_a_diffusion_models_score_names_its_sampler_and_steps(evaluator, digits):
    from lib.models.ddpm import DDPM

    model = DDPM(image_size=8, n_channels=1, num_classes=0, base_channels=8,
                 channel_mults=[1, 2], num_res_blocks=1, timesteps=20, sampler="dpm++2m",
                 sample_steps=5)
    family = dataclasses.replace(FAMILIES["ddpm"],
                                 sample=lambda parts, n, labels, gen: digits.images[:n] / 127.5 - 1)
    parts = Parts(nets={"model": model}, optimizers={}, schedulers={},
                  specs={"model": {"type": "DDPM", "args": {}}})
    engine = Engine(torch.device("cpu"), None)
    assert evaluate_parts(family, parts, evaluator, engine, seed=0)["sampler"] == "dpm++2m 5 steps"
    model.sampler = "ddpm"  # the ancestral chain: every timestep
    assert evaluate_parts(family, parts, evaluator, engine, seed=0)["sampler"] == "ddpm 20 steps"


def test_plot_metrics_draws_what_was_logged(tmp_path):
    assert plot_metrics([], tmp_path / "m.png") is None  # nothing logged yet
    assert plot_metrics([{"step": 1, "loss": 0.5}], tmp_path / "l.png").stat().st_size > 1000
    history = [{"step": s, "fid": 10.0 / s, "fid_low": 8.0 / s, "fid_high": 12.0 / s,
                "kid": 0.1, "kid_std": 0.01, "diversity": 0.9, "fid_class_0": 3.0,
                "features": "classifier"} for s in (1, 2, 3)]
    assert plot_metrics(history, tmp_path / "m.png").stat().st_size > 1000


def test_report_shows_the_protocol(evaluated_run, tmp_path):
    """The report's table takes the protocol of the last evaluation in the history."""
    protocol = report.last_scores(read_history(evaluated_run))["protocol"]
    assert protocol["n_fake"] == 80 and protocol["features"] == "classifier"
    run = report.RunInfo(tmp_path, "r", "dcgan", "digits", 16, 8, 8, True, 1.0, 128,
                         metrics={"fid": 3.0, "protocol": protocol})
    assert report.protocol_rows([run]) == [{"run": "r", "FID protocol": protocol_summary(protocol)}]


def test_processes_side_by_side_train_one_classifier(tmp_path):
    """Two notebooks at once on the same data: the second waits and loads the first's
    classifier instead of training its own."""
    script = (f"import sys; sys.path.insert(0, {str(Path.cwd())!r})\n"
              "from lib.data import load_dataset\n"
              "from lib.metrics import classifier\n"
              "trained = []\n"
              "real = classifier.train_classifier\n"
              "import time\n"
              "def slow(*a, **k):  # long enough that the other process would start one too\n"
              "    trained.append(1)\n"
              "    time.sleep(3)\n"
              "    return real(*a, **k)\n"
              "classifier.train_classifier = slow\n"
              "classifier.CLASSIFIER_STEPS = 5\n"
              f"classifier.load_classifier(load_dataset('digits', 8), {str(tmp_path)!r})\n"
              "print('trained' if trained else 'loaded')\n")
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert outcomes == ["loaded", "trained"]
