"""DiffAugment: differentiable augmentation of what the discriminator sees.

Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN
Training": on a small dataset D memorises the real images and its feedback to
G collapses. Augmenting the real AND the fake batch with the same kind of
random transform (each image its own parameters), in every D and G pass, makes
memorising harder while G still learns the un-augmented distribution, because
the transforms are differentiable and G's gradient flows back through them.

The three policies are the paper's, with its constants, on images in [-1, 1]:
  color        brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5)
  translation  shift by up to 1/8 of the size in each direction, zeros shifted in
  cutout       a square of half the size (centre anywhere) set to zero
No clamping afterwards (as the paper's code): colour may leave [-1, 1] a little,
real and fake alike, and a clamp would cut G's gradient where it bites.

Random draws come from `generator` (or torch's global RNG when None): a seeded
generator, saved with the run, makes a run reproducible and resumable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENT_POLICIES = ("color", "translation", "cutout")


# ---------------------------------------------------------------------------
# random parameters, one per image


def _rand(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) per image, (B, 1, 1, 1), drawn on the generator's device and moved to x's."""
    where = generator.device if generator is not None else x.device
    u = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=where)
    return u.to(device=x.device, dtype=x.dtype)


def _randint(low: int, high: int, x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    """An integer in [low, high) per image, (B, 1)."""
    where = generator.device if generator is not None else x.device
    return torch.randint(low, high, (x.shape[0], 1), generator=generator,
                         device=where).to(x.device)


# ---------------------------------------------------------------------------
# the transforms: (B, C, H, W) -> (B, C, H, W)


def brightness(x: torch.Tensor, generator=None) -> torch.Tensor:
    return x + (_rand(x, generator) - 0.5)


def saturation(x: torch.Tensor, generator=None) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)  # the grey of each pixel: a 1-channel image is unchanged
    return (x - mean) * (_rand(x, generator) * 2) + mean


def contrast(x: torch.Tensor, generator=None) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, generator) + 0.5) + mean


def translation(x: torch.Tensor, generator=None, ratio: float = 0.125) -> torch.Tensor:
    """Output pixel (i, j) is input pixel (i + dy, j + dx), zero where that falls outside."""
    b, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = _randint(-max_dy, max_dy + 1, x, generator)  # (B, 1)
    dx = _randint(-max_dx, max_dx + 1, x, generator)
    # Index a 1-pixel zero border: every source outside the image reads a zero from it.
    rows = (torch.arange(h, device=x.device) + dy + 1).clamp(0, h + 1)  # (B, H)
    cols = (torch.arange(w, device=x.device) + dx + 1).clamp(0, w + 1)  # (B, W)
    padded = F.pad(x, [1, 1, 1, 1])  # (B, C, H + 2, W + 2)
    batch = torch.arange(b, device=x.device)[:, None, None]
    shifted = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return shifted.permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, generator=None, ratio: float = 0.5) -> torch.Tensor:
    """Zero a (ratio H) x (ratio W) rectangle whose centre is anywhere in the image."""
    _, _, h, w = x.shape
    size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # The paper's offsets: centres over the whole image, the rectangle clipped at its edges.
    top = _randint(0, h + (1 - size_h % 2), x, generator) - size_h // 2  # (B, 1)
    left = _randint(0, w + (1 - size_w % 2), x, generator) - size_w // 2
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + size_h)  # (B, H)
    in_cols = (cols >= left) & (cols < left + size_w)  # (B, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (B, H, W)
    return x * keep[:, None].to(x.dtype)


POLICY_TRANSFORMS = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(policy: str) -> list[str]:
    """"color,translation" -> ["color", "translation"]; "" -> [] (no augmentation)."""
    names = [name.strip() for name in policy.split(",") if name.strip()]
    unknown = [name for name in names if name not in POLICY_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown[0]!r} in {policy!r}; use a "
                         f"comma-separated subset of {list(AUGMENT_POLICIES)}, or '' for none")
    return names


def diff_augment(x: torch.Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """x (B, C, H, W) -> the same shape, each image transformed with its own random draw.

    Call it with the same policy on the real and on the fake batch, before every
    pass through D (its own update and G's): the paper's recipe.
    """
    for name in parse_policy(policy):
        for transform in POLICY_TRANSFORMS[name]:
            x = transform(x, generator)
    return x
