"""A run's state on disk: checkpoints made and restored, the RNG, the batches, resume.

`make_checkpoint` and `restore_checkpoint` sit side by side so that what is
saved is visibly what is restored: weights, EMA, optimizers, schedulers, grad
scalers, every random stream (each rank's under DDP), the batch order, the
guard and the counters - a resumed run continues bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from lib.checkpoint import FORMAT_VERSION, CheckpointError
from lib.config import Config, ConfigError
from lib.data import ImageData
from lib.device import Engine
from lib.families import Parts
from lib.families.base import unwrap
from lib.rundir import RunDir, claim_new
from lib.training.guard import Guard
from lib.training.tracking import truncate_history
from lib.viz import step_of

# What a resume may change: how the run trains, logs and finds its data. The rest
# (models, data, optimizers, schedulers) is what the checkpoint's states were made for.
RESUMABLE = ("name", "trainer", "wandb", "data.root", "data.download")


# ---------------------------------------------------------------------------
# Batches drawn on the device


class BatchSampler:
    """Random batches drawn by index from the device-resident uint8 dataset.

    Each epoch is a fresh permutation; its state (permutation, position, RNG)
    goes into checkpoints so a resumed run draws exactly the batches it would have.
    """

    def __init__(self, data: ImageData, batch_size: int, engine: Engine, seed: int):
        if batch_size > len(data):
            raise ConfigError(f"trainer.batch_size={batch_size} is larger than the "
                              f"{data.name} dataset ({len(data)} images)")
        self.images = data.images.to(engine.device)  # (N, C, H, W) uint8, resident
        self.labels = data.labels.to(engine.device) if data.labels is not None else None
        self.batch_size = batch_size
        self.engine = engine
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(data), generator=self.gen)
        self.pos = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pos + self.batch_size > len(self.perm):
            self.perm = torch.randperm(len(self.perm), generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size].to(self.images.device)
        self.pos += self.batch_size
        x = self.engine.batch(self.images[idx])
        y = self.labels[idx] if self.labels is not None else None
        return x, y

    def state_dict(self) -> dict:
        return {"perm": self.perm, "pos": self.pos, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.pos = state["perm"], state["pos"]
        self.gen.set_state(state["gen"])


# ---------------------------------------------------------------------------
# Random streams


def rng_state(sampler: BatchSampler) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2]), "sampler": sampler.state_dict()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, sampler: BatchSampler) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32),
                         state["numpy_pos"], 0, 0.0))
    sampler.load_state_dict(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


# ---------------------------------------------------------------------------
# Checkpoints: save and restore, side by side


def make_checkpoint(cfg: Config, parts: Parts, sampler: BatchSampler, engine: Engine,
                    guard: Guard, step: int, counters: dict) -> dict:
    """Every state of the run at `step`. A collective under DDP (every rank's RNG)."""
    return {
        "format_version": FORMAT_VERSION,
        "family": cfg.family,
        "config": cfg.to_dict(),
        "models": parts.specs,
        "class_names": parts.class_names,
        "step": step,
        "counters": dict(counters),
        "nets": {k: unwrap(v).state_dict() for k, v in parts.nets.items()},
        "ema": parts.ema.state_dict() if parts.ema is not None else {},
        "optimizers": {k: v.state_dict() for k, v in parts.optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in parts.schedulers.items()},
        "scalers": {k: v.state_dict() for k, v in engine.scalers.items()},
        "rng": rng_state(sampler),
        # under DDP each rank draws its own batches: keep every rank's RNG (a collective)
        "rank_rng": engine.gather_object(rng_state(sampler)) if engine.distributed else [],
        "guard": guard.state_dict(),
    }


def restore_checkpoint(ckpt: dict, parts: Parts, sampler: BatchSampler, engine: Engine,
                       guard: Guard | None, source: str | Path = "checkpoint") -> None:
    """Load every state of `ckpt`. A rollback passes guard=None: its counts and lowered
    learning rate carry on, and so do the random streams, so that new batches follow.

    A checkpoint that does not fit (other model arguments, another family) is a
    CheckpointError naming the file, not a state-dict traceback.
    """
    load_weights(ckpt, parts, source)
    try:
        for k, opt in parts.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][k])
        for k, sched in parts.schedulers.items():
            sched.load_state_dict(ckpt["schedulers"][k])
    except (KeyError, RuntimeError, ValueError) as e:
        raise _mismatch(source, e) from None
    for k, state in ckpt.get("scalers", {}).items():
        engine.scalers[k] = torch.amp.GradScaler(engine.device.type,
                                                 enabled=engine.amp_dtype == torch.float16)
        engine.scalers[k].load_state_dict(state)
    if guard is not None:
        guard.load_state_dict(ckpt.get("guard", {}))
        rank_rng = ckpt.get("rank_rng") or [ckpt["rng"]]
        if engine.rank < len(rank_rng):  # other ranks of a resume on more GPUs keep fresh seeds
            set_rng_state(rank_rng[engine.rank], sampler)


def load_weights(ckpt: dict, parts: Parts, source: str | Path = "checkpoint") -> None:
    """The nets and EMA averages of `ckpt`; one that does not fit is a CheckpointError."""
    try:
        for k, net in parts.nets.items():
            unwrap(net).load_state_dict(ckpt["nets"][k])
        if parts.ema is not None:
            parts.ema.load_state_dict(ckpt["ema"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise _mismatch(source, e) from None


def _mismatch(source: str | Path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"{source}: does not match this config ({type(e).__name__}: {str(e)[:300]}); "
        f"resume with the run's own config (only trainer fields may change)")


def prune_checkpoints(run: RunDir, keep: int) -> None:
    for old in run.periodic_checkpoints()[:-keep]:
        old.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Resume


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
    """src's resume files and samples into the (empty, claimed) folder `run`, all at once."""
    tmp = RunDir(tempfile.mkdtemp(prefix=f".{run.name}.copy-", dir=run.root.parent))
    try:
        files = [(a, b) for a, b in zip(src.resume_files(), tmp.resume_files(), strict=True)
                 if a.is_file()]
        if src.samples.is_dir():
            files += [(png, tmp.samples / png.name) for png in src.samples.iterdir()
                      if png.is_file()]
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
