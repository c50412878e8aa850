"""A run folder and every path in it, spelled here once.

    outputs/<run>/
      config.json       the run's config (rewritten when a resume changes trainer fields)
      history.jsonl     one JSON object per logged step or event
      summary.json      written at the end: steps, time, device, sampling cost
      metrics.json      scores of `python -m lib evaluate`
      metrics.png       evaluation curves
      .wandb_id         the wandb run a resume continues
      .lock             pid and host of the process writing the run (while it runs)
      checkpoints/      last.pt, best.pt (lowest FID), step_<NNNNNNN>.pt (periodic)
      samples/          <prefix>_<NNNNNNN>.png snapshots (step_, and the CVAE's recon_)
      evolution.gif, final_grid.png and a family's own media (MEDIA)

Training writes it, notebooks and the report read it; nothing else builds these paths.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from lib.config import ConfigError
from lib.core.viz import snapshot_frames, step_of

MEDIA = ("evolution.gif", "reconstruction.gif", "generation.gif", "denoising.gif",
         "final_grid.png")


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def name(self) -> str:
        return self.root.name

    # -- files ---------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def metrics_figure(self) -> Path:
        return self.root / "metrics.png"

    @property
    def wandb_id(self) -> Path:
        return self.root / ".wandb_id"

    @property
    def lock_file(self) -> Path:
        """Held by the process writing the run (lock / unlock below)."""
        return self.root / ".lock"

    @property
    def standing(self) -> Path:
        """The sampling nets' standing BatchNorm statistics for the last weights drawn with."""
        return self.root / "checkpoints" / "standing.pt"

    @property
    def sampling_cache(self) -> Path:
        """The report's sampling-time measurement, kept per checkpoint step."""
        return self.root / "sampling.json"

    def media(self, name: str) -> Path:
        if name not in MEDIA:
            raise ValueError(f"{name!r} is not a run's media file; those are {', '.join(MEDIA)}")
        return self.root / name

    # -- checkpoints ---------------------------------------------------------

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoint("last.pt")

    @property
    def best(self) -> Path:
        return self.checkpoint("best.pt")

    def checkpoint(self, name: str) -> Path:
        """checkpoints/<name>: last.pt, best.pt or a periodic step_<NNNNNNN>.pt."""
        return self.checkpoints / name

    def periodic(self, step: int) -> Path:
        return self.checkpoint(f"step_{step:07d}.pt")

    def periodic_checkpoints(self) -> list[Path]:
        """The periodic checkpoints, oldest first."""
        return sorted(self.checkpoints.glob("step_*.pt"), key=step_of)

    def has_checkpoint(self) -> bool:
        return self.last.is_file()

    def resume_files(self) -> list[Path]:
        """What a resumed copy of the run starts from (besides its samples)."""
        return [self.config, self.history, self.wandb_id, self.last]

    # -- snapshots -----------------------------------------------------------

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def snapshot(self, prefix: str, step: int) -> Path:
        return self.samples / f"{prefix}_{step:07d}.png"

    def snapshots(self, prefix: str = "step") -> list[Path]:
        """The snapshots of one kind (`step`, `recon`), ordered by step."""
        return snapshot_frames(self.samples, f"{prefix}_")


# -- claiming a folder -------------------------------------------------------


class RunFolderError(RuntimeError):
    """A run folder that cannot be claimed: in use by another live process."""


def check_name(name: str) -> str:
    """`name` as one folder name inside the output root, or a ConfigError naming `name`."""
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if (not isinstance(name, str) or not name or name in (".", "..") or "\0" in name
            or any(s in name for s in seps) or Path(name).is_absolute()):
        raise ConfigError(f"name: {name!r} is not a folder name; the run folder is "
                          f"<out>/<name>, so give a plain name such as 'dcgan_cats' "
                          f"(no '/', '..' or absolute path)")
    return name


def claim_new(out_root: str | Path, name: str) -> RunDir:
    """A run folder that did not exist: out_root/name, else name-2, name-3, ...

    os.mkdir is the claim, atomic on every filesystem: two runs of the same name
    started together get two folders, and an existing run is never written into.
    """
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    check_name(name)
    for i in range(1, 10_000):
        root = out_root / (name if i == 1 else f"{name}-{i}")
        try:
            root.mkdir()
        except FileExistsError:
            continue
        if i > 1:
            print(f"note: {out_root / name} already exists; this run goes to {root} (to "
                  f"continue the old one instead: python -m lib train --resume "
                  f"{out_root / name})", file=sys.stderr)
        return RunDir(root)
    raise RunFolderError(f"{out_root}: {name}, {name}-2 ... {name}-9999 all exist; "
                         f"choose another name or --out")


def claim_exact(root: str | Path) -> RunDir:
    """`root` itself as a new run folder (a notebook's out_root/name); taken is an error."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        root.mkdir()
    except FileExistsError:
        raise RunFolderError(f"{root}: already exists (another run of this name started "
                             f"meanwhile?); resume it or choose another name") from None
    return RunDir(root)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def lock(run: RunDir) -> None:
    """Hold run/.lock (this pid and host), created with O_EXCL: one writer per run folder.

    A lock is held only by another live process of this host: a dead pid's (a kill),
    another host's (a copied folder) or this process's own (a train() that raised
    in a notebook) is taken over.
    """
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(3):
        try:
            fd = os.open(run.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = run.lock_file.read_text()
            except FileNotFoundError:  # released meanwhile
                continue
            pid, _, host = held.partition(" ")
            if (host.strip() == socket.gethostname() and pid.isdigit()
                    and int(pid) != os.getpid() and pid_alive(int(pid))):
                raise RunFolderError(
                    f"{run.root}: in use by process {pid} (a run still training or "
                    f"resuming there); wait for it, or remove {run.lock_file} if no run "
                    f"is using the folder") from None
            if run.lock_file.read_text() == held:  # stale: take it over
                run.lock_file.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return
    raise RunFolderError(f"{run.lock_file}: could not take the lock (contended); retry")


def unlock(run: RunDir) -> None:
    """Release run/.lock if this process holds it."""
    try:
        if run.lock_file.read_text().partition(" ")[0] == str(os.getpid()):
            run.lock_file.unlink()
    except FileNotFoundError:
        pass
