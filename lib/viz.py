"""Pictures of runs: sample grids, labelled GIFs, metric curves.

Grids are uint8 (C, H, W) tensors so they can be written, compared and shown
without knowing the model that made them.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from lib.data import to_uint8


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """(N, C, H, W) uint8 or [-1, 1] floats -> one uint8 (3, H', W') grid, nrow images a row."""
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    images = images.cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    grid = torch.zeros(c, nrows * (h + padding) + padding, ncol * (w + padding) + padding,
                       dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def to_pil(grid: torch.Tensor) -> Image.Image:
    return Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy())


def save_png(grid: torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = to_pil(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path


def png_bytes(grid: torch.Tensor, scale: int = 1, compress_level: int = 6) -> bytes:
    """PNG file contents; compress_level 1 encodes noisy images several times faster."""
    img = to_pil(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _upscale(img: Image.Image, min_width: int) -> Image.Image:
    """Nearest-neighbour upscale so that tiny grids (8 px digits) stay legible."""
    scale = max(1, -(-min_width // img.width))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def with_caption(img: Image.Image, text: str, min_width: int = 256) -> Image.Image:
    """A caption bar above an image, e.g. 'step 1200'."""
    img = _upscale(img.convert("RGB"), min_width)
    bar = max(14, img.width // 24)
    out = Image.new("RGB", (img.width, img.height + bar + 4), "white")
    out.paste(img, (0, bar + 4))
    ImageDraw.Draw(out).text((4, 2), text, fill="black", font=_font(bar))
    return out


def label_rows(grid: torch.Tensor, labels: list[str], min_width: int = 256) -> Image.Image:
    """A grid with one text label left of each row (class names for class-conditional grids)."""
    img = _upscale(to_pil(grid), min_width)
    row_h = img.height / len(labels)
    size = max(10, min(int(row_h * 0.5), 18))
    font = _font(size)
    width = max(int(ImageDraw.Draw(img).textlength(s, font=font)) for s in labels) + 10
    out = Image.new("RGB", (img.width + width, img.height), "white")
    out.paste(img, (width, 0))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(labels):
        draw.text((4, int((i + 0.5) * row_h - size / 2)), text, fill="black", font=font)
    return out


def step_of(path: Path) -> int:
    match = re.search(r"(\d+)", path.stem)
    return int(match.group(1)) if match else -1


def save_gif(frames: list[Path], path: str | Path, captions: list[str] | None = None,
             duration_ms: int = 400, final_hold_ms: int = 1500) -> Path | None:
    """Frames (PNG files) in order -> an endlessly looping GIF; the last frame lingers."""
    if not frames:
        return None
    captions = captions or [f"step {step_of(f)}" for f in frames]
    images = [with_caption(Image.open(f), c) for f, c in zip(frames, captions, strict=True)]
    durations = [duration_ms] * (len(images) - 1) + [final_hold_ms]
    path = Path(path)
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


def snapshot_frames(samples_dir: Path, prefix: str = "step_") -> list[Path]:
    """Snapshot PNGs of one kind, ordered by step."""
    return sorted(Path(samples_dir).glob(f"{prefix}*.png"), key=step_of)


def plot_history(history: list[dict], keys: list[str], path: str | Path, title: str = "") -> Path:
    """One panel per key (those present in history), value against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(isinstance(r.get(k), int | float) for r in history)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4 * max(1, len(keys)), 3),
                             squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        pts = np.array([(r["step"], r[key]) for r in history
                        if isinstance(r.get(key), int | float)])
        ax.plot(pts[:, 0], pts[:, 1], marker="." if len(pts) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
