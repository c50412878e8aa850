"""On a CUDA GPU: mixed precision, fused Adam, torch.compile / CUDA graphs, resident data,
exact resume, NCCL under torchrun and SyncBatchNorm on two GPUs.

Every test is marked `gpu` and skipped, with the reason, where no CUDA device is visible;
`pytest -m gpu` (or benchmarks/gpu_check.sh) runs them on a GPU machine. Training goes
through the public API (`train`, `resume`), imported inside the tests so that collecting
this file never needs more than torch.
"""

import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lib.config import load_config
from lib.core.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
PRESETS = {"dcgan": "configs/dcgan_demo.json", "cvae": "configs/cvae_demo.json",
           "ddpm": "configs/ddpm_demo.json"}

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU; none is visible (torch.cuda.is_available() "
                              "is False)"),
]

# deterministic cuBLAS needs its workspace fixed before the first matmul of the process
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def training_api():
    from lib.training.loop import resume, train

    return train, resume


@pytest.fixture(autouse=True)
def restore_kernel_switches():
    """trainer.deterministic switches process-wide flags: put them back after each test."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = benchmark


def config(family: str, tmp_path: Path, *overrides: str, steps: int = 4):
    return load_config(REPO / PRESETS[family], [
        f"data.root={tmp_path / 'data'}", "trainer.epochs=1",
        f"trainer.iterations_per_epoch={steps}", "trainer.log_every_step=1",
        "trainer.batch_size=32", "trainer.eval_samples=0", "trainer.device=cuda",
        "wandb.mode=disabled", *overrides])


def losses(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("loss")} for r in records
            if "event" not in r]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("family", list(PRESETS))
def test_mixed_precision_keeps_fp32_master_weights_and_finite_losses(tmp_path, family,
                                                                      precision):
    train, _ = training_api()
    run = train(config(family, tmp_path, f"trainer.precision={precision}"), tmp_path,
                progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == precision and summary["device"].startswith("cuda")
    history = losses(run)
    assert len(history) == 4 and all(math.isfinite(v) for r in history for v in r.values())
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    for net in ckpt["nets"].values():  # autocast computes in half; the weights stay fp32
        for name, value in net.items():
            if value.is_floating_point():
                assert value.dtype == torch.float32, name
                assert torch.isfinite(value).all(), name
    for opt in ckpt["optimizers"].values():
        assert opt["param_groups"][0]["fused"]  # fused Adam: the default on CUDA
        for state in opt["state"].values():
            assert state["exp_avg"].dtype == torch.float32
    if precision == "fp16":  # one grad scaler per optimizer, with a usable scale
        assert set(ckpt["scalers"]) == set(ckpt["optimizers"])
        for state in ckpt["scalers"].values():
            assert 1.0 <= state["scale"] <= 2.0**16
    else:  # bf16 has fp32's range: no scaling (a disabled scaler saves nothing)
        assert all(not state for state in ckpt["scalers"].values())


def test_fused_adam_matches_the_foreach_update_on_cuda():
    """The same gradients through fused and foreach Adam give the same weights: both compute
    the fp32 update of the same formula, differing only in the order of a few float
    operations (tolerance: rtol 1e-6, atol 1e-7 after 10 steps; weights are ~0.02)."""
    from lib.core.device import make_optimizer
    from lib.models.dcgan import Discriminator

    cuda = torch.device("cuda")
    torch.manual_seed(0)
    net = Discriminator(n_channels=3, hidden_dim=16, image_size=32).to(cuda)
    twin = copy.deepcopy(net)
    fused = make_optimizer(net.parameters(), 2e-4, [0.5, 0.999], 0.0, cuda)
    foreach = make_optimizer(twin.parameters(), 2e-4, [0.5, 0.999], 0.0, cuda, fused=False)
    assert fused.defaults["fused"] and not foreach.defaults["fused"]
    for _ in range(10):
        x = torch.randn(16, 3, 32, 32, device=cuda)
        F.softplus(-net(x)).mean().backward()
        for p, q in zip(net.parameters(), twin.parameters(), strict=True):
            q.grad = p.grad.clone()  # identical gradients: only the optimizers differ
        fused.step()
        foreach.step()
        fused.zero_grad()
        foreach.zero_grad()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


COMPILE_CHECK = ("trainer.precision=fp32", "trainer.deterministic=true")


@pytest.fixture(scope="module")
def eager_losses(tmp_path_factory):
    train, _ = training_api()
    tmp = tmp_path_factory.mktemp("eager")
    deterministic = torch.are_deterministic_algorithms_enabled()
    run = train(config("dcgan", tmp, *COMPILE_CHECK, "name=eager", steps=8), tmp,
                progress=False)
    torch.use_deterministic_algorithms(deterministic)
    return losses(run)


def test_compiled_training_matches_eager_on_cuda(tmp_path, eager_losses):
    """torch.compile (trainer.compile, its default mode) trains DCGAN to the eager losses:
    fp32 with deterministic kernels; fused kernels round differently, so within 1e-2 per
    logged loss over 8 steps (losses ~0.5-3; a wrong graph - BatchNorm statistics, the
    frozen D - is off by far more)."""
    from torch._dynamo.utils import counters

    train, _ = training_api()
    counters.clear()
    compiled = train(config("dcgan", tmp_path, *COMPILE_CHECK, "name=compiled",
                            "trainer.compile=true", steps=8),
                     tmp_path, progress=False)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did compile the nets
    for a, b in zip(eager_losses, losses(compiled), strict=True):
        for key in a:
            assert abs(a[key] - b[key]) <= 1e-2, (key, a[key], b[key])


def host_to_device_copies(run) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
    return sum(e.name.startswith("Memcpy HtoD") for e in prof.events())


def test_training_data_stays_on_the_gpu(tmp_path):
    """Doubling the steps adds no host-to-device copy: batches are drawn on the device from
    the resident dataset (and nothing else crosses per step). Both runs stay in one epoch."""
    train, _ = training_api()
    copies = {steps: host_to_device_copies(lambda s=steps: train(
        config("dcgan", tmp_path, f"name=steps{s}", steps=s), tmp_path, progress=False))
        for steps in (4, 8)}
    assert copies[8] == copies[4], (
        f"host-to-device copies in 4 and 8 steps: {copies}; a copy per step stalls the host "
        "(Batches must draw its indices on the device)")


@pytest.mark.parametrize("family", ["dcgan", "ddpm"])
def test_resume_on_cuda_is_exact(tmp_path, family):
    """4 + 4 steps with a resume between them give the weights of 8 steps in one go: the
    CUDA generator (DCGAN's noise, DDPM's timesteps and noise) is restored too."""
    train, resume = training_api()
    common = ("trainer.deterministic=true", "trainer.iterations_per_epoch=4")
    straight = train(config(family, tmp_path, *common, "trainer.epochs=2", "name=straight"),
                     tmp_path, progress=False)
    halves = train(config(family, tmp_path, *common, "name=halves"), tmp_path, progress=False)
    assert "cuda" in load_checkpoint(halves / "checkpoints" / "last.pt")["rng"]
    resume(halves, overrides=["trainer.epochs=2"], progress=False)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(halves / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 8
    for name, state in a["nets"].items():
        for key, value in state.items():
            assert torch.equal(value, b["nets"][name][key]), (name, key)
    assert losses(straight) == losses(halves)


def test_one_process_torchrun_trains_over_nccl(tmp_path):
    """A one-process torchrun joins an NCCL group: DDP, the collectives and the per-rank RNG
    gather run as on several GPUs."""
    from lib.training.distributed import launch

    cfg = config("dcgan", tmp_path, "name=nccl1")
    run = launch(cfg, 1, out_root=tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == 1
    assert summary["device"].startswith("cuda")
    rank_rng = load_checkpoint(run / "checkpoints" / "last.pt")["rank_rng"]
    assert len(rank_rng) == 1 and "cuda" in rank_rng[0]  # gathered over NCCL


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm needs two GPUs")
def test_two_gpus_train_with_sync_batchnorm(tmp_path):
    """DDP over NCCL with synchronised BatchNorm; the saved weights are plain BatchNorm ones
    (a single-GPU run or the evaluation rebuilds them). The step-level equality with one
    process on the whole batch is tests/test_distributed.py's SyncBatchNorm test."""
    from lib.models.dcgan import Discriminator
    from lib.training.distributed import launch

    cfg = config("dcgan", tmp_path, "name=syncbn", "trainer.sync_batchnorm=true")
    run = launch(cfg, 2, out_root=tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == 2
    history = losses(run)
    assert all(math.isfinite(v) for r in history for v in r.values())
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    plain = Discriminator(**ckpt["models"]["discriminator"]["args"])
    plain.load_state_dict(ckpt["nets"]["discriminator"])  # strict: the same keys
    assert any(k.endswith("running_mean") for k in ckpt["nets"]["discriminator"])
