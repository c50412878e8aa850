import fcntl
import json
import os

import pytest
import torch

from lib.runner import NOTEBOOKS, run_notebooks

# Tests never talk to wandb; tracking.py is tested on its mode decision alone.
os.environ["WANDB_MODE"] = "disabled"

# `make test` runs two pytest-xdist workers on a 2-core machine: one intra-op thread each,
# or four threads fight over two cores (small convolutions then spend their time waiting).
# In the environment too: training keeps it (lib.core.device) and subprocesses inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides that make any demo preset train in seconds into tmp_path."""
    return [f"data.root={tmp_path / 'data'}", "trainer.epochs=1",
            "trainer.iterations_per_epoch=4", "trainer.log_every_step=2",
            "trainer.batch_size=16", "trainer.eval_samples=0"]  # evaluation: test_metrics.py


@pytest.fixture(scope="module")
def one_thread():
    """Small convolutions: a second intra-op thread gains little and, on a busy 2-core box,
    costs up to 30x in synchronisation. Modules opt in with `pytestmark`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # so that training keeps it (lib.core.device)
        yield
    torch.set_num_threads(threads)


def smoke_params(tmp_path) -> list[str]:
    """Overrides that make every notebook run in seconds: tiny images, a few steps."""
    return [f"data_root={tmp_path / 'data'}", "image_size=16", "epochs=1",
            "iterations_per_epoch=4", "log_every_step=2", "batch_size=16",
            "wandb_mode=offline", "04_ddpm.sample_steps=2", "04_ddpm.explore_steps=2",
            "05_report.sampling_images=2"]


@pytest.fixture(scope="session")
def executed_suite(tmp_path_factory):
    """The suite run once through the runner with smoke parameters and wandb offline (what
    a student gets without a key): (names, out, notebooks run, echoed lines). The xdist
    workers share it: the first to ask runs it (its kernels use both cores), the other
    waits for the lock and reads the same folder."""
    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    root = (tmp_path_factory.getbasetemp().parent if shared else tmp_path_factory.mktemp("x"))
    tmp_path, names = root / "suite", list(NOTEBOOKS)
    out, record = tmp_path / "outputs", root / "suite.json"
    with open(root / "suite.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            lines = []
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("WANDB_MODE", "offline")
                results = run_notebooks(names, "demo", smoke_params(tmp_path), out,
                                        echo=lines.append)
            record.write_text(json.dumps({"ran": [r.notebook for r in results],
                                          "lines": lines}))
    done = json.loads(record.read_text())
    return names, out, done["ran"], done["lines"]
