"""The training loop: one skeleton for every model family.

`train()` reads top to bottom in the order the work happens - set up, resume,
then each step: the family's update (with its schedulers and EMA), the divergence check,
the time budget, evaluation, rollback, log, checkpoint - and at the end the
media and summary. What its stanzas share (folder, guard, tracker, counters,
clock) is one small `Session` (lib/training/session.py), whose methods are the
longer stanzas. What a family does lives in lib/families; what is saved, in
lib/training/checkpoints.py.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from lib.config import Config, apply_override, load_config
from lib.core.checkpoint import load_checkpoint
from lib.core.device import Engine, seed_everything, setup_engine
from lib.core.rundir import RunDir, check_name, claim_exact, claim_new, lock
from lib.data import load_dataset
from lib.families import FAMILIES
from lib.training.batches import Batches
from lib.training.checkpoints import restore_checkpoint
from lib.training.evaluation import make_evaluator
from lib.training.guard import Guard
from lib.training.resume import (
    check_folder,
    default_run_name,
    forget_after,
    prepare_resume,
    restore_periodic,
    resumable,
    resume_config,
)
from lib.training.session import Session
from lib.training.tracking import Tracker


def train(cfg: Config, out_root: str | Path = "outputs", run_dir: str | Path | None = None,
          resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train `cfg`'s model; return its run folder.

    `resume` continues that run folder from its last.pt - in place, or in `run_dir`
    when given (a copy: the source may be read-only) - with the checkpoint's config
    and the trainer fields `cfg` changes (lib.training.resume.resume_config).
    """
    entered = time.monotonic()  # the time budget counts start-up too
    if cfg.name:
        check_name(cfg.name)  # before any start-up work: it names the run folder
    engine = setup_engine(cfg.trainer)
    # resume: the checkpoint's config, with the trainer fields asked for now
    ckpt = None
    if resume is not None:
        source = resumable(resume)
        ckpt = load_checkpoint(source.last, map_location=engine.device)
        check_folder(source, ckpt)
        cfg = resume_config(ckpt["config"], cfg, source.root)
    family, t = FAMILIES[cfg.family], cfg.trainer

    # the data, resident on the device; the nets, their optimizers and EMA
    seed_everything(t.seed)  # the same initial weights on every rank
    with engine.main_first():  # rank 0 writes the dataset cache, the others read it
        data = load_dataset(**asdict(cfg.data))
    parts = family.build(cfg, data, engine)
    parts.class_names = data.class_names
    family.prepare_sampling(parts, cfg)
    parts.nets = {name: engine.wrap(net) for name, net in parts.nets.items()}
    if engine.rank:  # each rank its own noise and batches; rank 0 as a single process
        seed_everything(t.seed + engine.rank)
    sampler = Batches(data, t.batch_size, engine, t.seed + engine.rank)

    # the run folder, claimed and locked by rank 0: a new one or the resumed one
    run = claim_run(cfg, engine, out_root, run_dir, resume)

    # every state of the checkpoint; the history and snapshots after it are redone
    guard, start, counters = Guard(t), 0, {"images_seen": 0, "train_seconds": 0.0}
    if ckpt is not None:
        restore_checkpoint(ckpt, parts, sampler, engine, guard, source.last)
        start, counters = ckpt["step"], ckpt["counters"]
        if engine.is_main:
            forget_after(run, start)
            restore_periodic(run, start, t.save_period * t.iterations_per_epoch)
    if engine.is_main:
        cfg.save(run.config)  # a resume may have changed trainer fields

    # tracking, and the evaluator (built after the RNG is restored: it must not move it)
    tracker = Tracker(run.root, cfg.wandb, run.name, cfg.to_dict(), enabled=engine.is_main)
    evaluator = make_evaluator(cfg, data, engine) if engine.is_main and t.eval_samples else None
    s = Session(cfg, family, engine, parts, sampler, guard, run, tracker, evaluator, counters,
                entered, start, progress)
    if start == 0:  # the first snapshot, and a rollback target from the first step on
        if engine.is_main:
            s.snapshot(0)
        s.save(0, periodic=False)

    total, save_every = cfg.total_steps, t.save_period * t.iterations_per_epoch
    step, stop = start, False
    with s:  # Ctrl-C asks the loop to stop (Session.interrupted); the lock is released
        while step < total and not stop:
            # one iteration of the family's recipe (lib/families: update, schedulers, EMA)
            step += 1
            x, y = sampler.next()
            logs = family.step(parts, x, y, step, engine, cfg)
            s.count(x.shape[0] * engine.world_size)
            guard.watch(step, logs)

            is_log = step % t.log_every_step == 0 or step == total
            is_save = step % save_every == 0 or step == total
            is_eval = t.eval_samples and ((t.eval_every and step % t.eval_every == 0)
                                          or step == total)
            # divergence: judged where the loop logs or saves anyway (one device sync)
            reason = s.diverged(step, before_save=is_save) if is_log or is_save else None
            # time budget or Ctrl-C: stop after this step, saved (checked first); scores and
            # media only for the budget, which leaves time for them (a session ends scored)
            stop = reason is None and step < total and (s.out_of_time() or s.interrupted())
            is_eval = is_eval or (stop and t.eval_samples and not s.by_interrupt)
            # evaluation: scores, the collapse watch (a reason to roll back, if asked), best.pt
            metrics = {}
            if reason is None and is_eval:
                metrics, reason = s.evaluate(step)
                stop = stop and reason is None
            if stop and not is_save:
                reason, is_save = s.diverged(step, before_save=True), True
            # divergence or collapse: back to last.pt with a lower learning rate
            if reason is not None:
                step = s.roll_back(reason, step)
                continue

            # history line, progress bar and snapshot; then the checkpoint
            if is_log:
                s.log(step, logs, metrics)
            elif metrics:
                tracker.log(metrics, step)
            if is_save:
                s.save(step, periodic=step % save_every == 0)
        s.finish(step, stopped=stop)
    return run.root


def claim_run(cfg: Config, engine: Engine, out_root: str | Path, run_dir: str | Path | None,
              resume: str | Path | None) -> RunDir:
    """The run folder, claimed and locked by rank 0: a new one (never an existing folder:
    name-2 when taken), or the resumed one (rank 0 copies it)."""
    if engine.is_main:
        if resume is not None:
            run = prepare_resume(resume, run_dir)
        elif run_dir is not None:
            run = claim_exact(run_dir)
        else:
            run = claim_new(out_root, cfg.name or default_run_name(cfg))
        lock(run)
    run = RunDir(engine.broadcast_object(str(run.root) if engine.is_main else None))
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    run.samples.mkdir(exist_ok=True)
    return run


def resume(run_dir: str | Path, out_root: str | Path | None = None,
           overrides: list[str] | None = None, progress: bool = True,
           config: str | Path | None = None) -> Path:
    """Continue a run from its last.pt: the CLI's --resume.

    The config is the checkpoint's own - or `config`, a JSON file of the config
    asked for now (a notebook's, handed to torchrun) - changed by `overrides`
    (`trainer.epochs=200`); what may differ from the checkpoint's is resume_config's
    rule. `out_root` given: continue in `out_root/<run name>`, a copy, leaving
    `run_dir` untouched (e.g. a Kaggle input).
    """
    source = resumable(run_dir)
    if config is not None:
        cfg = load_config(config, overrides)
    else:
        raw = load_checkpoint(source.last)["config"]
        for item in overrides or []:
            apply_override(raw, item, str(source.last))
        cfg = Config.from_dict(raw, f"{source.last} (its config)")
    target = Path(out_root) / source.root.resolve().name if out_root is not None else None
    return train(cfg, run_dir=target, resume=source.root, progress=progress)
