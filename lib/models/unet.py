"""The UNet that DDPM trains: timestep (and class) embeddings, residual blocks, attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lib.models.schedules import exists

# ---------------------------------------------------------------------------
# The UNet


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)  # 8 groups where the width allows


class SinusoidalPosEmb(nn.Module):
    """Transformer position encoding of the timestep index: (B,) -> (B, dim)."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        self.dim, self.theta = dim, theta

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(self.theta) * torch.arange(half, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]  # (B, half)
        return torch.cat([args.sin(), args.cos()], dim=-1)  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time (+ class) embedding added in between."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (Ho et al.'s init)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a (small) feature map."""

    def __init__(self, channels: int):
        super().__init__()
        self.heads = channels // 32 if channels % 32 == 0 else 1
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C / heads)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C / heads)
        y = y.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.out(y)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, H, W) -> (B, C, H/2, W/2)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class UNet(nn.Module):
    """eps_theta(x_t, t, y): residual levels down, attention at the bottom, levels up with skips.

    Each level has `num_res_blocks` blocks at width base * mult; every level but
    the last halves the resolution. `num_classes` > 0 adds a class embedding
    (plus one "null" class for classifier-free guidance) to the time embedding.
    """

    def __init__(self, n_channels: int, base_channels: int, channel_mults: list[int],
                 num_res_blocks: int, num_classes: int, dropout: float):
        super().__init__()
        emb_dim = base_channels * 4
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(base_channels),
            nn.Linear(base_channels, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.init_conv = nn.Conv2d(n_channels, base_channels, 3, padding=1)

        widths = [base_channels * m for m in channel_mults]
        self.down_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
        skip_widths, ch = [], base_channels
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, width, emb_dim, dropout))
                ch = width
                skip_widths.append(ch)
            self.down_blocks.append(blocks)
            last = level == len(widths) - 1
            self.downsamples.append(nn.Identity() if last else Downsample(ch))

        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = Attention(ch)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)

        self.up_blocks, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch + skip_widths.pop(), width, emb_dim, dropout))
                ch = width
            self.up_blocks.append(blocks)
            self.upsamples.append(nn.Identity() if level == 0 else Upsample(ch))

        self.out_norm = group_norm(ch)
        self.out_conv = nn.Conv2d(ch, n_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None):
        emb = self.time_mlp(t)  # (B, 4 * base)
        if exists(self.class_emb):
            emb = emb + self.class_emb(labels)
        h = self.init_conv(x)  # (B, base, H, W)
        skips = []
        for blocks, down in zip(self.down_blocks, self.downsamples, strict=True):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)  # lowest resolution
        for blocks, up in zip(self.up_blocks, self.upsamples, strict=True):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            h = up(h)
        return self.out_conv(F.silu(self.out_norm(h)))  # (B, C, H, W)
