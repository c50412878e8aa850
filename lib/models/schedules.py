"""Noise schedules and the small helpers the diffusion maths shares (lucidrains' layout)."""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")


def exists(x) -> bool:
    return x is not None


def default(x, d):
    return x if exists(x) else d


# ---------------------------------------------------------------------------
# Noise schedules (float64: the products over 1000 steps lose digits in float32)


def linear_beta_schedule(timesteps: int) -> torch.Tensor:
    """Ho et al.'s 1e-4 -> 0.02, rescaled so that shorter chains still end near pure noise."""
    scale = 1000 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    return betas.clamp(max=0.999)  # below ~50 steps the rescaled betas would pass 1


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """alpha_bar(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), normalised to alpha_bar(0) = 1."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return betas.clamp(0, 0.999)  # the paper's clip: the last steps would otherwise reach beta = 1


def beta_schedule(name: str, timesteps: int) -> torch.Tensor:
    if name == "linear":
        return linear_beta_schedule(timesteps)
    if name == "cosine":
        return cosine_beta_schedule(timesteps)
    raise ValueError(f"unknown noise schedule {name!r}; choose one of {list(SCHEDULES)}")


def extract(a: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """a[t] per batch element, shaped to broadcast over images: (B,) -> (B, 1, 1, 1)."""
    return a.gather(-1, t).reshape(t.shape[0], *((1,) * (ndim - 1)))
