"""Checkpoints: plain dicts, written atomically, loaded without running code.

A checkpoint holds a format version, the run's config, the resolved model
arguments (enough to rebuild every network without the code that trained it),
and the full training state for an exact resume.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

FORMAT_VERSION = 1
# What every checkpoint of this project holds, and what the code that reads one relies on:
# the config and model specs rebuild the networks, the states resume the run exactly.
REQUIRED = {"config": dict, "models": dict, "nets": dict, "step": int, "counters": dict,
            "optimizers": dict, "schedulers": dict, "rng": dict}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, of another format, or carries code."""


def atomic_write(path: str | Path, write) -> Path:
    """`write(f)` into a temp file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one.
    A full disk is an OSError naming the folder: torch reports it as "unexpected pos".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        Path(tmp).unlink(missing_ok=True)
        cause = e if isinstance(e, OSError) else e.__context__
        if isinstance(cause, OSError) and cause.errno and cause.filename is None:  # which folder
            raise OSError(cause.errno, cause.strerror, str(path.parent)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_save(obj: dict, path: str | Path) -> Path:
    """torch.save through `atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> Path:
    """A text file the user cannot regenerate (history.jsonl) rewritten through `atomic_write`."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load with `weights_only=True`: tensors and plain containers only, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        what = _offending(e)
        kind = ("it holds objects other than tensors and plain data" if "GLOBAL" in what
                else "not a weights-only torch file: damaged, or a plain pickle")
        raise CheckpointError(
            f"{path}: refused - {kind} ({what}); loading it could run code, so it was not "
            f"loaded. Use only checkpoints written by this project") from None
    except Exception as e:  # junk or truncated files raise KeyError, RuntimeError, EOFError...
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint "
                              f"({type(e).__name__}: {str(e)[:200]})") from None
    version = ckpt.get("format_version") if isinstance(ckpt, dict) else None
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: not a checkpoint of this project (no format_version)")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format {version} is newer than this "
                              f"code understands ({FORMAT_VERSION}); update the project")
    _check_contents(ckpt, path)
    return ckpt


def _check_contents(ckpt: dict, path: Path) -> None:
    """Every required key with its type, and a {type, args} spec for every network."""
    for key, kind in REQUIRED.items():
        if key not in ckpt:
            raise CheckpointError(f"{path}: damaged or not written by this project, its "
                                  f"{key!r} entry is missing (a periodic checkpoints/step_*.pt "
                                  "of the run can take the place of last.pt)")
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            raise CheckpointError(f"{path}: damaged checkpoint, its {key!r} entry is a "
                                  f"{type(ckpt[key]).__name__}, expected {kind.__name__}")
    for name, spec in ckpt["models"].items():
        if not (isinstance(spec, dict) and isinstance(spec.get("type"), str)
                and isinstance(spec.get("args"), dict)):
            raise CheckpointError(f"{path}: damaged checkpoint, models[{name!r}] is not a "
                                  "{type, args} network spec")
        if name not in ckpt["nets"]:
            raise CheckpointError(f"{path}: damaged checkpoint, no weights for {name!r} "
                                  "(its 'nets' entry)")
    _check_state(ckpt, path)


def as_tuple(x):
    """random.getstate()'s nested tuples back from the lists a checkpoint may hold."""
    return tuple(as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def _check_sampler(state: dict) -> None:
    torch.Generator().set_state(state["gen"])
    if not (isinstance(state["perm"], torch.Tensor) and isinstance(state["pos"], int)
            and 0 <= state["pos"] <= len(state["perm"])):
        raise ValueError("perm must be a tensor and pos a position in it")


# Each random stream of rng_state (training/checkpoints.py), tried on a scratch generator:
# a hand-edited or foreign state fails here, naming its field, not in the middle of a resume.
RNG_CHECKS = {
    "torch": lambda rng: torch.Generator().set_state(rng["torch"]),
    "python": lambda rng: random.Random().setstate(as_tuple(rng["python"])),
    "numpy": lambda rng: np.random.RandomState().set_state(
        ("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"], 0, 0.0)),
    "sampler": lambda rng: _check_sampler(rng["sampler"]),
}


def _check_state(ckpt: dict, path: Path) -> None:
    """The training state a resume restores: step, counters and every random stream."""
    def damaged(field: str, what: str) -> CheckpointError:
        return CheckpointError(f"{path}: damaged checkpoint, its {field} {what} (a periodic "
                               "checkpoints/step_*.pt of the run can take the place of last.pt)")

    if ckpt["step"] < 0:
        raise damaged("'step'", f"is {ckpt['step']}, expected a step >= 0")
    for key, kind in (("images_seen", int), ("train_seconds", int | float)):
        value = ckpt["counters"].get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or value < 0:
            raise damaged(f"counters[{key!r}]", f"is {value!r}, expected a number >= 0")
    rank_rng = ckpt.get("rank_rng", [])
    if not isinstance(rank_rng, list):
        raise damaged("'rank_rng'", f"is a {type(rank_rng).__name__}, expected a list")
    for i, rng in enumerate([ckpt["rng"], *rank_rng]):
        where = "rng" if i == 0 else f"rank_rng[{i - 1}]"
        for key, check in RNG_CHECKS.items():
            try:
                check(rng)
            except (LookupError, TypeError, ValueError, RuntimeError, AttributeError) as e:
                raise damaged(f"{where}[{key!r}]", "is not a random-generator state "
                              f"({type(e).__name__}: {str(e)[:120]})") from None


def _offending(error: Exception) -> str:
    """The line of torch's long weights-only message that names what was refused."""
    for line in str(error).splitlines():
        if "Unsupported" in line or "GLOBAL" in line:
            return line.strip().removeprefix("WeightsUnpickler error: ")[:200]
    return str(error).splitlines()[0][:200] if str(error) else "unpickling failed"
