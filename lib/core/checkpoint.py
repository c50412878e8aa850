"""Checkpoints: plain dicts, written atomically, loaded without running code.

A checkpoint holds a format version, the run's config, the resolved model
arguments (enough to rebuild every network without the code that trained it),
and the full training state for an exact resume.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

FORMAT_VERSION = 1
# What every checkpoint of this project holds, and what the code that reads one relies on:
# the config and model specs rebuild the networks, the states resume the run exactly.
REQUIRED = {"config": dict, "models": dict, "nets": dict, "step": int, "counters": dict,
            "optimizers": dict, "schedulers": dict, "rng": dict}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, of another format, or carries code."""


def atomic_save(obj: dict, path: str | Path) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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


def _offending(error: Exception) -> str:
    """The line of torch's long weights-only message that names what was refused."""
    for line in str(error).splitlines():
        if "Unsupported" in line or "GLOBAL" in line:
            return line.strip().removeprefix("WeightsUnpickler error: ")[:200]
    return str(error).splitlines()[0][:200] if str(error) else "unpickling failed"
