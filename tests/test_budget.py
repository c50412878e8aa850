"""trainer.max_minutes bounds the whole train() call, and a second session reuses the first's
caches.

The course preset (dcgan_train: 64 px, a snapshot every 100 steps) on a slice of fake cat
faces, scored with a stand-in Inception network, made cheaper where only the CPU's speed
would change (nets 4x narrower, batch 32, 100 images scored, G's standing statistics on
256 draws):
decoding, reference features, training, the final scores and the media must fit the
budget, with room for more than a handful of steps. Before, start-up counted as the
first step's cost and such a session trained one step. The second session resumes a
read-only copy of the run on a machine with empty caches (a new Kaggle session with the
first one's output attached) and must find the decoded data and reference features in it.
One torch thread, as in the Kaggle walkthrough's kernel: on a busy 2-core machine a second
one spins (a step 10x slower).
Margins are generous: the CI machine has 2 cores, often busy.
"""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from inception_standin import save_torchscript
from test_kaggle_walkthrough import fake_cats
from test_notebooks import read_only

import lib.data.cache
import lib.metrics.evaluator
from lib.config import load_config
from lib.core.checkpoint import load_checkpoint
from lib.data import ImageData
from lib.families.ddpm import media_size
from lib.metrics import Evaluator, MetricsError
from lib.notebook import find_preset
from lib.training.loop import train
from lib.training.tracking import read_history

BUDGET_MIN = 0.5
OVERRUN_S = 20  # what a busy 2-core machine may add: one slow step, a slow save
BATCH = 32


def course(tmp_path: Path, cats: Path, weights: Path, machine: str) -> object:
    """The course preset with what a student sets, on `machine`'s own (empty) caches."""
    return load_config(find_preset("dcgan_train"), [
        f"data.path={cats}", f"data.root={tmp_path / machine}", "trainer.device=cpu",
        f"trainer.inception_weights={weights}", f"trainer.max_minutes={BUDGET_MIN}",
        f"trainer.batch_size={BATCH}", "trainer.eval_samples=100", "gan.standing_stats=256",
        "generator.args.hidden_dim=16", "discriminator.args.hidden_dim=16",
        "wandb.mode=disabled"])


def timed_train(cfg, **kwargs) -> tuple[Path, float]:
    t0 = time.monotonic()
    run = train(cfg, progress=False, **kwargs)
    return run, time.monotonic() - t0


def count_calls(monkeypatch, owner, name: str) -> list:
    calls, real = [], getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # two budgeted sessions of the 64 px course preset
def test_the_budget_is_the_session_and_the_next_session_reuses_its_caches(tmp_path, monkeypatch,
                                                                          one_thread):
    fake_cats(tmp_path / "input" / "cats")
    weights = save_torchscript(tmp_path / "input" / "inception-standin.pt")
    budget = BUDGET_MIN * 60

    # session 1: everything is computed, and all of it fits the budget
    cfg = course(tmp_path, tmp_path / "input" / "cats", weights, "machine1")
    run, wall = timed_train(cfg, out_root=tmp_path / "working1")
    summary = json.loads((run / "summary.json").read_text())
    assert wall < budget + OVERRUN_S and summary["session_seconds"] < budget + OVERRUN_S
    first = summary["step"]
    assert not summary["finished"] and first > 5
    assert summary["train_seconds"] > 0.3 * budget  # the budget went to training
    history = [r for r in read_history(run) if "loss_g" in r]
    assert len(history) >= first // 5  # a loss curve before the first snapshot (step 100)
    assert [r["step"] for r in read_history(run) if "fid" in r] == [first]  # scored at the stop
    assert (run / "final_grid.png").is_file() and (run / "evolution.gif").is_file()
    # train_seconds counted up to the stop, not only up to the last history line
    counters = load_checkpoint(run / "checkpoints" / "last.pt")["counters"]
    assert counters == {k: summary[k] for k in counters}
    assert counters["images_seen"] == first * BATCH
    speed = sorted(r["images_per_sec"] for r in history)[len(history) // 2]
    assert 0.5 * speed < counters["images_seen"] / counters["train_seconds"] < 2 * speed

    # session 2: the run attached read-only, a machine with no cache: the run's are used
    attached = tmp_path / "input" / "notebook-output" / run.name
    shutil.copytree(run, attached)
    read_only(attached)
    decoded = count_calls(monkeypatch, lib.data.cache, "atomic_save")
    extracted = count_calls(monkeypatch, lib.metrics.evaluator.Evaluator, "_extract_reference")
    try:
        cfg = course(tmp_path, tmp_path / "input" / "cats", weights, "machine2")
        resumed, wall = timed_train(cfg, resume=attached, run_dir=tmp_path / "working2" / run.name)
    finally:
        read_only(attached, on=False)
    assert decoded == [] and extracted == []  # nothing decoded or extracted again
    summary = json.loads((resumed / "summary.json").read_text())
    assert wall < budget + OVERRUN_S and summary["step"] > first + 5
    assert [r["step"] for r in read_history(resumed) if "fid" in r] == [first, summary["step"]]
    counters = load_checkpoint(resumed / "checkpoints" / "last.pt")["counters"]
    assert counters["images_seen"] == summary["step"] * BATCH


def test_reference_features_left_unfinished_are_continued_the_same(tmp_path):
    """A budget's share too small for the reference set: what was extracted is cached, the
    next Evaluator continues it, and the features equal those extracted in one go."""
    weights = save_torchscript(tmp_path / "standin.pt")
    gen = torch.Generator().manual_seed(0)
    real = ImageData(torch.randint(0, 256, (120, 3, 16, 16), dtype=torch.uint8, generator=gen),
                     None, None, "noise")

    def evaluator(cache: str, seconds: float | None) -> Evaluator:
        return Evaluator(real, features="inception", num_samples=120, cache_dir=tmp_path / cache,
                         weights_path=weights, bootstrap=0, seconds=seconds)

    first = evaluator("cache", 0.0)  # one feature batch (50 images), then out of time
    assert not first.complete and len(first.real_features) == 50
    assert first.partial.startswith("reference statistics: 50 of 120 images this session")
    with pytest.raises(MetricsError, match="50 of 120"):
        first.evaluate(real.images[:10])
    second = evaluator("cache", 0.0)  # timed now: the next batch fits in no time at all
    assert not second.complete and len(second.real_features) == 50
    third = evaluator("cache", None)
    whole = evaluator("fresh", None)
    assert third.complete and torch.equal(third.real_features, whole.real_features)
    assert third.evaluate(real.images[:10])["fid"] == whole.evaluate(real.images[:10])["fid"]


def test_ddpm_final_media_shrink_rows_first_then_sampler_steps():
    """media_size: the final grid's rows (and the denoising row) at the sampler's steps
    cost about `fit` of the full media; rows go first, steps only below one row."""
    assert media_size(8, 20, 1.0, True) == (8, 20)
    assert media_size(8, 20, 0.5, True) == (3, 20)  # 90 row-steps: 3 rows + the denoising row
    assert media_size(8, 20, 0.1, True) == (1, 9)  # 18 row-steps: 1 row + denoising, 9 steps
    assert media_size(8, 20, 0.0, True) == (1, 1)
    assert media_size(8, 1000, 0.1, False) == (1, 1000)  # the ancestral sampler takes all
