"""A run's state in a checkpoint: made and restored side by side, the RNG streams.

`make_checkpoint` and `restore_checkpoint` sit side by side so that what is
saved is visibly what is restored: weights, EMA, optimizers, schedulers, grad
scalers, every random stream (each rank's under DDP), the batch order, the
guard and the counters - a resumed run continues bit for bit.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from lib.config import Config
from lib.core.checkpoint import FORMAT_VERSION, CheckpointError, as_tuple
from lib.core.device import Engine
from lib.core.rundir import RunDir
from lib.families import Parts
from lib.families.base import unwrap
from lib.training.batches import Batches
from lib.training.guard import Guard

# ---------------------------------------------------------------------------
# Random streams


def rng_state(batches: Batches) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2]), "sampler": batches.state_dict()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, batches: Batches) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(as_tuple(state["python"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32),
                         state["numpy_pos"], 0, 0.0))
    batches.load_state_dict(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------
# Checkpoints: save and restore, side by side


def make_checkpoint(cfg: Config, parts: Parts, batches: Batches, engine: Engine,
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
        "rng": rng_state(batches),
        # under DDP each rank draws its own batches: keep every rank's RNG (a collective)
        "rank_rng": engine.gather_object(rng_state(batches)) if engine.distributed else [],
        "guard": guard.state_dict(),
    }


def restore_checkpoint(ckpt: dict, parts: Parts, batches: Batches, engine: Engine,
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
            set_rng_state(rank_rng[engine.rank], batches)


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
