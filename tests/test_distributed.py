"""DistributedDataParallel through torchrun: two gloo processes on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_step import one_step  # tests/ is on sys.path under pytest
from torch import nn

from lib.core.checkpoint import load_checkpoint
from lib.core.device import DeviceError, Engine
from lib.training.distributed import launch

REPO = Path(__file__).resolve().parent.parent
GAN_FILES = ["config.json", "history.jsonl", "checkpoints/last.pt", "evolution.gif",
             "final_grid.png", "samples/step_0000000.png", "summary.json"]


def tiny(tmp_path, steps: int) -> list[str]:
    return [f"data.root={tmp_path / 'data'}", "trainer.epochs=1",
            f"trainer.iterations_per_epoch={steps}", "trainer.log_every_step=2",
            "trainer.batch_size=16", "trainer.ema_decay=0.9", "wandb.mode=disabled",
            "trainer.eval_samples=64"]  # scored at the end, by rank 0


def torchrun(*args, timeout=120):
    # a script's own folder leads sys.path: name the repository for `import lib`
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def history(run: Path) -> list[dict]:
    """The logged steps; event records (e.g. a tiny run's collapse warnings) left out."""
    records = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return [r for r in records if "event" not in r]


def test_two_processes_train_one_run_and_resume_it(tmp_path):
    out = tmp_path / "out"
    run = launch("configs/dcgan_demo.json", 2, tiny(tmp_path, 4), out_root=out)
    assert [p.name for p in out.iterdir()] == [run.name]  # one folder, written by rank 0
    for name in GAN_FILES:
        assert (run / name).exists(), name
    assert [r["step"] for r in history(run)] == [2, 4]
    assert history(run)[-1]["images_seen"] == 4 * 16 * 2  # per-rank batch x ranks
    assert history(run)[-1]["n_fake"] == 64 and (run / "checkpoints" / "best.pt").exists()
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    perms = [state["sampler"]["perm"] for state in ckpt["rank_rng"]]
    assert len(perms) == 2 and not torch.equal(perms[0], perms[1])  # each rank its batches
    assert not torch.equal(ckpt["ema"]["generator"]["main.0.weight"],
                           ckpt["nets"]["generator"]["main.0.weight"])

    resumed = torchrun("-m", "lib", "train", "--resume", str(run), "--set", "trainer.epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines() == [str(run)]  # printed once, by rank 0
    assert [r["step"] for r in history(run)] == [2, 4, 6, 8]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == 2


def test_ddp_step_on_two_halves_equals_one_step_on_the_whole_batch(tmp_path):
    ran = torchrun("tests/ddp_step.py", str(tmp_path))
    assert ran.returncode == 0, ran.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    engine = Engine(torch.device("cpu"), None, channels_last=False)
    whole = one_step(engine)  # one process, batch B
    alone = one_step(engine, shards=2)  # one process, batch B/2: what DDP must not give
    for name, expected in whole.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # the ranks agree
        torch.testing.assert_close(ranks[0][name], expected, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(alone[k], whole[k], atol=1e-4) for k in whole)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm needs two GPUs")
def test_synced_batchnorm_step_equals_one_step_on_the_whole_batch(tmp_path):
    ran = torchrun("tests/ddp_step.py", str(tmp_path), "--batch-norm")
    assert ran.returncode == 0, ran.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt")
    whole = one_step(Engine(torch.device("cpu"), None, channels_last=False), batch_norm=True)
    for name, expected in whole.items():  # running statistics included
        torch.testing.assert_close(rank0[name].float(), expected.float(), rtol=1e-3, atol=1e-3)


def test_sync_batchnorm_on_cpu_says_what_to_change():
    engine = Engine(torch.device("cpu"), None, world_size=2, sync_batchnorm=True)
    with pytest.raises(DeviceError, match="trainer.sync_batchnorm=false"):
        engine.wrap(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))


def test_notebook_helper_trains_and_resumes_on_two_processes(tmp_path, capfd):
    """The training notebooks' `gpus` parameter: train_or_resume under torchrun, twice."""
    from lib.config import load_config
    from lib.notebook import train_or_resume

    overrides = [*tiny(tmp_path, 2), "trainer.eval_samples=0", "name=nb_ddp"]
    run = train_or_resume(load_config("configs/dcgan_demo.json", overrides), tmp_path, gpus=2)
    assert run == tmp_path / "nb_ddp" and [r["step"] for r in history(run)] == [2]
    assert "dcgan nb_ddp" in capfd.readouterr().out  # torchrun's progress, streamed to the cell
    more = load_config("configs/dcgan_demo.json", [*overrides, "trainer.epochs=2"])
    assert train_or_resume(more, tmp_path, gpus=2) == run  # continues in place
    assert [r["step"] for r in history(run)] == [2, 4]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 4 and summary["finished"]
