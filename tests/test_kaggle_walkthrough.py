"""docs/kaggle.md's walkthrough, executed: 02_dcgan in a fake Kaggle session, then resumed.

A temp folder plays `/kaggle`: `input/` holds a slice of the cat faces in the dataset's
layout and a local Inception weights file (a stand-in network in the real TorchScript
format), `working/` is the session's writable output. The notebook runs in its own
kernel, out of monkeypatch's reach, so the environment points it there:
GENLAB_KAGGLE_INPUT (the data and weights searches) and GENLAB_KAGGLE_WORKING (where the
outputs and the data cache go), beside Kaggle's own KAGGLE_KERNEL_RUN_TYPE=Batch.

The notebook gets only what the walkthrough tells a student to set: `preset`, the FID
weights (`inception_weights`, internet off), `max_minutes` and, in the next session,
`resume_from`. `max_minutes` is tiny so that the budget stops the 100,000-step preset
after its first step; `gpus` stays 1 (there is one CPU here, not a T4 x2). Nothing else
is overridden: the run keeps the preset's batch of 128 and its 500 evaluation samples.
What a budget this small cannot fit (the scores, part of the reference features) is
skipped or deferred with one printed line; tests/test_budget.py checks a budget that
trains. The second session finds the decoded cats in the attached run folder's cache/.
The one CPU-sizing setting is the kernel's OMP_NUM_THREADS=1: on a busy 2-core machine a
second thread makes LAPACK spin (GANSpace's eigh took 40 s instead of 1 s).
"""

import json
import os
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest
from inception_standin import STANDIN_DIM, save_torchscript
from PIL import Image
from test_notebooks import read_only

from lib.config import load_config
from lib.notebook import find_preset
from lib.runner import execute, notebooks_dir
from lib.training.tracking import read_history

CATS_SLUG = "cats-faces-64x64-for-generative-models"  # spandan2's dataset, as Kaggle mounts it
PRESET = "dcgan_train"
TINY_BUDGET = 0.01  # minutes: out of time after the first step


def fake_cats(folder: Path, count: int = 160) -> None:
    """`count` 64x64 RGB JPEGs named like the dataset's (`cats/1.jpg`, ...): smooth random
    blobs, so JPEG keeps them close to what was drawn. More than the preset's batch of 128:
    a smaller dataset is refused."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in range(1, count + 1):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        coarse.resize((64, 64), Image.BICUBIC).save(folder / f"{n}.jpg", quality=90)


def kaggle_session(monkeypatch, kaggle: Path, session: str) -> Path:
    """A fresh /kaggle/working for `session`; the inputs stay those under kaggle/input."""
    working = kaggle / session / "working"
    working.mkdir(parents=True)
    monkeypatch.setenv("GENLAB_KAGGLE_INPUT", str(kaggle / "input"))
    monkeypatch.setenv("GENLAB_KAGGLE_WORKING", str(working))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")  # Save & Run All
    monkeypatch.setenv("KAGGLE_URL_BASE", "https://www.kaggle.com")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # see the module's docstring
    return working


def run_dcgan(working: Path, **params) -> str:
    """Execute 02_dcgan into working/ with `params`; the text its cells printed."""
    executed = working / "02_dcgan.ipynb"
    execute("02_dcgan", "[kaggle]", notebooks_dir(), working, params, echo=lambda _: None)
    book = nbformat.read(executed, as_version=4)
    return "".join(o.get("text", "") for c in book.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.output_type == "stream")


@pytest.mark.slow  # two kernels, each a 64 px step at batch 128 and 500 images scored
def test_kaggle_walkthrough_trains_stops_and_resumes_in_the_next_session(tmp_path, monkeypatch):
    preset = load_config(find_preset(PRESET))
    kaggle = tmp_path / "kaggle"
    fake_cats(kaggle / "input" / CATS_SLUG / "cats")
    (kaggle / "input" / "inception-weights").mkdir()  # a dataset of the student's own
    weights = save_torchscript(kaggle / "input" / "inception-weights" / "inception-standin.pt")
    student = {"preset": PRESET, "inception_weights": str(weights), "max_minutes": TINY_BUDGET}

    # session 1: the preset alone, stopped by its time budget
    working = kaggle_session(monkeypatch, kaggle, "session1")
    printed = run_dcgan(working, **student)
    run = working / "outputs" / preset.name
    trainer = json.loads((run / "config.json").read_text())["trainer"]
    assert (trainer["epochs"], trainer["iterations_per_epoch"], trainer["batch_size"]) == (
        preset.trainer.epochs, preset.trainer.iterations_per_epoch, preset.trainer.batch_size)
    assert (preset.trainer.epochs, preset.trainer.iterations_per_epoch,
            preset.trainer.batch_size) == (100, 1000, 128)
    summary = json.loads((run / "summary.json").read_text())
    assert not summary["finished"] and 1 <= summary["step"] < 100_000
    assert_scored_or_said_why(run, summary["step"], printed)
    assert f"time budget of {TINY_BUDGET:g} min reached at step {summary['step']}/100000" in printed
    assert f"resume with: python -m lib train --resume {run}" in printed
    assert f'set resume_from="/kaggle/input/<notebook>/outputs/{preset.name}"' in printed
    assert list((working / "data" / "cache").iterdir())  # the decoded cats, cached in working/
    kept = sorted(p.name for p in (run / "cache").glob("cats_64px_*.pt"))
    assert len(kept) == 1 and list((run / "cache" / "metrics").glob("real_cats_*.pt"))

    # session 2: that version's output attached read-only, continued into a new working/
    attached = kaggle / "input" / "dcgan-notebook" / "outputs" / preset.name
    shutil.copytree(run, attached)
    read_only(attached)
    try:
        before = {p: p.read_bytes() for p in attached.rglob("*") if p.is_file()}
        working2 = kaggle_session(monkeypatch, kaggle, "session2")
        printed = run_dcgan(working2, **student, resume_from=str(attached.parent.parent))
        assert {p: p.read_bytes() for p in attached.rglob("*") if p.is_file()} == before
    finally:
        read_only(attached, on=False)
    resumed = working2 / "outputs" / preset.name
    assert f"copying {attached} to {resumed}" in printed
    steps = json.loads((resumed / "summary.json").read_text())["step"]
    assert steps > summary["step"]
    assert_scored_or_said_why(resumed, steps, printed)
    assert os.access(resumed / "config.json", os.W_OK)  # no history line at a tiny budget
    # the decoded cats came with the run: linked from its copy, never decoded again (that
    # would have written a new file in their place)
    assert os.path.samefile(resumed / "cache" / kept[0], working2 / "data" / "cache" / kept[0])


def assert_scored_or_said_why(run: Path, step: int, printed: str) -> None:
    """Scored at the budget stop `step`, or one printed line says why not this session."""
    scores = [r for r in read_history(run) if "fid" in r and r["step"] == step]
    if not scores:
        assert ("scores: none this session" in printed
                or "images this session; the rest next session" in printed), printed
        return
    assert isinstance(scores[-1]["fid"], float)
    assert scores[-1]["features"] == "inception" and scores[-1]["feature_dim"] == STANDIN_DIM
