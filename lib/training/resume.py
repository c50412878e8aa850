"""Resume: the one rule for what may change, and the folder a resumed run continues in.

A resume continues with the checkpoint's config and the RESUMABLE fields asked for
now; a read-only source is copied whole (or not at all) into a new folder; the
history and snapshots after the checkpoint's step are redone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from lib.config import Config, ConfigError
from lib.core.checkpoint import CheckpointError
from lib.core.rundir import RunDir, claim_new
from lib.core.viz import step_of
from lib.training.tracking import truncate_history

# What a resume may change: how the run trains, logs and finds its data. The rest
# (models, data, optimizers, schedulers) is what the checkpoint's states were made for.
RESUMABLE = ("name", "trainer", "wandb", "data.root", "data.download")


def default_run_name(cfg: Config) -> str:
    return f"{cfg.family}_{cfg.data.dataset}_{datetime.now():%Y%m%d-%H%M%S}"


def resumable(source: str | Path) -> RunDir:
    """`source` as a run folder a resume can start from, or a CheckpointError saying why not."""
    run = RunDir(source)
    if not run.has_checkpoint():
        raise CheckpointError(f"{source}: not a run folder to resume "
                              f"(no {run.last.relative_to(run.root)})")
    return run


def resume_config(saved: dict, requested: Config, source: str | Path) -> Config:
    """The one resume rule: the checkpoint's config, with the RESUMABLE fields asked for now.

    Any other difference (a model argument, the dataset, an optimizer) is a ConfigError
    naming the field: the checkpoint's weights and states were made for its own.
    """
    saved = Config.from_dict(saved, f"{source} (its config)")
    if saved.family != requested.family:
        raise ConfigError(f"the run in {source} is a {saved.family} run, this config a "
                          f"{requested.family} one; a resume continues the same model. Train "
                          f"a new run (another name, or without resume)")
    saved = saved.to_dict()
    for key, was, now in _differences(saved, requested.to_dict()):
        if not any(key == field or key.startswith(f"{field}.") for field in RESUMABLE):
            raise ConfigError(
                f"{key}: the run in {source} was trained with {was!r}, now {now!r}; a resume "
                f"changes only trainer and wandb fields. Keep {key} as it was, or train a new "
                f"run (another name, or without resume)")
    return requested


def _differences(a: dict, b: dict, prefix: str = ""):
    """(dotted key, a's value, b's value) wherever two nested dicts differ (None: absent)."""
    for key in sorted(a.keys() | b.keys()):
        was, now = a.get(key), b.get(key)
        if isinstance(was, dict) and isinstance(now, dict):
            yield from _differences(was, now, f"{prefix}{key}.")
        elif was != now:
            yield f"{prefix}{key}", was, now


def prepare_resume(source: str | Path, run_dir: str | Path | None = None) -> RunDir:
    """The folder a resumed run continues in: `source` itself, or a copy at `run_dir`.

    A read-only source (a Kaggle input) needs `run_dir`: its config, history,
    wandb id, samples and last.pt are copied there and the source is never written.
    The copy is made in a temporary folder beside `run_dir` and renamed into place
    (a failure leaves no half-made run), its files writable whatever the source's
    modes; `run_dir` taken already gives a fresh name (rundir.claim_new).
    """
    src = resumable(source)
    if run_dir is None or Path(run_dir).resolve() == src.root.resolve():
        if not os.access(src.root, os.W_OK) or not os.access(src.checkpoints, os.W_OK):
            raise CheckpointError(f"{source}: the run folder is read-only; resume into a new "
                                  f"folder with --out DIR (notebook: out_root)")
        run = src
    else:
        target = Path(run_dir)
        if RunDir(target).has_checkpoint():
            raise CheckpointError(f"{run_dir} already holds a run; resume that one "
                                  f"(--resume {run_dir}) or choose another --out")
        run = claim_new(target.parent, target.name)
        _copy_run(src, run)
    for tmp in run.checkpoints.glob(".*.tmp"):  # left by a write that was killed
        tmp.unlink()
    return run


def _copy_run(src: RunDir, run: RunDir) -> None:
    """src's resume files, samples and caches into the (empty, claimed) folder `run`, all
    at once."""
    tmp = RunDir(tempfile.mkdtemp(prefix=f".{run.name}.copy-", dir=run.root.parent))
    try:
        files = [(a, b) for a, b in zip(src.resume_files(), tmp.resume_files(), strict=True)
                 if a.is_file()]
        if src.samples.is_dir():
            files += [(png, tmp.samples / png.name) for png in src.samples.iterdir()
                      if png.is_file()]
        cache = src.root / "cache"  # the caches kept with the run (lib.training.loop)
        files += [(f, tmp.root / f.relative_to(src.root)) for f in cache.rglob("*.pt")
                  if f.is_file()]
        for have, copy in files:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(have, copy)  # the data only: a read-only source's modes stay behind
        tmp.samples.mkdir(exist_ok=True)
        os.replace(tmp.root, run.root)  # onto the empty claimed folder: atomic
    except BaseException:
        shutil.rmtree(tmp.root, ignore_errors=True)
        run.root.rmdir()
        raise


def restore_periodic(run: RunDir, step: int, save_every: int) -> None:
    """step_<step>.pt again, when the kill that a resume follows came while writing it:
    last.pt holds the same state."""
    path = run.periodic(step)
    if step and step % save_every == 0 and not path.exists():
        tmp = path.with_name(f".{path.name}.restore.tmp")
        shutil.copyfile(run.last, tmp)
        os.replace(tmp, path)


def check_folder(run: RunDir, ckpt: dict) -> None:
    """A checkpoint dropped into another run's folder (a CVAE last.pt among a DCGAN's files)
    is refused: resuming it would rewrite the folder's config.json and history."""
    if not run.config.is_file():
        return
    try:
        folder = Config.from_dict(json.loads(run.config.read_text()), str(run.config))
    except (ValueError, ConfigError):
        return  # a damaged config.json: the checkpoint's own config rewrites it
    family = ckpt.get("family") or Config.from_dict(ckpt["config"]).family
    if family != folder.family:
        raise CheckpointError(
            f"{run.last}: a {family} checkpoint in a {folder.family} run folder "
            f"({run.config.name} says {folder.family}); it belongs to another run - put "
            f"it in its own folder, or restore this run's last.pt")
    resume_config(ckpt["config"], folder, run.last)


def forget_after(run: RunDir, step: int) -> None:
    """A resume (or a rollback) redoes the work after `step`: drop its history and snapshots."""
    truncate_history(run.root, step)
    for png in run.samples.glob("*.png"):
        if step_of(png) > step:
            png.unlink()
