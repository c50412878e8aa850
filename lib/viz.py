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


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _series(history: list[dict], key: str) -> np.ndarray:
    """(step, value) rows of the records that carry a number under `key`."""
    rows = [(r["step"], r[key]) for r in history if _is_number(r.get(key))]
    return np.array(rows, dtype=float).reshape(-1, 2)


def _curve(ax, history: list[dict], key: str, label: str, band: tuple[str, str] | str = ()):
    """One curve; `band` names its (low, high) keys or its std key, where records carry them."""
    pts = _series(history, key)
    if not pts.size:
        return
    ax.plot(pts[:, 0], pts[:, 1], marker="." if len(pts) < 30 else None, label=label)
    rows = []
    for r in history:
        if isinstance(band, str) and _is_number(r.get(band)) and _is_number(r.get(key)):
            rows.append((r["step"], r[key] - r[band], r[key] + r[band]))
        elif isinstance(band, tuple) and band and all(_is_number(r.get(k)) for k in band):
            rows.append((r["step"], r[band[0]], r[band[1]]))
    if rows:
        steps, low, high = np.array(rows, dtype=float).T
        ax.fill_between(steps, low, high, alpha=0.25)


def plot_metrics(history: list[dict], path: str | Path) -> Path | None:
    """Evaluation curves of a run: FID (95% band), KID (+- std), diversity, SSIM, per-class FID.

    The title names the feature network and the sample counts: scores from
    different features or counts are not comparable. None when nothing was evaluated.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in history if _is_number(r.get("fid"))]
    if not evals:
        return None
    class_keys = sorted({k for r in evals for k in r if re.fullmatch(r"fid_class_\d+", k)},
                        key=lambda k: int(k.rsplit("_", 1)[1]))
    panels = {
        "FID": [("fid", "FID", ("fid_low", "fid_high")), ("fid_class_mean", "mean per class", ())],
        "KID": [("kid", "KID", "kid_std")],
        "diversity (generated / real)": [("diversity", "diversity", ())],
        "SSIM": [("ssim_nearest", "to nearest real", ()), ("ssim_recon", "reconstruction", ())],
        "FID per class": [(k, k.rsplit("_", 1)[1], ()) for k in class_keys],
    }
    panels = {title: curves for title, curves in panels.items()
              if any(_series(evals, key).size for key, _, _ in curves)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items(), strict=True):
        for key, label, band in curves:
            _curve(ax, evals, key, label, band)
        if title.startswith("diversity"):
            ax.axhline(1.0, color="gray", lw=0.8, ls=":")  # as diverse as the data
            ax.set_ylim(bottom=0)
        elif len(curves) > 1:
            ax.legend(fontsize=7, ncol=2 if len(curves) > 5 else 1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    last = evals[-1]
    fig.suptitle(f"{last.get('features', '?')} features, {last.get('image_size', '?')} px, "
                 f"{last.get('n_fake', '?')} generated vs {last.get('n_real', '?')} real")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
