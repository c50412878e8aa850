"""Checkpoints that load but lack what their readers need: one clear line, at load."""

import errno
import io
import json
import os
from pathlib import Path

import pytest
import torch

from lib.__main__ import main
from lib.core import checkpoint
from lib.core.checkpoint import REQUIRED, CheckpointError, atomic_save, load_checkpoint
from lib.training.evaluation import rebuild

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A real run folder: two steps of a tiny DCGAN on the embedded digits."""
    tmp = tmp_path_factory.mktemp("ckpt")
    raw = json.loads((ROOT / "configs" / "dcgan_demo.json").read_text())
    raw["name"] = "run"
    raw["data"] = {"dataset": "digits", "image_size": 8, "root": str(tmp / "data")}
    raw["generator"]["args"] = {"latent_dim": 4, "hidden_dim": 4}
    raw["discriminator"]["args"] = {"hidden_dim": 4}
    raw["trainer"] = {"epochs": 1, "iterations_per_epoch": 2, "batch_size": 4,
                      "log_every_step": 2, "eval_samples": 0, "device": "cpu"}
    raw["wandb"] = {"mode": "disabled"}
    (tmp / "tiny.json").write_text(json.dumps(raw))
    assert main(["train", str(tmp / "tiny.json"), "--out", str(tmp)]) == 0
    return tmp / "run"


def doctored(run: Path, tmp_path: Path, edit) -> Path:
    """A copy of `run` whose last.pt went through `edit`."""
    copy = tmp_path / "run"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    edit(ckpt)
    atomic_save(ckpt, copy / "checkpoints" / "last.pt")
    (copy / "config.json").write_text((run / "config.json").read_text())
    return copy


@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_a_missing_entry_is_named_at_load(run, tmp_path, key):
    copy = doctored(run, tmp_path, lambda c: c.pop(key))
    path = copy / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match=rf"last\.pt: damaged .* its '{key}' entry is "
                                              "missing"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"'{key}'"):
        rebuild(path.parents[1], path.name, device="cpu")


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(step="3"), "'step' entry is a str, expected int"),
    (lambda c: c.update(config=[1, 2]), "'config' entry is a list, expected dict"),
    (lambda c: c["models"].update(generator={"args": {}}), "models['generator'] is not a"),
    (lambda c: c["nets"].pop("discriminator"), "no weights for 'discriminator'"),
])
def test_a_malformed_entry_is_named_at_load(run, tmp_path, edit, words):
    copy = doctored(run, tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(copy / "checkpoints" / "last.pt")
    assert words in str(err.value)


@pytest.mark.parametrize("command", [["train", "--resume", "{run}"], ["evaluate", "{run}"]])
def test_cli_reports_a_checkpoint_without_config_in_one_line(run, tmp_path, capsys, command):
    copy = doctored(run, tmp_path, lambda c: c.pop("config"))
    assert main([a.replace("{run}", str(copy)) for a in command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {copy / 'checkpoints' / 'last.pt'}: damaged")
    assert "'config' entry is missing" in err and len(err.splitlines()) == 1


def test_an_intact_checkpoint_still_loads_and_rebuilds(run):
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 2
    nets = rebuild(run, device="cpu").parts.nets
    z = torch.randn(3, 4)
    assert nets["generator"](z).shape == (3, 1, 8, 8)


# ---------------------------------------------------------------------------
# Hand-edited or foreign training state: named at load, not a raw error mid-resume


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["rng"].update(torch=torch.tensor([1, 2, 3], dtype=torch.uint8)),
     "its rng['torch'] is not a random-generator state"),
    (lambda c: c.update(rng={}), "its rng['torch'] is not a random-generator state (KeyError"),
    (lambda c: c["rng"].update(python=[3, [1, 2], None]), "its rng['python'] is not a"),
    (lambda c: c["rng"].update(numpy=torch.zeros(3, dtype=torch.int64)), "its rng['numpy']"),
    (lambda c: c["rng"]["sampler"].update(pos=10**6), "its rng['sampler'] is not a"),
    (lambda c: c.update(rank_rng=[{}]), "its rank_rng[0]['torch'] is not a"),
    (lambda c: c.update(counters={}), "its counters['images_seen'] is None, expected a number"),
    (lambda c: c["counters"].update(train_seconds="1"), "its counters['train_seconds'] is '1'"),
    (lambda c: c.update(step=-5), "its 'step' is -5, expected a step >= 0"),
])
def test_a_damaged_training_state_is_named_at_load(run, tmp_path, edit, words):
    copy = doctored(run, tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(copy / "checkpoints" / "last.pt")
    assert str(err.value).startswith(f"{copy / 'checkpoints' / 'last.pt'}: damaged checkpoint")
    assert words in str(err.value)


def test_cli_resume_of_a_damaged_rng_is_one_line(run, tmp_path, capsys):
    copy = doctored(run, tmp_path, lambda c: c.update(rng={}))
    assert main(["train", "--resume", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {copy / 'checkpoints' / 'last.pt'}: damaged checkpoint, "
                          "its rng['torch']") and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------
# A full disk: torch wraps ENOSPC in "unexpected pos"; the CLI names the folder


class FullDisk(io.FileIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_a_save_names_the_folder(run, tmp_path, monkeypatch, capsys):
    before = (run / "checkpoints" / "last.pt").read_bytes()
    real = os.fdopen  # the run's .lock is written through it too, as text
    monkeypatch.setattr(checkpoint.os, "fdopen",
                        lambda fd, mode: FullDisk(fd, mode) if mode == "wb" else real(fd, mode))
    with pytest.raises(OSError) as err:
        atomic_save(load_checkpoint(run / "checkpoints" / "last.pt"),
                    run / "checkpoints" / "last.pt")
    assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(run / "checkpoints"))
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert not list((run / "checkpoints").glob(".*.tmp"))

    assert main(["train", str(run.parent / "tiny.json"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.rpartition("error: ")[2]  # after the progress bar
    assert err == (f"{tmp_path / 'run' / 'checkpoints'}: No space left on device (the disk "
                   "is full: free space or give another --out)\n")
