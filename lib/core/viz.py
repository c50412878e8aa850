"""Pictures of runs: sample grids, labelled GIFs, the metrics figure.

Grids are uint8 (C, H, W) tensors so they can be written, compared and shown
without knowing the model that made them. `metrics_figure` is the one drawing
of a run's curves: the notebooks, the report and the run folder's metrics.png
all show it.
"""

from __future__ import annotations

import io
import re
import textwrap
from dataclasses import dataclass
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



# ---------------------------------------------------------------------------
# Numbers and pictures as a person reads them


def fmt(value, key: str = "") -> str:
    """A number as a table shows it: 3 significant digits ('15.5', '0.451'), thousands
    separators from 1,000 on ('1,654' images/s, '12,800' images), small ones and learning
    rates in short scientific form ('8.97e-5'); '-' for absent or NaN, yes/no for flags."""
    if value is None or (isinstance(value, str | list | tuple) and not value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        value = float(value)  # numpy's float64 too
        if value != value:
            return "-"
        if value == 0:
            return "0"
        if abs(value) < 1e-3 or (key.startswith("lr") and abs(value) < 0.1):
            mantissa, exponent = f"{value:.2e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, list | tuple):
        return "; ".join(fmt(v) for v in value)
    return str(value)


def display_scale(width: int, height: int, min_width: int = 512, min_height: int = 128,
                  max_width: int = 1100) -> int:
    """Nearest-neighbour factor that makes a tiny grid readable (a 274x36 strip -> 4x) without
    pushing it past max_width (a page's column)."""
    scale = max(-(-min_width // width), -(-min_height // height))
    return max(1, min(scale, max_width // width))


# ---------------------------------------------------------------------------
# The metrics figure: one drawing for the notebooks, the report and a run's metrics.png


@dataclass(frozen=True)
class Series:
    key: str  # history key
    label: str
    band: tuple[str, str] | str = ()  # its (low, high) keys, or its std key


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    series: tuple[Series, ...]
    smooth: bool = False  # per-batch training numbers are noisy: a smoothed line over them
    reference: float | None = None  # a horizontal guide, e.g. "as diverse as the data"
    unit_range: bool = False  # a probability or similarity: the axis spans [0, 1]
    if_changing: bool = False  # drawn only when the value moved (lr: rollbacks, schedules)
    log: bool = False


PANELS = (
    Panel("training losses", "loss per batch", (
        Series("loss_d", "discriminator"), Series("loss_g", "generator"),
        Series("loss", "loss"), Series("recon", "reconstruction"), Series("kl", "KL")),
        smooth=True),
    Panel("discriminator outputs", "mean D(x), probability", (
        Series("d_real", "on real images"), Series("d_fake", "on generated")),
        smooth=True, unit_range=True),
    Panel("FID", "FID, 95% interval shaded", (
        Series("fid", "FID", ("fid_low", "fid_high")),
        Series("fid_class_mean", "mean over classes"))),
    Panel("KID", "KID ± std (lower is better)", (Series("kid", "KID", "kid_std"),)),
    Panel("diversity", "generated / real spread", (
        Series("diversity", "diversity"),
        Series("label_sensitivity", "label sensitivity (moved by label / by noise)")),
        reference=1.0),
    Panel("SSIM", "SSIM (1 = identical)", (
        Series("ssim_recon", "reconstruction"), Series("ssim_nearest", "to nearest real")),
        unit_range=True),
    Panel("learning rate", "lr", (Series("lr", "lr"),), if_changing=True, log=True),
)
EVENT_STYLE = {"rollback": ("tab:red", "rollback"), "collapse": ("tab:orange", "collapse"),
               "label_collapse": ("tab:purple", "label ignored")}


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _points(records: list[dict], key: str) -> np.ndarray:
    """(step, value) rows of the records that carry a number under `key`: (n, 2)."""
    rows = [(r["step"], r[key]) for r in records if is_number(r.get(key))]
    return np.array(rows, dtype=float).reshape(-1, 2)


def _band(records: list[dict], key: str, band: tuple[str, str] | str) -> np.ndarray:
    """(step, low, high) rows where a record carries the band of `key`: (n, 3)."""
    rows = []
    for r in records:
        if not is_number(r.get(key)):
            continue
        if isinstance(band, str) and is_number(r.get(band)):
            rows.append((r["step"], r[key] - r[band], r[key] + r[band]))
        elif isinstance(band, tuple) and band and all(is_number(r.get(k)) for k in band):
            rows.append((r["step"], r[band[0]], r[band[1]]))
    return np.array(rows, dtype=float).reshape(-1, 3)


def smoothed(values: np.ndarray) -> np.ndarray:
    """A debiased exponential moving average spanning ~5% of the points (as TensorBoard's)."""
    alpha = 2 / (max(2.0, len(values) / 20) + 1)
    out, avg, weight = np.empty_like(values), 0.0, 0.0
    for i, v in enumerate(values):
        avg = (1 - alpha) * avg + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = avg / weight
    return out


def _value_text(records: list[dict], series: Series) -> str:
    """The last value of a series as a table shows it: '21.7 [18.4, 25]', '20.2 ± 3.76'."""
    last = [r for r in records if is_number(r.get(series.key))][-1]
    text = fmt(last[series.key])
    if isinstance(series.band, str) and is_number(last.get(series.band)):
        text += f" ± {fmt(last[series.band])}"
    elif series.band and all(is_number(last.get(k)) for k in series.band):
        text += f" [{fmt(last[series.band[0]])}, {fmt(last[series.band[1]])}]"
    return text


def _draw_series(ax, records: list[dict], series: Series, smooth: bool, color) -> None:
    pts = _points(records, series.key)
    if len(pts) == 1:  # a lone evaluation beside a curve: a labelled marker
        ax.plot(pts[:, 0], pts[:, 1], "o", color=color, label=series.label)
        ax.annotate(_value_text(records, series), tuple(pts[0]), xytext=(-6, 6),
                    textcoords="offset points", ha="right", fontsize=8, color=color)
        return
    if smooth and len(pts) >= 12:
        ax.plot(pts[:, 0], pts[:, 1], color=color, alpha=0.25, lw=0.8)
        ax.plot(pts[:, 0], smoothed(pts[:, 1]), color=color, label=series.label)
    else:
        ax.plot(pts[:, 0], pts[:, 1], color=color, label=series.label,
                marker="o" if len(pts) < 30 else None, ms=3)
    band = _band(records, series.key, series.band)
    if len(band):
        ax.fill_between(band[:, 0], band[:, 1], band[:, 2], color=color, alpha=0.2, lw=0)


def _draw_panel(ax, panel: Panel, records: list[dict], events: list[dict]) -> None:
    present = [s for s in panel.series if len(_points(records, s.key))]
    for i, series in enumerate(present):
        _draw_series(ax, records, series, panel.smooth, f"C{i}")
    if panel.reference is not None:
        ax.axhline(panel.reference, color="gray", lw=0.8, ls=":")
        ax.set_ylim(bottom=0)
    if panel.unit_range:
        ax.set_ylim(-0.02, 1.02)
    if panel.log:
        ax.set_yscale("log")
    for event in events:
        ax.axvline(event.get("diverged_at", event["step"]),
                   color=EVENT_STYLE[event["event"]][0], ls="--", lw=1)
    ax.set_title(panel.title, fontsize=10)
    ax.set_ylabel(panel.ylabel, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if len(present) > 1:
        ax.legend(fontsize=7)


def _draw_once(ax, lines: list[str], steps: set[int]) -> None:
    """Scores evaluated a single time, as text: a one-dot "curve" would say nothing."""
    ax.set_axis_off()
    where = f"step {fmt(steps.pop())}" if len(steps) == 1 else "one step each"
    ax.set_title(f"evaluated once ({where})", fontsize=10)
    ax.text(0.02, 0.95, "\n".join(lines), va="top", ha="left", fontsize=9,
            family="monospace", transform=ax.transAxes)
    if any("[" in line or "±" in line for line in lines):
        ax.text(0.02, 0.02, "[low, high]: 95% bootstrap interval\n± std over KID subsets",
                va="bottom", ha="left", fontsize=7, color="gray", transform=ax.transAxes)


def _eval_caption(evals: list[dict]) -> str:
    """What the scores were computed from: they compare only within the same features/n/size."""
    last = evals[-1]
    features, size = last.get("features"), last.get("image_size")
    n_fake, n_real = last.get("n_fake"), last.get("n_real")
    parts = [f"{features} features" if features else None, f"{size} px" if size else None,
             f"{n_fake} generated vs {n_real} real" if n_fake and n_real else None]
    return ", ".join(p for p in parts if p)


def metrics_figure(history: list[dict], title: str = ""):
    """The curated curves of a run: smoothed losses, FID with its 95% interval, KID ± std,
    diversity, SSIM (and the lr when it moved), against the training step.

    Only what changes over training is drawn: constants such as image_size or n_real
    and metadata never are, and a score evaluated only once is written as a value in
    an "evaluated once" panel rather than drawn as a one-dot curve. Rollbacks (red)
    and collapse events (orange) are dashed vertical lines. None when nothing was logged.
    """
    from matplotlib.figure import Figure

    records = [r for r in history if "event" not in r and is_number(r.get("step"))]
    events = [r for r in history if r.get("event") in EVENT_STYLE and is_number(r.get("step"))]
    curves, once, once_steps = [], [], set()
    for panel in PANELS:
        points = {s: _points(records, s.key) for s in panel.series}
        if panel.if_changing:
            if any(len(np.unique(p[:, 1])) > 1 for p in points.values()):
                curves.append(panel)
        elif any(len(p) > 1 for p in points.values()):
            curves.append(panel)
        else:
            for series, p in points.items():
                if len(p):
                    name = series.label if series.label == panel.title else \
                        f"{panel.title} {series.label}"
                    once.append(f"{name}: {_value_text(records, series)}")
                    once_steps.add(int(p[0, 0]))
    n = len(curves) + bool(once)
    if n == 0:
        return None
    ncols = min(3, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(3.9 * ncols, 2.9 * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    for ax, panel in zip(axes, curves, strict=False):
        _draw_panel(ax, panel, records, events)
    if once:
        _draw_once(axes[len(curves)], once, once_steps)
    for ax in axes[n:]:
        ax.set_visible(False)
    last_step = max((r["step"] for r in records), default=1)
    for ax in axes[:len(curves)]:
        ax.set_xlim(0, last_step * 1.03)
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("training step", fontsize=8)
    evals = [r for r in records if is_number(r.get("fid"))]
    caption = " · ".join(t for t in (title, _eval_caption(evals) if evals else "") if t)
    if caption:
        # wrapped to the figure's width (~6.5 pt a character at 10 pt): a run scored once
        # gets a one-panel figure, 3.9 inches wide, narrower than a one-line caption
        chars = int(fig.get_figwidth() * 72 / 6.5)
        fig.suptitle("\n".join(textwrap.wrap(caption, chars)), fontsize=10)
    return fig


def plot_metrics(history: list[dict], path: str | Path) -> Path | None:
    """`metrics_figure` written to `path` (a run folder's metrics.png); None if nothing logged."""
    fig = metrics_figure(history)
    if fig is None:
        return None
    fig.savefig(path, dpi=100)
    return Path(path)
