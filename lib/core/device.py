"""Where and how fast training runs, decided in one place.

Model code stays plain PyTorch; this module picks the device, the autocast
dtype (bf16 where the hardware gains from it, fp16 + a grad scaler on GPUs
without bf16, fp32 on CPUs, where bf16 without AMX is slower), memory format
and compilation, and wraps models for DistributedDataParallel under torchrun.

Under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) each process
joins one process group - NCCL when it trains on a GPU, gloo on CPUs - and the
Engine carries the few collective operations the training loop needs. A
one-process torchrun joins one too, so a single GPU runs the same NCCL path as two.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lib.config import TrainerConfig
from lib.core import usable_cores
from lib.data import to_float


class DeviceError(RuntimeError):
    """The requested device cannot run this PyTorch build; the message names the fix."""


def check_cuda_arch(device: torch.device) -> None:
    """Stop early when the installed torch has no kernels for this GPU (Kaggle's P100)."""
    if device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    arch = f"sm_{major}{minor}"
    built = torch.cuda.get_arch_list()
    ok = any(_runs_on(a, major, minor) for a in built)
    if not ok:
        name = torch.cuda.get_device_name(device)
        raise DeviceError(
            f"{name} ({arch}) is not supported by this PyTorch build (torch {torch.__version__}, "
            f"compiled for {' '.join(built)}). On Kaggle choose the 'GPU T4 x2' accelerator, or "
            f"install a torch build that still ships {arch} kernels (e.g. a CUDA 11.8/12.1 wheel "
            "of torch 2.x: pip install torch --index-url https://download.pytorch.org/whl/cu121)."
        )


def _runs_on(built: str, major: int, minor: int) -> bool:
    """Whether code built for `built` (sm_86, compute_90, sm_90a...) runs on a major.minor GPU.

    Binary kernels (sm_XY) run on the same major version with minor >= Y (sm_80 code
    on an sm_86 A10); PTX (compute_XY) is compiled on the fly for any newer GPU.
    """
    kind, _, version = built.partition("_")
    digits = "".join(c for c in version if c.isdigit())
    if kind not in ("sm", "compute") or len(digits) < 2:
        return False
    b_major, b_minor = int(digits[:-1]), int(digits[-1])
    if kind == "compute":
        return (b_major, b_minor) <= (major, minor)
    return b_major == major and b_minor <= minor


def pick_device(name: str) -> torch.device:
    """"auto" and a bare "cuda" mean this process's GPU: cuda:LOCAL_RANK under torchrun."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "auto":
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"trainer.device={name!r} but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return device


BF16_MIN_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores; before it bf16 is emulated


def pick_amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for trainer.precision; None means plain fp32.

    "auto": bf16 on GPUs of compute capability >= 8.0 (A100, L4, H100: native bf16,
    no grad scaler needed), fp16 + GradScaler below (P100, V100, T4: fp16 tensor
    cores or fast fp16, bf16 only emulated - `torch.cuda.is_bf16_supported()` says
    True on a T4 all the same), fp32 on CPUs (bf16 without AMX measured slower).
    """
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if device.type != "cuda":
        return torch.bfloat16 if precision == "bf16" else None
    capability = torch.cuda.get_device_capability(device)
    native_bf16 = capability >= BF16_MIN_CAPABILITY
    if precision == "bf16" and not native_bf16:
        warnings.warn(
            f"trainer.precision='bf16' on {torch.cuda.get_device_name(device)} (compute "
            f"capability {capability[0]}.{capability[1]} < 8.0): bf16 is emulated there and "
            "slow; precision='auto' picks fp16 with a grad scaler", stacklevel=2)
    return torch.bfloat16 if native_bf16 or precision == "bf16" else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Engine:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool = True
    compile: bool = False
    # torch.compile's mode: "reduce-overhead" replays CUDA graphs (one launch per graph
    # instead of one per kernel: what a small model at batch 128 on a fast GPU is bound by)
    compile_mode: str = "default"
    compile_backend: str = "inductor"  # "eager": trace only, for quick checks on a CPU
    rank: int = 0
    world_size: int = 1
    in_group: bool = False  # joined a torch.distributed process group (torchrun)
    sync_batchnorm: bool = False
    owns_process_group: bool = False  # setup_engine started it, close() ends it
    scalers: dict[str, torch.amp.GradScaler] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.in_group

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def prepare(self, net: nn.Module) -> nn.Module:
        """Move a freshly built model to the device in the chosen memory format."""
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if self.compile:
            # a mode is an inductor setting; other backends take none
            mode = self.compile_mode if self.compile_backend == "inductor" else None
            net = torch.compile(net, mode=mode, backend=self.compile_backend)
        return net

    def wrap(self, net: nn.Module) -> nn.Module:
        """Under torchrun: SyncBatchNorm where asked, then DistributedDataParallel.

        DDP broadcasts rank 0's weights at construction and averages gradients over
        the ranks in backward. A net with nothing to train, or a single process, is
        returned as is.
        """
        if not self.distributed or not any(p.requires_grad for p in net.parameters()):
            return net
        if self.sync_batchnorm:
            if self.device.type != "cuda":
                raise DeviceError(
                    "trainer.sync_batchnorm=true needs GPUs: PyTorch's SyncBatchNorm has no "
                    "CPU kernel; set trainer.sync_batchnorm=false for CPU (gloo) runs")
            # the converted layers keep the same Parameter objects: optimizers stay valid
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=device_ids)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) on the device -> [-1, 1] floats in the training layout."""
        x = to_float(images.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def backward_step(self, name: str, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      clip: float = 0.0) -> None:
        """backward -> (unscale, clip) -> step -> zero_grad, with a grad scaler for fp16."""
        scaler = self.scalers.get(name)
        if scaler is None:
            scaler = self.scalers[name] = torch.amp.GradScaler(
                self.device.type, enabled=self.amp_dtype == torch.float16)
        scaler.scale(loss).backward()
        if clip > 0:
            scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    # Collectives: each is a no-op in a single process, and under DDP every rank must
    # call it at the same point of the loop.

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision for everyone (e.g. stop for the time budget at the same step)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def broadcast_object(self, obj):
        """Rank 0's picklable value on every rank (e.g. the run folder's name)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj) -> list:
        """Every rank's picklable value, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Logged numbers averaged over the ranks, so history describes the global batch."""
        if not self.distributed or not values:
            return values
        t = torch.tensor([float(v) for v in values.values()], device=self.device)
        dist.all_reduce(t)  # SUM: gloo has no AVG
        return dict(zip(values, (t / self.world_size).tolist(), strict=True))

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. writes a dataset cache), then the others."""
        if self.distributed and not self.is_main:
            dist.barrier()
        yield
        if self.distributed and self.is_main:
            dist.barrier()

    def close(self) -> None:
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_process_group = False


def launched_distributed() -> bool:
    """Started by torchrun (or another launcher of the env:// rendezvous), even as one process."""
    return int(os.environ.get("WORLD_SIZE", 1)) > 1 or (
        "RANK" in os.environ and "MASTER_ADDR" in os.environ)


def init_distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world_size, started) from torchrun's environment; joins the process group.

    A one-process torchrun joins a group of one: DDP and the collectives then run
    (trivially) the code a multi-GPU run runs, which a machine with one GPU can test.
    """
    if not launched_distributed():
        return 0, 1, False
    started = not dist.is_initialized()
    if started:
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), started


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Process-wide kernel choices: reproducible kernels, or on GPUs cuDNN autotuning + TF32."""
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


TORCH_THREADS = torch.get_num_threads()  # torch's default: one per physical core


def others_running() -> int:
    """Threads of other processes running right now (the least of three looks at Linux's run
    queue, so a passing blip does not count); 0 where the system does not say."""
    counts = []
    for _ in range(3):
        try:
            fields = Path("/proc/loadavg").read_text().split()
            counts.append(int(fields[3].split("/")[0]) - 1)  # less this thread
        except (OSError, ValueError, IndexError):
            return 0
        time.sleep(0.01)
    return max(0, min(counts))


def choose_threads() -> None:
    """Intra-op threads: the cores this process may use, less those other processes hold.

    The threads of one op wait for each other, and a thread whose core another process holds
    stalls them all: beside two busy processes on 2 cores a DCGAN step ran 7x slower on two
    threads than on one. An OMP_NUM_THREADS in the environment (torchrun's share, the user's)
    is a decision already made and is kept.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores, others = usable_cores(), others_running()
    threads = max(1, min(TORCH_THREADS, cores - others))
    torch.set_num_threads(threads)
    if threads != TORCH_THREADS:
        print(f"torch threads: {threads} instead of {TORCH_THREADS} ({others} other processes "
              f"running on {cores} cores)")


def setup_engine(cfg: TrainerConfig) -> Engine:
    device = pick_device(cfg.device)
    if device.type == "cpu":
        choose_threads()
    check_cuda_arch(device)
    rank, world_size, started = init_distributed(device)
    configure_backends(device, cfg.deterministic)
    return Engine(device=device, amp_dtype=pick_amp_dtype(cfg.precision, device),
                  channels_last=cfg.channels_last, compile=cfg.compile,
                  rank=rank, world_size=world_size,
                  in_group=dist.is_initialized(), sync_batchnorm=cfg.sync_batchnorm,
                  owns_process_group=started)


def make_optimizer(params, lr: float, betas, weight_decay: float, device: torch.device,
                   fused: bool | None = None) -> torch.optim.Adam:
    """Adam with the fused kernel on GPUs (a few launches for all parameters, and under fp16
    the grad scaler's inf check stays on the device); multi-tensor (foreach) otherwise.

    `fused` None: fused on CUDA. The fused and foreach kernels compute the same update.
    """
    fused = device.type == "cuda" if fused is None else fused
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                            fused=fused or None, foreach=None if fused else True)
