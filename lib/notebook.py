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

import base64
import html
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
from lib.config import Config, ConfigError, load_config
from lib.progress import live_notebook
from lib.rundir import RunDir, check_name
from lib.training.tracking import read_history
from lib.viz import fmt

# Kaggle's writable output folder: where it exists, the notebooks write there (on_kaggle);
# GENLAB_KAGGLE_WORKING points it elsewhere (a test's fake session, an unusual mount)
KAGGLE_WORKING = Path(os.environ.get("GENLAB_KAGGLE_WORKING", "/kaggle/working"))
# model arguments a config summary shows, where the model has them
STUDENT_MODEL_ARGS = ("latent_dim", "kl_weight", "kl_warmup_steps", "timesteps", "schedule",
                      "sampler", "sample_steps", "guidance_scale")

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
    return live_notebook()


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


def find_run(folder: str | Path, name: str) -> Path:
    """`folder` when it is a run folder, else the one run folder called `name` below it.

    So `resume_from` may name the run itself (`/kaggle/input/<x>/outputs/<run>`) or
    the whole attached output of a previous session (`/kaggle/input/<x>`).
    """
    folder = Path(folder)
    if RunDir(folder).has_checkpoint():
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

    A resume keeps the checkpoint's model and data and takes `cfg`'s trainer fields (a
    changed model or data field is a ConfigError naming it: lib.training.state.resume_config).
    A fresh run (resume=False) replaces the folder: its history would otherwise mix two runs.
    `resume_from`: a run folder elsewhere, e.g. a previous Kaggle session's output attached
    read-only under /kaggle/input: copied into out_root/<cfg.name> (writable) and continued
    there, unless that folder already holds a checkpoint (this session's continuation).
    On Kaggle, a run its time budget stopped ends by saying how the next session continues it.
    gpus > 1: the same under torchrun with DDP, one process per GPU (Kaggle's T4 x2: 2),
    its output streamed into the cell (lib.training.distributed.launch).
    """
    from lib.training.distributed import launch
    from lib.training.loop import train
    from lib.training.state import prepare_resume

    if not cfg.name:
        raise ConfigError("the run needs a name (the notebook's `name` parameter): it names "
                          "the run folder that resume continues")
    if not isinstance(gpus, int) or gpus < 1:
        raise ConfigError(f"gpus={gpus!r}: give the number of processes, 1 or more "
                          "(2 on Kaggle's 'GPU T4 x2')")
    if resume_from and not resume:
        raise ConfigError(f"resume_from={str(resume_from)!r} with resume=False: set resume=True "
                          "to continue that run, or clear resume_from to start afresh")
    run_dir = Path(out_root) / check_name(cfg.name)
    if resume_from and RunDir(run_dir).has_checkpoint():
        print(f"{run_dir} already holds a run of that name: continuing it, not {resume_from} "
              f"(remove {run_dir} to copy that one in)")
    elif resume_from:
        source = find_run(resume_from, cfg.name)
        print(f"copying {source} to {run_dir}")
        prepare_resume(source, run_dir)
    if resume and RunDir(run_dir).has_checkpoint():
        print(f"resuming {run_dir}")
        run = (launch(cfg, gpus, out_root=out_root, resume=run_dir) if gpus > 1
               else train(cfg, resume=run_dir, progress=progress))
    else:
        if run_dir.exists():
            print(f"starting afresh: removing the previous {run_dir}")
            shutil.rmtree(run_dir)
        run = (launch(cfg, gpus, out_root=out_root) if gpus > 1
               else train(cfg, run_dir=run_dir, progress=progress))
    if on_kaggle() and not read_json(RunDir(run).summary).get("finished", True):
        # the loop printed the CLI's resume command; a notebook continues through resume_from
        print(f"to continue in the next Kaggle session: keep this output (Save Version), attach "
              f"it there (Add Input) and set resume_from=\"/kaggle/input/<notebook>/outputs/"
              f"{Path(run).name}\"")
    return Path(run)


# ---------------------------------------------------------------------------
# Reading a run folder


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_summary(run_dir: str | Path) -> dict:
    """summary.json merged with metrics.json (absent files give absent keys)."""
    run = RunDir(run_dir)
    return {**read_json(run.summary), **read_json(run.metrics)}


def snapshot_strip(run_dir: str | Path, count: int = 6,
                   prefix: str = "step_") -> Image.Image | None:
    """`count` snapshots spread over the run, side by side with their step as caption."""
    frames = viz.snapshot_frames(RunDir(run_dir).samples, prefix)
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


def history_figure(run_dir: str | Path):
    """The run's metrics figure (`viz.metrics_figure`; None before anything was logged)."""
    return viz.metrics_figure(read_history(run_dir), title=Path(run_dir).name)


def trained_model(run_dir: str | Path) -> tuple[torch.nn.Module, list[str] | None]:
    """The network a run samples with (EMA weights when kept), on the CPU in eval mode, and
    the class names."""
    from lib.training.evaluation import rebuild

    rebuilt = rebuild(run_dir, device="cpu")
    return rebuilt.sampler, rebuilt.parts.class_names


# ---------------------------------------------------------------------------
# Showing things inline
#
# Every picture goes out as an HTML <img> with its bytes inline (plus a PNG for viewers
# that drop HTML): nbconvert has no image/gif output, so a GIF displayed as an
# IPython Image turns into the text "<IPython.core.display.Image object>" in exported
# HTML. Tables are Markdown with numbers formatted by `fmt`.


def image_bytes(obj) -> tuple[bytes, str]:
    """PNG/GIF/JPEG path, PIL image, uint8 grid tensor or matplotlib Figure -> (bytes, format).

    Tiny rasters (8 px digits, a 274x36 slerp strip) are upscaled, pixels kept sharp.
    """
    if isinstance(obj, str | Path):
        path = Path(obj)
        fmt_ = path.suffix.lstrip(".").lower().replace("jpg", "jpeg")
        if fmt_ == "gif":
            return path.read_bytes(), "gif"
        with Image.open(path) as img:
            if viz.display_scale(*img.size) == 1:
                return path.read_bytes(), fmt_
            obj = img.convert("RGB")
    if isinstance(obj, torch.Tensor):  # a uint8 (3, H, W) grid
        obj = viz.to_pil(obj)
    buf = io.BytesIO()
    if isinstance(obj, Image.Image):
        scale = viz.display_scale(*obj.size)
        if scale > 1:
            obj = obj.resize((obj.width * scale, obj.height * scale), Image.NEAREST)
        obj.save(buf, format="PNG")
        return buf.getvalue(), "png"
    if hasattr(obj, "savefig"):
        obj.savefig(buf, format="png", dpi=100)
        return buf.getvalue(), "png"
    raise TypeError(f"cannot show a {type(obj).__name__}: give a path, PIL image, uint8 grid "
                    f"tensor or matplotlib Figure")


def gif_still(data: bytes) -> bytes:
    """The last frame of a GIF as PNG: what a viewer without HTML (or a PDF) shows instead."""
    with Image.open(io.BytesIO(data)) as img:
        img.seek(getattr(img, "n_frames", 1) - 1)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def img_tag(data: bytes, fmt_: str, alt: str, width: int | None = None) -> str:
    """An inline <img>: never wider than the page, pixels kept sharp when scaled up."""
    size = f' width="{width}"' if width else ""
    return (f'<img alt="{html.escape(alt)}"{size} style="max-width:100%;height:auto;'
            f'image-rendering:pixelated" src="data:image/{fmt_};base64,'
            f'{base64.b64encode(data).decode()}">')


def media_bundle(obj, caption: str | None = None, width: int | None = None) -> dict:
    """The display bundle `show` sends: text/html (caption + <img>), image/png, text/plain."""
    data, fmt_ = image_bytes(obj)
    name = caption or (Path(obj).name if isinstance(obj, str | Path) else "image")
    head = f"<p><strong>{html.escape(caption)}</strong></p>" if caption else ""
    png = gif_still(data) if fmt_ == "gif" else data if fmt_ == "png" else None
    bundle = {"text/html": f"<div>{head}{img_tag(data, fmt_, name, width)}</div>",
              "text/plain": f"[{'animated GIF' if fmt_ == 'gif' else 'image'}: {name}]"}
    if png is not None:
        bundle["image/png"] = base64.b64encode(png).decode()
    return bundle


def markdown_table(rows: list[dict] | dict) -> str:
    """Rows of equal keys (or one key -> value mapping) as a Markdown table, numbers by `fmt`."""
    if isinstance(rows, dict):
        rows = [{"": k, "value": fmt(v, k)} for k, v in rows.items()]
    if not rows:
        return "*nothing to show*"
    head = list(rows[0])

    def cell(value, key: str = "") -> str:
        return fmt(value, key).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(str(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r.get(k), k) for k in head) + " |" for r in rows]
    return "\n".join(lines)


def table(rows: list[dict] | dict) -> None:
    """Display rows as a Markdown table (renders in Jupyter, Kaggle and exported HTML)."""
    from IPython.display import Markdown, display

    display(Markdown(markdown_table(rows)))


def config_fields(cfg: Config) -> dict:
    """The fields of a config a student reads before training, in reading order."""
    t = cfg.trainer
    model = cfg.model or cfg.generator
    optimizers = {k: getattr(cfg, k) for k in ("optimizer", "generator_optimizer",
                                                "discriminator_optimizer") if getattr(cfg, k)}
    fields = {"run": cfg.name, "model": f"{cfg.family} ({model.type})" if model else cfg.family,
              "data": f"{cfg.data.dataset}, {cfg.data.image_size} px"
                      + (f", first {cfg.data.limit:,}" if cfg.data.limit else ""),
              "steps": f"{t.epochs * t.iterations_per_epoch:,} ({t.epochs} epochs x "
                       f"{t.iterations_per_epoch:,})",
              "batch size": t.batch_size}
    for key, opt in optimizers.items():
        label = "lr" if key == "optimizer" else f"lr ({key.split('_')[0]})"
        fields[label] = fmt(opt.lr, "lr") + f", betas {tuple(opt.betas)}"
    for key in STUDENT_MODEL_ARGS:
        if model and key in model.args:
            fields[key] = model.args[key]
    fields["log / snapshot every"] = f"{t.log_every_step:,} steps"
    fields["evaluation"] = (f"{t.eval_samples:,} images, {t.features} features, "
                            + (f"every {t.eval_every:,} steps" if t.eval_every else "at the end")
                            if t.eval_samples else "off")
    fields["device / precision"] = f"{t.device} / {t.precision}"
    fields["time budget"] = f"{t.max_minutes:g} min" if t.max_minutes else "none"
    fields["wandb"] = cfg.wandb.mode
    return fields


def config_summary(cfg: Config) -> None:
    """A short table of what a run will do (the full config is saved as config.json)."""
    table(config_fields(cfg))


def show(obj, caption: str | None = None, width: int | None = None) -> None:
    """Display an image or GIF inline as HTML that survives `nbconvert --to html`.

    obj: a path, PIL image, uint8 grid tensor or matplotlib Figure; None or a missing
    file says so instead of failing (a run may not have produced that picture).
    """
    from IPython.display import Markdown, display

    if obj is None:
        display(Markdown(f"*{caption or 'nothing to show'}: not produced by this run*"))
        return
    if isinstance(obj, str | Path) and not Path(obj).is_file():
        display(Markdown(f"*{caption or Path(obj).name}: not produced by this run*"))
        return
    display(media_bundle(obj, caption, width), raw=True)
