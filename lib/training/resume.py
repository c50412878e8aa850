"""Resume: the one rule for what may change, and the folder a resumed run continues in.

A resume loads last.pt once and continues with the checkpoint's config and the
RESUMABLE fields asked for now; a read-only source is copied whole (or not at all)
into a new folder; the history and snapshots after the checkpoint's step are redone.
The run folder keeps copies of its caches (decoded data, reference features) in cache/,
so the next session - elsewhere, its input read-only - reuses them.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lib.config import Config, ConfigError, apply_override
from lib.core.checkpoint import CheckpointError, load_checkpoint
from lib.core.rundir import RunDir, claim_new, pid_alive
from lib.core.viz import step_of
from lib.models import FAMILY_MODELS
from lib.training.tracking import truncate_history

# What a resume may change: how the run trains, logs and finds its data. The rest
# (models, data, optimizers, schedulers) is what the checkpoint's states were made for.
RESUMABLE = ("name", "trainer", "wandb", "data.root", "data.download", "data.verify_cache")
CACHE = "cache"  # the run folder's copies of its caches: the next session starts at once


def default_run_name(cfg: Config) -> str:
    return f"{cfg.family}_{cfg.data.dataset}_{datetime.now():%Y%m%d-%H%M%S}"


def resumable(source: str | Path) -> RunDir:
    """`source` as a run folder a resume can start from, or a CheckpointError saying why not."""
    run = RunDir(source)
    if not run.has_checkpoint():
        raise CheckpointError(f"{source}: not a run folder to resume "
                              f"(no {run.last.relative_to(run.root)})")
    return run


@dataclass
class Resumed:
    """A run folder to continue: its last.pt, loaded once, and the config it continues with."""

    run: RunDir
    ckpt: dict
    cfg: Config


def open_resume(source: str | Path, requested: Config | None = None,
                overrides: list[str] | None = None) -> Resumed:
    """`source`'s last.pt, loaded once (on the CPU: the engine is not set up yet), and the
    config the run continues with: `requested` by the one rule (resume_config), or without
    one the checkpoint's own changed by `overrides` (`trainer.epochs=200`)."""
    run = resumable(source)
    ckpt = load_checkpoint(run.last)
    check_folder(run, ckpt)
    if requested is None:
        raw = copy.deepcopy(ckpt["config"])  # the rule compares against the original
        for item in overrides or []:
            apply_override(raw, item, str(run.last))
        requested = Config.from_dict(raw, f"{run.last} (its config)")
    return Resumed(run, ckpt, resume_config(ckpt["config"], requested, run.root))


def resume_config(saved: dict, requested: Config, source: str | Path) -> Config:
    """The one resume rule: the checkpoint's config, with the RESUMABLE fields asked for now.

    Any other difference (a model argument, the dataset, an optimizer) is a ConfigError
    naming the field: the checkpoint's weights and states were made for its own. `saved`
    is compared as the plain dict it is: only `requested` is validated, where it is made.
    """
    if family_of(saved) != requested.family:
        raise ConfigError(f"the run in {source} is a {family_of(saved)} run, this config a "
                          f"{requested.family} one; a resume continues the same model. Train "
                          f"a new run (another name, or without resume)")
    refuse_changes(saved, requested.to_dict(), source)
    return requested


def check_resume(run_dir: Path, requested: Config) -> None:
    """The rule against the run folder's config.json, without loading last.pt (which
    check_folder keeps in step with it): a launcher's early check."""
    saved = folder_config(RunDir(run_dir))
    if saved is not None:
        resume_config(saved, requested, run_dir)


def family_of(raw: dict) -> str | None:
    """The family of a plain config dict: the one whose sections hold its model types (None
    when none does)."""
    for family, roles in FAMILY_MODELS.items():
        if all(isinstance(raw.get(section), dict) and raw[section].get("type") == type_name
               for section, type_name in roles.items()):
            return family
    return None


def refuse_changes(saved: dict, now: dict, source: str | Path) -> None:
    """A ConfigError naming the first field, outside RESUMABLE, where `now` differs."""
    # a field the checkpoint predates (added to its section since) is no change
    saved = {k: {**now[k], **v} if isinstance(v, dict) and isinstance(now.get(k), dict) else v
             for k, v in saved.items()}
    for key, was, value in _differences(saved, now):
        if not any(key == field or key.startswith(f"{field}.") for field in RESUMABLE):
            raise ConfigError(
                f"{key}: the run in {source} was trained with {was!r}, now {value!r}; a resume "
                f"changes only trainer and wandb fields. Keep {key} as it was, or train a new "
                f"run (another name, or without resume)")


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
    The copy appears whole or not at all (see _copy_run); `run_dir` taken already gives a
    fresh name (rundir.claim_new), its files writable whatever the source's modes.
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
        run = _copy_run(src, target)
    for tmp in [*run.root.glob(".*.tmp"), *run.checkpoints.glob(".*.tmp")]:
        tmp.unlink()  # left by a write that was killed (history, checkpoints)
    return run


def _copy_run(src: RunDir, target: Path) -> RunDir:
    """src's resume files, samples and caches in a new run folder claimed at `target`, all at once.

    The copy is made in `.<name>.copy-<pid>-*` beside it, then renamed onto the (empty)
    claimed folder. A kill midway leaves that copy and the empty claim: the next try
    (its pid dead) removes both and takes the same name again.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.copy-*"):
        pid = stale.name.rpartition(".copy-")[2].partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()  # the claim that copy was to fill
    tmp = RunDir(tempfile.mkdtemp(prefix=f".{target.name}.copy-{os.getpid()}-",
                                  dir=target.parent))
    run = None
    try:
        run = claim_new(target.parent, target.name)
        files = [(a, b) for a, b in zip(src.resume_files(), tmp.resume_files(), strict=True)
                 if a.is_file()]
        if src.samples.is_dir():
            files += [(png, tmp.samples / png.name) for png in src.samples.iterdir()
                      if png.is_file()]
        cache = src.root / CACHE  # the caches kept with the run (keep_caches)
        files += [(f, tmp.root / f.relative_to(src.root)) for f in cache.rglob("*.pt")
                  if f.is_file()]
        for have, copy in files:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(have, copy)  # the data only: a read-only source's modes stay behind
        tmp.samples.mkdir(exist_ok=True)
        os.replace(tmp.root, run.root)  # onto the empty claimed folder: atomic
    except BaseException:
        shutil.rmtree(tmp.root, ignore_errors=True)
        if run is not None:
            run.root.rmdir()
        raise
    return run


# ---------------------------------------------------------------------------
# The caches a run keeps for its next session


def fetch_caches(source: RunDir, cache_dir: Path) -> None:
    """The caches a run folder keeps (decoded data, reference features, a classifier) into
    `cache_dir` where it has no file of that name. Each file carries the key it was made
    under (the data's files or content, the feature network): a stale one is not used."""
    kept = source.root / CACHE
    for path in sorted(kept.rglob("*.pt")) if kept.is_dir() else []:
        target = cache_dir / path.relative_to(kept)
        if not target.exists():
            try:
                _place(path, target)
            except OSError:  # a read-only cache folder: computed again, as without a copy
                return


def keep_caches(run: RunDir, cache_dir: Path, files: list[Path]) -> None:
    """Copies of `files` (under `cache_dir`) in the run folder's cache/, so that a resume
    elsewhere (the next Kaggle session, its output attached read-only) finds them."""
    for path in files:
        try:
            _place(path, run.root / CACHE / path.relative_to(cache_dir))
        except OSError as e:  # a full disk: the next session computes them again
            print(f"{path.name} not kept in {run.root / CACHE} ({e.strerror or e}); the next "
                  f"session computes it again")


def _place(path: Path, target: Path) -> None:
    """`path`'s content at `target`, atomically: a hard link where it can (no second copy
    of a dataset on the disk), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(path, tmp)
    os.replace(tmp, target)


def restore_periodic(run: RunDir, step: int, save_every: int) -> None:
    """step_<step>.pt again, when the kill that a resume follows came while writing it:
    last.pt holds the same state."""
    path = run.periodic(step)
    if step and step % save_every == 0 and not path.exists():
        tmp = path.with_name(f".{path.name}.restore.tmp")
        shutil.copyfile(run.last, tmp)
        os.replace(tmp, path)


def folder_config(run: RunDir) -> dict | None:
    """The run folder's config.json as a plain dict; None when absent or damaged."""
    try:
        raw = json.loads(run.config.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) and family_of(raw) else None


def check_folder(run: RunDir, ckpt: dict, path: Path | None = None) -> None:
    """A checkpoint (`path`, last.pt by default) dropped into another run's folder (a CVAE
    last.pt among a DCGAN's files) is refused: resuming it would rewrite the folder's
    config.json and history, evaluating it would put another model's scores in its
    metrics.json. A damaged config.json is no obstacle: the checkpoint's own config
    rewrites it."""
    path = path or run.last
    folder = folder_config(run)
    if folder is None:
        return
    family, here = family_of(ckpt["config"]), family_of(folder)
    if family != here:
        raise CheckpointError(
            f"{path}: a {family} checkpoint in a {here} run folder "
            f"({run.config.name} says {here}); it belongs to another run - put "
            f"it in its own folder, or restore this run's last.pt")
    refuse_changes(ckpt["config"], folder, path)


def forget_after(run: RunDir, step: int) -> None:
    """A resume (or a rollback) redoes the work after `step`: drop its history and snapshots."""
    truncate_history(run.root, step)
    for png in run.samples.glob("*.png"):
        if step_of(png) > step:
            png.unlink()
