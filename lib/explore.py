"""Static explorations of trained models: what the sliders show, as fixed pictures.

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
