"""lib.core.device on a CPU: the precision picked for each GPU generation (faked), the fused
optimizer, compile settings and the one-process torchrun group."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lib.core.checkpoint import load_checkpoint
from lib.core.device import Engine, launched_distributed, make_optimizer, pick_amp_dtype
from lib.models.dcgan import Discriminator

REPO = Path(__file__).resolve().parent.parent
CUDA = torch.device("cuda", 0)

# (compute capability, the GPU Kaggle / clouds rent with it, what "auto" must pick)
GPUS = [((6, 0), "Tesla P100-PCIE-16GB", torch.float16),
        ((7, 0), "Tesla V100-SXM2-16GB", torch.float16),
        ((7, 5), "Tesla T4", torch.float16),
        ((8, 0), "NVIDIA A100-SXM4-40GB", torch.bfloat16),
        ((8, 9), "NVIDIA L4", torch.bfloat16),
        ((9, 0), "NVIDIA H100 80GB HBM3", torch.bfloat16)]


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make torch.cuda describe a GPU of the given capability; bf16 'supported' as torch
    reports it on a T4 (emulated)."""
    def install(capability, name):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return install


@pytest.mark.parametrize(("capability", "name", "expected"), GPUS, ids=[g[1] for g in GPUS])
def test_auto_precision_is_fp16_below_ampere_and_bf16_from_it(fake_gpu, capability, name,
                                                              expected):
    fake_gpu(capability, name)
    dtype = pick_amp_dtype("auto", CUDA)
    assert dtype == expected
    engine = Engine(CUDA, dtype)
    assert engine.precision == ("fp16" if capability < (8, 0) else "bf16")


def test_bf16_asked_for_on_a_t4_warns_that_it_is_emulated(fake_gpu):
    fake_gpu((7, 5), "Tesla T4")
    with pytest.warns(UserWarning, match="emulated.*precision='auto' picks fp16"):
        assert pick_amp_dtype("bf16", CUDA) == torch.bfloat16


def test_explicit_precisions_and_cpu_auto():
    cpu = torch.device("cpu")
    assert pick_amp_dtype("auto", cpu) is None  # bf16 measured slower on CPUs without AMX
    assert pick_amp_dtype("bf16", cpu) == torch.bfloat16
    assert pick_amp_dtype("fp16", cpu) == torch.float16
    assert pick_amp_dtype("fp32", CUDA) is None  # never asks the (absent) GPU


def test_make_optimizer_is_fused_only_on_cuda_and_fused_matches_foreach():
    """The fused kernel is the default on CUDA; its update equals the foreach one. On a CPU
    the fused kernel exists too, which lets this machine check the equivalence."""
    torch.manual_seed(0)
    net = Discriminator(n_channels=1, hidden_dim=8, image_size=16)
    twin = copy.deepcopy(net)
    cpu = torch.device("cpu")
    foreach = make_optimizer(net.parameters(), 2e-4, [0.5, 0.999], 0.0, cpu)
    assert not foreach.defaults["fused"] and foreach.defaults["foreach"]
    fused = make_optimizer(twin.parameters(), 2e-4, [0.5, 0.999], 0.0, cpu, fused=True)
    assert fused.defaults["fused"]
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        for model, opt in ((net, foreach), (twin, fused)):
            F.softplus(-model(x)).mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        # the same fp32 formula; only the order of a few float operations differs
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_compile_mode_reaches_torch_compile(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: calls.append(kw) or net)
    Engine(torch.device("cpu"), None, compile=True, compile_mode="reduce-overhead").prepare(
        torch.nn.Linear(2, 2))
    Engine(torch.device("cpu"), None, compile=True, compile_mode="reduce-overhead",
           compile_backend="eager").prepare(torch.nn.Linear(2, 2))
    assert calls == [{"mode": "reduce-overhead", "backend": "inductor"},
                     {"mode": None, "backend": "eager"}]  # a mode is inductor's alone


def test_launched_distributed_reads_torchruns_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_distributed()  # a plain `python -m lib train`
    monkeypatch.setenv("RANK", "0")
    assert not launched_distributed()  # a stray RANK is no rendezvous
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launched_distributed()  # torchrun --nproc_per_node=1


def test_one_process_torchrun_joins_a_process_group(tmp_path):
    """torchrun with one process takes the multi-GPU code path (DDP, collectives), so one
    GPU can test it; here over gloo on the CPU. Only a joined run gathers per-rank RNG."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), WANDB_MODE="disabled")
    overrides = [f"data.root={tmp_path / 'data'}", "trainer.epochs=1",
                 "trainer.iterations_per_epoch=2", "trainer.log_every_step=2",
                 "trainer.batch_size=8", "trainer.eval_samples=0", "name=one"]
    ran = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
         "-m", "lib", "train", str(REPO / "configs/dcgan_demo.json"),
         *[a for o in overrides for a in ("--set", o)], "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=180)
    assert ran.returncode == 0, ran.stderr[-3000:]
    run = tmp_path / "one"
    assert len(load_checkpoint(run / "checkpoints" / "last.pt")["rank_rng"]) == 1
    assert json.loads((run / "summary.json").read_text())["world_size"] == 1
