"""The cross-run report: every run folder under an outputs root, side by side.

Reads only run folders (config.json, summary.json, metrics.json, history.jsonl,
media). Runs with and without metrics sit in the same table: an absent number
is shown as "-". Scores carry the feature network they came from, because FID
from a small classifier and FID from Inception are not comparable.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from lib.config import Config
from lib.core import viz
from lib.core.rundir import RunDir
from lib.core.viz import fmt
from lib.families import FAMILIES, FAMILY_COLORS
from lib.metrics import protocol_summary
from lib.notebook.display import display_width, html_table, image_bytes, img_tag
from lib.notebook.paths import KAGGLE_WORKING, on_kaggle
from lib.notebook.runs import read_json
from lib.training.evaluation import rebuild, sampling_cost
from lib.training.tracking import read_history

METRIC_KEYS = ("fid", "kid", "ssim_recon", "ssim_nearest", "ssim", "diversity")
UNCERTAINTY_KEYS = ("fid_low", "fid_high", "kid_std")  # shown beside their metric
# what each picture of a run folder (lib.core.rundir.MEDIA) shows, in the order the report shows
# them; of two identical files the first is the one shown
MEDIA_CAPTIONS = {
    "reconstruction.gif": "reconstructions over training: rows 1 and 3 rebuilt by the model, "
                          "rows 2 and 4 the real images they come from",
    "generation.gif": "generations over training: fixed prior noise decoded with every class "
                      "label, one row per class",
    "evolution.gif": "training progress: the same fixed noise sampled at each snapshot",
    "denoising.gif": "sampling with the final weights: from pure noise to images, one frame "
                     "per sampler step",
    "final_grid.png": "final samples of the trained model",
}
KID_NOTE = ("KID is the squared MMD between real and generated features under a cubic "
            "polynomial kernel: unitless, and its scale follows the feature network. With "
            "Inception features it is typically 0.001-0.05 (papers often quote KID x 1000); "
            "with the small classifier's features it can read in the tens or thousands. "
            "Compare KIDs only between runs with the same features.")
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
            and RunDir(d).config.is_file()
            and (RunDir(d).summary.is_file() or RunDir(d).history.is_file())]
    return sorted(runs, key=lambda d: (_family_rank(_family_of(d)), d.name))


def _family_of(run_dir: Path) -> str:
    summary = read_json(RunDir(run_dir).summary)
    if "family" in summary:
        return summary["family"]
    try:
        return Config.from_dict(read_json(RunDir(run_dir).config), str(run_dir)).family
    except (ValueError, KeyError):
        return "unknown"


def _family_rank(family: str) -> int:
    order = list(FAMILIES)  # the registry's order
    return order.index(family) if family in order else len(order)


def last_scores(history: list[dict]) -> dict:
    """The most recent value of each metric key in the history (metrics logged at eval steps)."""
    scores = {}
    for record in history:
        for key, value in record.items():
            if key in METRIC_KEYS or key in UNCERTAINTY_KEYS or key in ("features", "protocol"):
                scores[key] = value
    return scores


def load_run(run_dir: str | Path) -> RunInfo:
    run_dir, files = Path(run_dir), RunDir(run_dir)
    config = read_json(files.config)
    summary = read_json(files.summary)
    history = read_history(run_dir)
    last = history[-1] if history else {}
    metrics = {**last_scores(history), **read_json(files.metrics)}
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

    None when the run recorded none and cannot be rebuilt here (no checkpoint, no such device).
    """
    if run.sample_seconds_per_image is not None:
        return run.sample_seconds_per_image
    cache = RunDir(run.run_dir).sampling_cache
    cached = read_json(cache)
    if cached.get("step") == run.step and cached.get("n") == n:
        return cached["seconds_per_image"]
    try:
        rebuilt = rebuild(run.run_dir)
        seconds = sampling_cost(rebuilt.family, rebuilt.parts, rebuilt.engine, n)
    except (OSError, ValueError, RuntimeError, KeyError):
        return None
    cache.write_text(json.dumps({"step": run.step, "n": n, "seconds_per_image": seconds}) + "\n")
    return seconds


# ---------------------------------------------------------------------------
# Tables


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
    """One dict per run, every value already formatted ('-' when absent). Short cells only:
    the FID protocol, a line of its own per run, is `protocol_rows`."""
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
            "wall time (s)": fmt(run.train_seconds),
            "images/s": fmt(run.images_per_sec),
            "sampling ms/image": fmt(per_image * 1000 if per_image is not None else None),
        })
    return rows


def protocol_rows(runs: list[RunInfo]) -> list[dict]:
    """One dict per run: the protocol its FID/KID come from, in one line (`protocol_summary`);
    a column of the main table, it pushed the numbers off the page."""
    return [{"run": run.name, "FID protocol": protocol_summary(run.metrics.get("protocol"))}
            for run in runs]


# ---------------------------------------------------------------------------
# Figures


def run_curves_figure(run: RunInfo) -> Figure | None:
    """The run's metrics figure (`viz.metrics_figure`), titled with its family and data."""
    return viz.metrics_figure(run.history, title=f"{run.name} ({run.family}, {run.dataset})")


def comparable_group(run: RunInfo) -> tuple[str, str]:
    """(feature network, image size) of a run's FID: only runs in one group share an axis."""
    size = run.metrics.get("image_size", run.image_size)
    return str(run.metrics.get("features", "?")), f"{size} px" if size else "? px"


def _fid_over_time(run: RunInfo) -> tuple[list[float], list[float]]:
    pts = [(r["train_seconds"], r["fid"]) for r in run.history
           if viz.is_number(r.get("fid")) and viz.is_number(r.get("train_seconds"))]
    if not pts and viz.is_number(run.metrics.get("fid")) and run.train_seconds:
        pts = [(run.train_seconds, run.metrics["fid"])]
    return [p[0] for p in pts], [p[1] for p in pts]


def quality_compute_figure(runs: list[RunInfo]) -> Figure:
    """FID against training wall time, one line per run (its evaluations), coloured by family.

    One panel per feature network and image size: FIDs from different features or sizes
    are not comparable, so they never share an axis. Runs without FID are named under the
    plot, so a missing score is never a missing run.
    """
    scored = [r for r in runs if _fid_over_time(r)[1]]
    groups = sorted({comparable_group(r) for r in scored})
    fig = Figure(figsize=(min(12.0, 5.5 * max(1, len(groups))), 3.8), layout="constrained")
    axes = fig.subplots(1, max(1, len(groups)), squeeze=False)[0]
    for ax, group in zip(axes, groups, strict=False):
        for run in (r for r in scored if comparable_group(r) == group):
            secs, fids = _fid_over_time(run)
            ax.plot(secs, fids, marker="o", color=FAMILY_COLORS.get(run.family, "tab:gray"),
                    label=f"{run.family}: {run.name}")
        ax.set_title(f"{group[0]} features, {group[1]}", fontsize=10)
        ax.set_xlabel("training wall time (s)")
        ax.set_ylabel("FID (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if not groups:
        axes[0].text(0.5, 0.5, "no run recorded FID", ha="center", va="center",
                     transform=axes[0].transAxes, color="gray")
    fig.suptitle("quality versus compute" + (" (one panel per feature network and image "
                                             "size: not comparable across panels)"
                                             if len(groups) > 1 else ""), fontsize=11)
    unscored = [r.name for r in runs if r not in scored]
    if unscored:
        fig.text(0.01, 0.005, "without FID: " + ", ".join(unscored), fontsize=8, color="gray",
                 va="bottom")
    return fig


def run_media(run: RunInfo) -> list[tuple[Path, str]]:
    """(file, caption) of each picture in the run folder, byte-identical twins shown once
    (the CVAE's evolution.gif is its generation.gif)."""
    shown: dict[str, int] = {}
    media: list[tuple[Path, str]] = []
    for name, caption in MEDIA_CAPTIONS.items():
        path = RunDir(run.run_dir).media(name)
        if not path.is_file():
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in shown:
            kept, text = media[shown[digest]]
            media[shown[digest]] = (kept, f"{text} (also saved as {name})")
            continue
        shown[digest] = len(media)
        media.append((path, f"{name}: {caption}"))
    return media


def report_dir(out_root: str | Path) -> Path:
    """Where the report goes: out_root/report, or - when out_root is read-only (a Kaggle
    input) - /kaggle/working/outputs/report on Kaggle, else ./report."""
    candidates = [Path(out_root) / "report"]
    if on_kaggle():
        candidates.append(KAGGLE_WORKING / "outputs" / "report")
    candidates.append(Path.cwd() / "report")
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise OSError(f"no writable folder for the report (tried {', '.join(map(str, candidates))})"
                  "; pass a writable path to export_html")


# ---------------------------------------------------------------------------
# HTML export


def _img_tag(obj, alt: str) -> str:
    data, fmt_ = image_bytes(obj)
    return img_tag(data, fmt_, alt, display_width(obj, data))


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 1em;max-width:1200px;
color:#222}img{max-width:100%;height:auto;image-rendering:pixelated}
table{border-collapse:collapse;font-size:13px;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f2f2f2}
td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}
.media{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{margin:0;max-width:100%}figcaption{font-size:12px;color:#555;max-width:40em}
.note{font-size:13px;color:#444;max-width:60em}"""


def export_html(runs: list[RunInfo], path: str | Path,
                sampling: dict[str, float | None] | None = None) -> Path:
    """A self-contained HTML report (images embedded) plus its figures as PNGs beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = table_rows(runs, sampling)
    parts = [f"<h1>Run report</h1><p>{len(runs)} run(s), generated "
             f"{time.strftime('%Y-%m-%d %H:%M')}. FID/KID/diversity are computed from the "
             f"feature network named in <em>features</em>; numbers from different feature "
             f"networks, image sizes or sample counts are not comparable. FID is shown with "
             f"its 95% bootstrap interval, KID with its std over subsets. Sampling time is "
             f"the run's own record where it kept one, else measured on the machine that made "
             f"this report.</p>",
             html_table(rows) + html_table(protocol_rows(runs)) if rows
             else "<p><em>no runs found</em></p>",
             f'<p class="note">{html.escape(KID_NOTE)}</p>']
    quality = quality_compute_figure(runs)
    quality.savefig(path.parent / "quality_vs_compute.png", dpi=100)
    parts.append("<h2>Quality versus compute</h2>"
                 + _figure(quality, "FID against training wall time, one line per run"))
    for run in runs:
        parts.append(f"<h2>{html.escape(run.name)}</h2><p>{run.family} on {run.dataset}, "
                     f"{fmt(run.step)} steps, {fmt(run.train_seconds)} s of training</p>")
        curves = run_curves_figure(run)
        if curves is not None:
            curves.savefig(path.parent / f"{run.name}_curves.png", dpi=100)
            parts.append(_figure(curves, f"{run.name}: losses and scores against the "
                                         "training step"))
        figures = "".join(_figure(p, caption) for p, caption in run_media(run))
        parts.append(f'<div class="media">{figures}</div>')
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>Run report"
                    f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    return path


def _figure(obj, caption: str) -> str:
    return (f"<figure>{_img_tag(obj, caption)}<figcaption>{html.escape(caption)}"
            f"</figcaption></figure>")
