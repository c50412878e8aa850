"""The cross-run report: every run folder under an outputs root, side by side.

Reads only run folders (config.json, summary.json, metrics.json, history.jsonl,
media). Runs with and without metrics sit in the same table: an absent number
is shown as "-". Scores carry the feature network they came from, because FID
from a small classifier and FID from Inception are not comparable.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure

from lib.config import Config
from lib.metrics import protocol_summary
from lib.notebook import image_bytes, read_json
from lib.tracking import read_history

FAMILY_ORDER = ("dcgan", "cvae", "ddpm")
FAMILY_COLORS = {"dcgan": "tab:blue", "cvae": "tab:green", "ddpm": "tab:red"}
METRIC_KEYS = ("fid", "kid", "ssim_recon", "ssim_nearest", "ssim", "diversity")
UNCERTAINTY_KEYS = ("fid_low", "fid_high", "kid_std")  # shown beside their metric
MEDIA = ("evolution.gif", "reconstruction.gif", "generation.gif", "denoising.gif",
         "final_grid.png")
SKIP_FOLDERS = {"notebooks", "report"}


@dataclass
class RunInfo:
    run_dir: Path
    name: str
    family: str
    dataset: str
    image_size: int | None
    step: int | None
    total_steps: int | None
    finished: bool | None
    train_seconds: float | None
    images_seen: int | None
    metrics: dict = field(default_factory=dict)  # metrics.json, else the last logged scores
    sample_seconds_per_image: float | None = None  # as recorded by training, if it did
    history: list[dict] = field(default_factory=list)

    @property
    def images_per_sec(self) -> float | None:
        if self.images_seen and self.train_seconds:
            return self.images_seen / self.train_seconds
        return None


def find_runs(out_root: str | Path) -> list[Path]:
    """Run folders (a config.json and something trained) under out_root, by family then name."""
    root = Path(out_root)
    if not root.is_dir():
        return []
    runs = [d for d in root.iterdir() if d.is_dir() and d.name not in SKIP_FOLDERS
            and (d / "config.json").is_file()
            and ((d / "summary.json").is_file() or (d / "history.jsonl").is_file())]
    return sorted(runs, key=lambda d: (_family_rank(_family_of(d)), d.name))


def _family_of(run_dir: Path) -> str:
    summary = read_json(run_dir / "summary.json")
    if "family" in summary:
        return summary["family"]
    try:
        return Config.from_dict(read_json(run_dir / "config.json"), str(run_dir)).family
    except (ValueError, KeyError):
        return "unknown"


def _family_rank(family: str) -> int:
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)


def last_scores(history: list[dict]) -> dict:
    """The most recent value of each metric key in the history (metrics logged at eval steps)."""
    scores = {}
    for record in history:
        for key, value in record.items():
            if key in METRIC_KEYS or key in UNCERTAINTY_KEYS or key in ("features", "protocol"):
                scores[key] = value
    return scores


def load_run(run_dir: str | Path) -> RunInfo:
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    summary = read_json(run_dir / "summary.json")
    history = read_history(run_dir)
    last = history[-1] if history else {}
    metrics = {**last_scores(history), **read_json(run_dir / "metrics.json")}
    data = config.get("data", {})
    return RunInfo(
        run_dir=run_dir, name=run_dir.name, family=_family_of(run_dir),
        dataset=data.get("dataset", "?"), image_size=data.get("image_size"),
        step=summary.get("step", last.get("step")), total_steps=summary.get("total_steps"),
        finished=summary.get("finished"),
        train_seconds=summary.get("train_seconds", last.get("train_seconds")),
        images_seen=summary.get("images_seen", last.get("images_seen")),
        metrics=metrics, history=history,
        sample_seconds_per_image=metrics.get("sample_seconds_per_image",
                                             summary.get("sample_seconds_per_image")))


def load_runs(out_root: str | Path) -> list[RunInfo]:
    return [load_run(d) for d in find_runs(out_root)]


# ---------------------------------------------------------------------------
# Sampling speed, measured where the report is made


def sampling_seconds_per_image(run: RunInfo, n: int = 8) -> float | None:
    """Wall time per generated image, as the run recorded it or measured here (cached per step).

    None when the run recorded none and cannot be rebuilt here (no checkpoint, data absent).
    """
    if run.sample_seconds_per_image is not None:
        return run.sample_seconds_per_image
    cache = run.run_dir / "sampling.json"
    cached = read_json(cache)
    if cached.get("step") == run.step and cached.get("n") == n:
        return cached["seconds_per_image"]
    try:
        seconds = _time_sampling(run.run_dir, n)
    except (OSError, ValueError, RuntimeError, KeyError):
        return None
    cache.write_text(json.dumps({"step": run.step, "n": n, "seconds_per_image": seconds}) + "\n")
    return seconds


def _time_sampling(run_dir: Path, n: int) -> float:
    from lib.checkpoint import load_checkpoint
    from lib.data import load_dataset
    from lib.device import setup_engine
    from lib.train import FAMILIES, make_ema

    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    cfg = Config.from_dict(ckpt["config"], str(run_dir))
    cfg.trainer.compile = False  # time sampling, not compilation
    family = FAMILIES[cfg.family]
    engine = setup_engine(cfg.trainer)
    data = load_dataset(**asdict(cfg.data))
    parts = family.build(cfg, data, engine)
    make_ema(parts, cfg.trainer.ema_decay)
    for group in ("nets", "ema"):
        for k, net in getattr(parts, group).items():
            net.load_state_dict(ckpt[group][k])
    labels = None
    if data.num_classes:
        labels = torch.arange(n) % data.num_classes
    gen = torch.Generator().manual_seed(0)
    family.sample(parts, 2, labels[:2] if labels is not None else None, gen)  # warm-up
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    family.sample(parts, n, labels, gen)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


# ---------------------------------------------------------------------------
# Tables


def fmt(value, digits: int = 3) -> str:
    """A table cell: '-' for absent, short floats, thousands separators for big ints."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def ssim_of(metrics: dict) -> str:
    """Reconstruction SSIM where there is one (CVAE), else similarity to the nearest real
    image; the kind is named, the two are different questions."""
    for key, kind in (("ssim_recon", "recon"), ("ssim_nearest", "nearest"), ("ssim", "")):
        if key in metrics:
            return f"{fmt(metrics[key])} ({kind})" if kind else fmt(metrics[key])
    return "-"


def with_uncertainty(metrics: dict, key: str) -> str:
    """FID with its bootstrap interval, KID with its std over subsets: '40.1 [36.2, 44.0]'."""
    value = fmt(metrics.get(key))
    if key == "fid" and "fid_low" in metrics and "fid_high" in metrics:
        return f"{value} [{fmt(metrics['fid_low'])}, {fmt(metrics['fid_high'])}]"
    if f"{key}_std" in metrics:
        return f"{value} ± {fmt(metrics[f'{key}_std'])}"
    return value


def table_rows(runs: list[RunInfo], sampling: dict[str, float | None] | None = None) -> list[dict]:
    """One dict per run, every value already formatted ('-' when absent)."""
    sampling = sampling or {}
    rows = []
    for run in runs:
        m = run.metrics
        per_image = sampling.get(run.name, run.sample_seconds_per_image)
        steps = f"{fmt(run.step)}/{fmt(run.total_steps)}" if run.total_steps else fmt(run.step)
        rows.append({
            "run": run.name, "family": run.family, "dataset": run.dataset,
            "size": fmt(run.image_size), "steps": steps,
            "features": fmt(m.get("features")),
            "FID": with_uncertainty(m, "fid"), "KID": with_uncertainty(m, "kid"),
            "SSIM": ssim_of(m), "diversity": fmt(m.get("diversity")),
            "FID protocol": protocol_summary(m.get("protocol")),
            "wall time (s)": fmt(run.train_seconds, 4),
            "images/s": fmt(run.images_per_sec),
            "sampling ms/image": fmt(per_image * 1000 if per_image is not None else None),
        })
    return rows


def html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p><em>no runs found</em></p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values())
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---------------------------------------------------------------------------
# Figures


def _numbers(history: list[dict], key: str, x: str = "step") -> tuple[list, list]:
    pts = [(r[x], r[key]) for r in history
           if isinstance(r.get(key), int | float) and isinstance(r.get(x), int | float)]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def curve_keys(run: RunInfo) -> list[str]:
    """The metrics a run logged over steps; its losses when it logged no metrics."""
    present = {k for r in run.history for k in r}
    keys = [k for k in METRIC_KEYS if k in present]
    return keys or sorted(k for k in present if k.startswith("loss"))


def run_curves_figure(run: RunInfo) -> Figure | None:
    keys = curve_keys(run)
    if not keys:
        return None
    fig = Figure(figsize=(3.4 * len(keys), 2.6), layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        steps, values = _numbers(run.history, key)
        ax.plot(steps, values, marker="." if len(steps) < 30 else None,
                color=FAMILY_COLORS.get(run.family))
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.name} ({run.family}, {run.dataset})", fontsize=11)
    return fig


def quality_compute_figure(runs: list[RunInfo]) -> Figure:
    """FID against training wall time, one line per run (its evaluations), coloured by family.

    Runs without FID are named under the plot, so a missing score is never a missing run.
    """
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    unscored = []
    for run in runs:
        secs, fids = _numbers(run.history, "fid", x="train_seconds")
        if not fids and isinstance(run.metrics.get("fid"), int | float) and run.train_seconds:
            secs, fids = [run.train_seconds], [run.metrics["fid"]]
        if fids:
            ax.plot(secs, fids, marker="o", color=FAMILY_COLORS.get(run.family, "tab:gray"),
                    label=f"{run.family}: {run.name}")
        else:
            unscored.append(run.name)
    features = sorted({str(r.metrics["features"]) for r in runs if "features" in r.metrics})
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel(f"FID ({', '.join(features)} features)" if features else "FID")
    ax.set_title("quality versus compute (lower is better)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no run recorded FID", ha="center", va="center",
                transform=ax.transAxes, color="gray")
    if unscored:
        fig.text(0.01, 0.005, "without FID: " + ", ".join(unscored), fontsize=8, color="gray",
                 va="bottom")
    return fig


# ---------------------------------------------------------------------------
# HTML export


def _img_tag(obj, alt: str, width: int | None = None) -> str:
    data, fmt_ = image_bytes(obj)
    size = f' width="{width}"' if width else ""
    return (f'<img alt="{html.escape(alt)}"{size} '
            f'src="data:image/{fmt_};base64,{base64.b64encode(data).decode()}">')


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f2f2f2}td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}
.media{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0}figcaption{font-size:12px;color:#555}img{image-rendering:pixelated}"""


def export_html(runs: list[RunInfo], path: str | Path,
                sampling: dict[str, float | None] | None = None) -> Path:
    """A self-contained HTML report (images embedded) plus its figures as PNGs beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = table_rows(runs, sampling)
    parts = [f"<h1>Run report</h1><p>{len(runs)} run(s), generated "
             f"{time.strftime('%Y-%m-%d %H:%M')}. FID/KID/diversity are computed from the "
             f"feature network named in <em>features</em>; numbers from different feature "
             f"networks or sample counts are not comparable. Sampling time is the run's own "
             f"record where it kept one, else measured on the machine that made this report."
             f"</p>", html_table(rows)]
    quality = quality_compute_figure(runs)
    quality.savefig(path.parent / "quality_vs_compute.png", dpi=100)
    parts.append("<h2>Quality versus compute</h2>" + _img_tag(quality, "quality vs compute"))
    for run in runs:
        parts.append(f"<h2>{html.escape(run.name)}</h2><p>{run.family} on {run.dataset}, "
                     f"{fmt(run.step)} steps, {fmt(run.train_seconds, 4)} s</p>")
        curves = run_curves_figure(run)
        if curves is not None:
            curves.savefig(path.parent / f"{run.name}_curves.png", dpi=100)
            parts.append(_img_tag(curves, f"{run.name} curves"))
        media = [m for m in MEDIA if (run.run_dir / m).is_file()]
        figures = "".join(f"<figure>{_img_tag(run.run_dir / m, m, width=256)}"
                          f"<figcaption>{m}</figcaption></figure>" for m in media)
        parts.append(f'<div class="media">{figures}</div>')
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>Run report"
                    f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    return path
