"""Where and how fast training runs, decided in one place.

Model code stays plain PyTorch; this module picks the device, the autocast
dtype (bf16 where the hardware gains from it, fp16 + a grad scaler on GPUs
without bf16, fp32 on CPUs, where bf16 without AMX is slower), memory format
and compilation, and wraps models for DistributedDataParallel under torchrun.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lib.config import TrainerConfig
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
    # a build runs on its own archs, and on newer GPUs through PTX (compute_XY)
    ok = arch in built or any(
        a.startswith("compute_") and int(a.split("_")[1]) <= major * 10 + minor for a in built)
    if not ok:
        name = torch.cuda.get_device_name(device)
        raise DeviceError(
            f"{name} ({arch}) is not supported by this PyTorch build (torch {torch.__version__}, "
            f"compiled for {' '.join(built)}). On Kaggle choose the 'GPU T4 x2' accelerator, or "
            f"install a torch build that still ships {arch} kernels (e.g. a CUDA 11.8/12.1 wheel "
            "of torch 2.x: pip install torch --index-url https://download.pytorch.org/whl/cu121)."
        )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"trainer.device={name!r} but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return device


def pick_amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":  # auto
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None  # auto on CPU: measured slower in bf16 without AMX


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
    rank: int = 0
    world_size: int = 1
    scalers: dict[str, torch.amp.GradScaler] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

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
            net = torch.compile(net)
        return net

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


def setup_engine(cfg: TrainerConfig) -> Engine:
    device = pick_device(cfg.device)
    check_cuda_arch(device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Engine(device=device, amp_dtype=pick_amp_dtype(cfg.precision, device),
                  channels_last=cfg.channels_last, compile=cfg.compile)


def make_optimizer(params, lr: float, betas, weight_decay: float,
                   device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel on GPUs (one launch for all parameters)."""
    fused = device.type == "cuda"
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                            fused=fused or None, foreach=None if fused else True)
