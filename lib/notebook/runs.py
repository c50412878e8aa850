"""Train or resume a run from a notebook, and read a run folder back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from PIL import Image

from lib.config import Config, ConfigError
from lib.core import viz
from lib.core.device import pick_device
from lib.core.rundir import RunDir, check_name
from lib.notebook.paths import on_kaggle
from lib.training.distributed import launch
from lib.training.evaluation import rebuild
from lib.training.loop import train
from lib.training.resume import prepare_resume
from lib.training.tracking import read_history


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
    changed model or data field is a ConfigError naming it: lib.training.resume.resume_config).
    A fresh run (resume=False) replaces the folder: its history would otherwise mix two runs.
    `resume_from`: a run folder elsewhere, e.g. a previous Kaggle session's output attached
    read-only under /kaggle/input: copied into out_root/<cfg.name> (writable) and continued
    there, unless that folder already holds a checkpoint (this session's continuation).
    On Kaggle, a run its time budget stopped ends by saying how the next session continues it.
    gpus > 1: the same under torchrun with DDP, one process per GPU (Kaggle's T4 x2: 2),
    its output streamed into the cell (lib.training.distributed.launch).
    """

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


def trained_model(run_dir: str | Path,
                  device: str = "auto") -> tuple[torch.nn.Module, list[str] | None]:
    """The network a run samples with (EMA weights when kept), in eval mode, and the class
    names. device "auto": this session's GPU when there is one (the explorers' sliders then
    render there), else the CPU; plain fp32 modules either way."""

    rebuilt = rebuild(run_dir, device=str(pick_device(device)))
    return rebuilt.net, rebuilt.parts.class_names
