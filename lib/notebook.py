"""What the notebooks share: where things live, parameters -> config, train or resume, show.

A notebook cell stays a few lines because the decisions live here: outputs go to
`/kaggle/working` on Kaggle and to the project's `outputs/` elsewhere; a preset
file is found whether the notebook runs from the project root, from
`notebooks/` or from a Kaggle dataset, by path or by name (`dcgan_train`);
parameters named like config fields override the preset, and a parameter left at
None keeps the preset's value; a run folder is resumed rather than overwritten, and
a run from elsewhere (a previous Kaggle session's output) is copied in and continued.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

import lib
from lib import viz
from lib.checkpoint import load_checkpoint, load_models
from lib.config import Config, ConfigError, load_config
from lib.tracking import read_history

KAGGLE_WORKING = Path("/kaggle/working")
HEADLESS_ENV = "GENLAB_HEADLESS"  # set by the runner for the kernels it starts

# notebook parameter name -> dotted config field it sets (None: the preset's value stays)
PARAMETER_FIELDS = {
    "name": "name",
    "dataset": "data.dataset",
    "image_size": "data.image_size",
    "data_root": "data.root",
    "data_path": "data.path",
    "limit": "data.limit",
    "dedupe": "data.dedupe",
    "epochs": "trainer.epochs",
    "iterations_per_epoch": "trainer.iterations_per_epoch",
    "batch_size": "trainer.batch_size",
    "log_every_step": "trainer.log_every_step",
    "save_period": "trainer.save_period",
    "eval_every": "trainer.eval_every",
    "eval_samples": "trainer.eval_samples",
    "features": "trainer.features",
    "inception_weights": "trainer.inception_weights",
    "inception_download": "trainer.inception_download",
    "max_minutes": "trainer.max_minutes",
    "device": "trainer.device",
    "precision": "trainer.precision",
    "seed": "trainer.seed",
    "wandb_mode": "wandb.mode",
    "kl_weight": "model.args.kl_weight",  # CVAE
    "sample_steps": "model.args.sample_steps",  # DDPM: sampler steps for snapshots and scores
}


# ---------------------------------------------------------------------------
# Where things live


def on_kaggle() -> bool:
    return KAGGLE_WORKING.is_dir()


def interactive() -> bool:
    """True in a live notebook session (Jupyter, Kaggle's editor), where sliders can move.

    False under the suite's runner, Kaggle's "Save & Run All" and plain Python: there the
    notebooks draw static grids, which the executed copy keeps.
    """
    if os.environ.get(HEADLESS_ENV) or os.environ.get("KAGGLE_KERNEL_RUN_TYPE") == "Batch":
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return hasattr(get_ipython(), "kernel")


def project_root() -> Path | None:
    """The folder holding `configs/`: beside the `lib` package (clone, Kaggle dataset) or cwd."""
    for candidate in (Path(lib.__file__).resolve().parent.parent, Path.cwd(), Path.cwd().parent):
        if (candidate / "configs").is_dir():
            return candidate
    return None


@dataclass
class Paths:
    out_root: Path  # one folder per run
    data_root: Path  # datasets and their caches (must be writable)


def resolve_paths(out_root: str = "auto", data_root: str = "auto") -> Paths:
    """"auto": /kaggle/working/{outputs,data} on Kaggle, else the project's outputs/ and data/."""
    base = KAGGLE_WORKING if on_kaggle() else (project_root() or Path.cwd())
    out = Path(out_root) if out_root != "auto" else base / "outputs"
    data = Path(data_root) if data_root != "auto" else base / "data"
    out.mkdir(parents=True, exist_ok=True)
    return Paths(out_root=out.resolve(), data_root=data.resolve())


def find_preset(preset: str | Path) -> Path:
    """A preset path as given, else relative to the project root, else a name under configs/.

    Notebooks run from anywhere, so `configs/dcgan_train.json`, `dcgan_train.json` and
    `dcgan_train` all find the project's configs/dcgan_train.json.
    """
    path = Path(preset)
    root = project_root()
    candidates = [path]
    if root is not None and not path.is_absolute():
        json_name = path.name if path.suffix == ".json" else f"{path.name}.json"
        candidates += [root / path, root / "configs" / json_name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = sorted(p.stem for p in (root / "configs").glob("*.json")
                   if not p.stem.startswith("notebooks_")) if root else []  # runner presets
    looked = [str(path)] + ([f"{root} and {root / 'configs'}"] if root else [])
    raise ConfigError(f"preset {str(preset)!r} not found (looked at {', '.join(looked)}); give "
                      f"a JSON config path or a preset name: {', '.join(names) or 'none found'}")


def config_from_parameters(preset: str | Path, **params) -> Config:
    """Load a preset and override it with notebook parameters named like config fields.

    None leaves the preset's value; unknown names are an error listing the valid ones.
    """
    overrides = []
    for key, value in params.items():
        if key not in PARAMETER_FIELDS:
            raise ConfigError(f"unknown notebook parameter {key!r}; valid: "
                              f"{', '.join(sorted(PARAMETER_FIELDS))}")
        if value is not None:
            value = str(value) if isinstance(value, Path) else value
            overrides.append(f"{PARAMETER_FIELDS[key]}={json.dumps(value)}")
    return load_config(find_preset(preset), overrides)


# ---------------------------------------------------------------------------
# Train or resume


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "checkpoints" / "last.pt").is_file()


def find_run(folder: str | Path, name: str) -> Path:
    """`folder` when it is a run folder, else the one run folder called `name` below it.

    So `resume_from` may name the run itself (`/kaggle/input/<x>/outputs/<run>`) or
    the whole attached output of a previous session (`/kaggle/input/<x>`).
    """
    folder = Path(folder)
    if has_checkpoint(folder):
        return folder
    if not folder.is_dir():
        raise ConfigError(f"resume_from={str(folder)!r}: no such folder; give the run folder "
                          f"of a previous session (e.g. /kaggle/input/<notebook>/outputs/{name})")
    found = sorted(p.parent.parent for p in folder.glob(f"**/{name}/checkpoints/last.pt"))
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(f"resume_from={str(folder)!r} holds {len(found)} runs named {name!r} "
                          f"({', '.join(map(str, found))}); give the one to continue")
    raise ConfigError(f"resume_from={str(folder)!r}: not a run folder (no checkpoints/last.pt) "
                      f"and no run folder {name!r} below it; on Kaggle, attach the previous "
                      f"version's output (Add Input) and give its outputs/{name} folder")


def train_or_resume(cfg: Config, out_root: str | Path, resume: bool = True,
                    resume_from: str | Path | None = None, progress: bool = True,
                    gpus: int = 1) -> Path:
    """Train `cfg` into out_root/<cfg.name>; continue its checkpoint when `resume` and one exists.

    A fresh run (resume=False) replaces the folder: its history would otherwise mix two runs.
    `resume_from`: a run folder elsewhere, e.g. a previous Kaggle session's output attached
    read-only under /kaggle/input: copied into out_root/<cfg.name> (writable) and continued
    there, unless that folder already holds a checkpoint (this session's continuation).
    gpus > 1: the same under torchrun with DDP, one process per GPU (Kaggle's T4 x2: 2),
    its output streamed into the cell (lib.distributed.launch).
    """
    from lib.distributed import launch
    from lib.train import prepare_resume, train

    if not cfg.name:
        raise ConfigError("the run needs a name (the notebook's `name` parameter): it names "
                          "the run folder that resume continues")
    if not isinstance(gpus, int) or gpus < 1:
        raise ConfigError(f"gpus={gpus!r}: give the number of processes, 1 or more "
                          "(2 on Kaggle's 'GPU T4 x2')")
    if resume_from and not resume:
        raise ConfigError(f"resume_from={str(resume_from)!r} with resume=False: set resume=True "
                          "to continue that run, or clear resume_from to start afresh")
    run_dir = Path(out_root) / cfg.name
    if resume_from and has_checkpoint(run_dir):
        print(f"{run_dir} already holds a run of that name: continuing it, not {resume_from} "
              f"(remove {run_dir} to copy that one in)")
    elif resume_from:
        source = find_run(resume_from, cfg.name)
        print(f"copying {source} to {run_dir}")
        prepare_resume(source, run_dir)
    if resume and has_checkpoint(run_dir):
        print(f"resuming {run_dir}")
        if gpus > 1:
            return launch(cfg, gpus, out_root=out_root, resume=run_dir)
        return train(cfg, resume=run_dir, progress=progress)
    if run_dir.exists():
        print(f"starting afresh: removing the previous {run_dir}")
        shutil.rmtree(run_dir)
    if gpus > 1:
        return launch(cfg, gpus, out_root=out_root)
    return train(cfg, run_dir=run_dir, progress=progress)


# ---------------------------------------------------------------------------
# Reading a run folder


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_summary(run_dir: str | Path) -> dict:
    """summary.json merged with metrics.json (absent files give absent keys)."""
    run_dir = Path(run_dir)
    return {**read_json(run_dir / "summary.json"), **read_json(run_dir / "metrics.json")}


def snapshot_strip(run_dir: str | Path, count: int = 6,
                   prefix: str = "step_") -> Image.Image | None:
    """`count` snapshots spread over the run, side by side with their step as caption."""
    frames = viz.snapshot_frames(Path(run_dir) / "samples", prefix)
    if not frames:
        return None
    k = min(count, len(frames))
    picks = sorted({frames[round(i * (len(frames) - 1) / max(1, k - 1))] for i in range(k)},
                   key=viz.step_of)
    tiles = [viz.with_caption(Image.open(f), f"step {viz.step_of(f)}", min_width=160)
             for f in picks]
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1),
                              max(t.height for t in tiles)), "white")
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + 4
    return strip


def history_figure(run_dir: str | Path, keys: list[str] | None = None):
    """Loss / metric curves of a run as a matplotlib Figure (None before anything was logged)."""
    from matplotlib.figure import Figure

    history = read_history(run_dir)
    if keys is None:
        skip = {"step", "images_seen", "train_seconds", "lr"}
        keys = [k for k in history[-1] if k not in skip and not k.startswith("lr_")] \
            if history else []
    keys = [k for k in keys if any(_is_number(r.get(k)) for r in history)]
    if not keys:
        return None
    ncols = min(4, len(keys))
    nrows = -(-len(keys) // ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.6 * nrows), layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        pts = [(r["step"], r[key]) for r in history if _is_number(r.get(key))]
        steps, values = zip(*pts, strict=True)
        ax.plot(steps, values, marker="." if len(pts) < 30 else None)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return fig


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def trained_model(run_dir: str | Path) -> tuple[torch.nn.Module, list[str] | None]:
    """The network a run samples with (EMA weights when kept) and the class names, eval mode."""
    path = Path(run_dir) / "checkpoints" / "last.pt"
    nets = load_models(path)
    net = nets["generator"] if "generator" in nets else next(iter(nets.values()))
    return net, load_checkpoint(path).get("class_names")


# ---------------------------------------------------------------------------
# Showing things inline


def image_bytes(obj) -> tuple[bytes, str]:
    """PNG/GIF path, PIL image, uint8 grid tensor or matplotlib Figure -> (bytes, format)."""
    if isinstance(obj, str | Path):
        path = Path(obj)
        return path.read_bytes(), path.suffix.lstrip(".").lower().replace("jpg", "jpeg")
    buf = io.BytesIO()
    if isinstance(obj, torch.Tensor):  # a uint8 (3, H, W) grid; tiny ones are upscaled
        return viz.png_bytes(obj, scale=max(1, 512 // obj.shape[-1])), "png"
    if isinstance(obj, Image.Image):
        obj.save(buf, format="PNG")
        return buf.getvalue(), "png"
    if hasattr(obj, "savefig"):
        obj.savefig(buf, format="png", dpi=100)
        return buf.getvalue(), "png"
    raise TypeError(f"cannot show a {type(obj).__name__}: give a path, PIL image, uint8 grid "
                    f"tensor or matplotlib Figure")


def markdown_table(rows: list[dict] | dict) -> str:
    """Rows of equal keys (or one key -> value mapping) as a Markdown table."""
    if isinstance(rows, dict):
        rows = [{"": k, "value": v} for k, v in rows.items()]
    if not rows:
        return "*nothing to show*"
    head = list(rows[0])
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r.get(k, "-")) for k in head) + " |" for r in rows]
    return "\n".join(lines)


def table(rows: list[dict] | dict) -> None:
    """Display rows as a Markdown table (renders in Jupyter, Kaggle and exported HTML)."""
    from IPython.display import Markdown, display

    display(Markdown(markdown_table(rows)))


def show(obj, caption: str | None = None, width: int | None = None) -> None:
    """Display an image inline, backend-free (works under papermill and in exported HTML)."""
    from IPython.display import Image as IPImage
    from IPython.display import Markdown, display

    if obj is None:
        display(Markdown(f"*{caption or 'nothing to show'}: not produced by this run*"))
        return
    if isinstance(obj, str | Path) and not Path(obj).is_file():
        display(Markdown(f"*{caption or Path(obj).name}: not produced by this run*"))
        return
    data, fmt = image_bytes(obj)
    if caption:
        display(Markdown(f"**{caption}**"))
    display(IPImage(data=data, format=fmt, width=width))
