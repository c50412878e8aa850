"""Static explorations of trained models: fixed grids that a headless run keeps.

Headless runs (papermill, Kaggle's "Save & Run All", the report) have no front
end to move a slider, so each notebook's exploration section falls back to
these grids, which the executed notebook keeps.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from lib import viz


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latent batches a, b (B, D) at fractions t (T,) -> (B, T, D).

    Gaussian latents live near a sphere; a straight line between two of them
    passes through unlikely low-norm points, slerp stays on the shell.
    """
    a_n, b_n = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(1).clamp(-1 + 1e-6, 1 - 1e-6))[:, None, None]  # (B,1,1)
    t = t[None, :, None]  # (1, T, 1)
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a[:, None] + (torch.sin(t * omega) / so) * b[:, None]


@torch.inference_mode()
def latent_traversal(generator: nn.Module, rows: int = 6, steps: int = 8,
                     seed: int = 0) -> Image.Image:
    """Each row walks (slerp) from one random latent to another through the generator."""
    gen = torch.Generator().manual_seed(seed)
    dim = generator.latent_dim
    a, b = torch.randn(rows, dim, generator=gen), torch.randn(rows, dim, generator=gen)
    z = slerp(a, b, torch.linspace(0, 1, steps)).reshape(rows * steps, dim)  # (R*T, D)
    device = next(generator.parameters()).device
    images = generator.eval()(z.to(device)).float()  # (R*T, C, H, W)
    grid = viz.make_grid(images, nrow=steps)
    return viz.with_caption(viz.to_pil(grid), "latent traversal: each row, left -> right",
                            min_width=64 * steps)


def _row_names(class_names: list[str] | None, num_classes: int) -> list[str]:
    return list(class_names) if class_names else [str(k) for k in range(num_classes)]


@torch.inference_mode()
def cvae_class_grid(cvae: nn.Module, class_names: list[str] | None = None, per_class: int = 8,
                    seed: int = 0) -> Image.Image:
    """One row per class, one latent per column: a column keeps its style across classes.

    A CVAE that separated "what" (the label) from "how" (z) draws every digit of a
    column with the same slant and stroke.
    """
    gen = torch.Generator().manual_seed(seed)
    k = cvae.num_classes
    z = torch.randn(per_class, cvae.latent_dim, generator=gen).repeat(k, 1)  # (K*P, D)
    labels = torch.arange(k).repeat_interleave(per_class)  # (K*P,)
    images = cvae.eval().sample(labels, z=z)  # (K*P, C, H, W)
    return viz.label_rows(viz.make_grid(images, nrow=per_class), _row_names(class_names, k))


@torch.inference_mode()
def ddpm_class_grid(ddpm: nn.Module, class_names: list[str] | None = None, per_class: int = 4,
                    steps: int | None = None, seed: int = 0) -> Image.Image:
    """Samples from the same starting noise per column; one row per class when conditional."""
    gen = torch.Generator().manual_seed(seed)
    k = max(1, ddpm.num_classes)
    shape = (per_class, ddpm.n_channels, ddpm.image_size, ddpm.image_size)
    noise = torch.randn(shape, generator=gen).repeat(k, 1, 1, 1)  # (K*P, C, H, W)
    labels = torch.arange(k).repeat_interleave(per_class) if ddpm.num_classes else None
    images = ddpm.eval().sample(len(noise), labels=labels, steps=steps, noise=noise,
                                generator=gen)
    grid = viz.make_grid(images, nrow=per_class)
    if not ddpm.num_classes:
        return viz.to_pil(grid)
    return viz.label_rows(grid, _row_names(class_names, k))


@torch.inference_mode()
def denoising_steps(ddpm: nn.Module, n: int = 4, frames: int = 8, steps: int | None = None,
                    seed: int = 0) -> Image.Image:
    """Each row is one sample from pure noise (left) to image (right), at `frames` times."""
    gen = torch.Generator().manual_seed(seed)
    _, trajectory = ddpm.eval().sample(n, steps=steps, generator=gen, return_trajectory=True)
    picks = torch.linspace(0, len(trajectory) - 1, frames).round().long()  # (F,)
    chosen = trajectory[picks].transpose(0, 1).reshape(-1, *trajectory.shape[2:])  # (n*F, C, H, W)
    grid = viz.make_grid(chosen, nrow=frames)
    return viz.with_caption(viz.to_pil(grid), "noise -> image, left to right",
                            min_width=64 * frames)
