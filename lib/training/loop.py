"""The training loop: one skeleton for every model family.

`train()` reads top to bottom in the order the work happens - set up, resume,
then each step: the family's update (with its schedulers and EMA); the time budget
and Ctrl-C; the divergence check, evaluation; rollback, log, checkpoint - and at the
end the media and summary. What to do after a step is one pure function, `decide()`,
of the cadences and those verdicts. What the stanzas share (folder, guard, tracker,
counters, clock) is one small `Session` (lib/training/session.py), whose methods are
the longer stanzas. What a family does lives in lib/families; what is saved, in
lib/training/checkpoints.py.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lib.config import Config, load_config
from lib.core.device import Engine, seed_everything, setup_engine
from lib.core.rundir import RunDir, check_name, claim_exact, claim_new, lock
from lib.data import cached_files, load_dataset
from lib.families import FAMILIES
from lib.training.batches import Batches
from lib.training.checkpoints import restore_checkpoint
from lib.training.evaluation import make_evaluator
from lib.training.guard import Guard
from lib.training.resume import (
    Resumed,
    default_run_name,
    fetch_caches,
    forget_after,
    keep_caches,
    open_resume,
    prepare_resume,
    restore_periodic,
)
from lib.training.session import HISTORY_EVERY, Session, budget_share
from lib.training.tracking import Tracker

# ---------------------------------------------------------------------------
# What the loop does after a step


@dataclass(frozen=True)
class Cadence:
    """Every how many steps the loop logs, saves and scores, and where it ends."""

    total: int
    log_every: int
    save_every: int
    eval_every: int = 0  # 0: scores at the end only
    scores: bool = True  # trainer.eval_samples > 0

    @classmethod
    def of(cls, cfg: Config) -> Cadence:
        t = cfg.trainer
        # history lines at least every HISTORY_EVERY steps: a short session still draws curves
        return cls(cfg.total_steps, min(t.log_every_step, HISTORY_EVERY),
                   t.save_period * t.iterations_per_epoch, t.eval_every, t.eval_samples > 0)


@dataclass(frozen=True)
class Decision:
    log: bool = False  # history line, progress bar, snapshot
    save: bool = False  # last.pt
    periodic: bool = False  # ... and step_<N>.pt
    evaluate: bool = False  # scores, the collapse watch, best.pt
    stop: bool = False  # the run stops after this step (time budget or Ctrl-C)
    roll_back: str | None = None  # why the run goes back to last.pt instead


def decide(step: int, c: Cadence, out_of_time: bool = False, interrupted: bool = False,
           diverged: str | None = None, collapsed: str | None = None) -> Decision:
    """What the loop does after `step`: a pure function of the cadences and the verdicts.

    The last step logs, saves and scores. The time budget or Ctrl-C stops the run after
    this step, saved; the budget also scores (a session ends scored), Ctrl-C does not (the
    user wants out). A divergence or a collapse rolls back instead of anything else.
    """
    if diverged or collapsed:
        return Decision(roll_back=diverged or collapsed)
    last = step == c.total
    stop = not last and (out_of_time or interrupted)
    periodic = step % c.save_every == 0
    scheduled_eval = bool(c.eval_every) and step % c.eval_every == 0
    return Decision(log=step % c.log_every == 0 or last, save=periodic or last or stop,
                    periodic=periodic, stop=stop,
                    evaluate=c.scores and (scheduled_eval or last or (stop and out_of_time)))


# ---------------------------------------------------------------------------
# The loop


def train(cfg: Config, out_root: str | Path = "outputs", run_dir: str | Path | None = None,
          resume: str | Path | Resumed | None = None, progress: bool = True) -> Path:
    """Train `cfg`'s model; return its run folder.

    `resume` continues that run folder from its last.pt - in place, or in `run_dir`
    when given (a copy: the source may be read-only) - with the checkpoint's config
    and the trainer fields `cfg` changes (lib.training.resume.resume_config); or a
    `Resumed`, its last.pt already loaded (`resume()` below).
    """
    entered = time.monotonic()  # the time budget counts start-up too
    if cfg.name:
        check_name(cfg.name)  # before any start-up work: it names the run folder
    # resume: last.pt loaded once; the checkpoint's config, with the trainer fields asked now
    if resume is not None and not isinstance(resume, Resumed):
        resume = open_resume(resume, cfg)
    if resume is not None:
        cfg = resume.cfg
    engine = setup_engine(cfg.trainer)
    family, t = FAMILIES[cfg.family], cfg.trainer
    cache_dir = Path(cfg.data.root) / "cache"

    # the data, resident on the device; the nets, their optimizers and EMA
    seed_everything(t.seed)  # the same initial weights on every rank
    with engine.main_first():  # rank 0 writes the dataset cache, the others read it
        if resume is not None and engine.is_main:
            fetch_caches(resume.run, cache_dir)  # a previous session's, kept in its run folder
        data = load_dataset(**asdict(cfg.data))
    parts = family.build(cfg, data, engine)
    parts.class_names = data.class_names
    family.prepare_sampling(parts, cfg)
    parts.nets = {name: engine.wrap(net) for name, net in parts.nets.items()}
    if engine.rank:  # each rank its own noise and batches; rank 0 as a single process
        seed_everything(t.seed + engine.rank)
    batches = Batches(data, t.batch_size, engine, t.seed + engine.rank)

    # the run folder, claimed and locked by rank 0: a new one or the resumed one
    run = claim_run(cfg, engine, out_root, run_dir, resume)

    # every state of the checkpoint; the history and snapshots after it are redone
    cadence = Cadence.of(cfg)
    guard, start, counters = Guard(t), 0, {"images_seen": 0, "train_seconds": 0.0}
    if resume is not None:
        restore_checkpoint(resume.ckpt, parts, batches, engine, guard, resume.run.last)
        start, counters = resume.ckpt["step"], resume.ckpt["counters"]
        if engine.is_main:
            forget_after(run, start)
            restore_periodic(run, start, cadence.save_every)
    if engine.is_main:
        cfg.save(run.config)  # a resume may have changed trainer fields

    # tracking, and the evaluator (built after the RNG is restored: it must not move it)
    tracker = Tracker(run.root, cfg.wandb, run.name, cfg.to_dict(), enabled=engine.is_main)
    # a time budget gives the reference features a share; the rest waits for the next session
    evaluator = (make_evaluator(cfg, data, engine, seconds=budget_share(cfg))
                 if engine.is_main and t.eval_samples else None)
    if engine.is_main:  # the caches travel with the run: the next session starts at once
        keep_caches(run, cache_dir, cached_files(cache_dir, cfg.data.dataset, cfg.data.image_size))
        if evaluator is not None:
            keep_caches(run, evaluator.cache_dir, evaluator.cache_files)
    s = Session(cfg, family, engine, parts, batches, guard, run, tracker, evaluator, counters,
                entered, start, progress)
    s.begin()  # what the budget affords; a new run's first snapshot and last.pt

    step, stop = start, False
    with s:  # Ctrl-C asks the loop to stop (Session.interrupted); the lock is released
        while step < cadence.total and not stop:
            # one iteration of the family's recipe (lib/families: update, schedulers, EMA)
            step += 1
            x, y = batches.next()
            logs = family.step(parts, x, y, step, engine, cfg)
            s.count(x.shape[0] * engine.world_size)
            guard.watch(step, logs)

            # what this step is due for; a stop for the time budget or Ctrl-C (rank 0's word)
            out_of_time = s.out_of_time()
            interrupted = not out_of_time and s.interrupted()
            due = decide(step, cadence, out_of_time, interrupted)
            # divergence, judged where the loop logs or saves anyway (one device sync); then
            # the scores and the collapse watch
            diverged = s.diverged(step, before_save=due.save) if due.log or due.save else None
            metrics, collapsed = (s.evaluate(step) if due.evaluate and diverged is None
                                  else ({}, None))
            act = decide(step, cadence, out_of_time, interrupted, diverged, collapsed)

            # divergence or collapse: back to last.pt with a lower learning rate
            if act.roll_back:
                step = s.roll_back(act.roll_back, step)
                continue
            # history line, progress bar and snapshot; then the checkpoint
            if act.log:
                s.log(step, logs, metrics)
            elif metrics:
                tracker.log(metrics, step)
            if act.save:
                s.save(step, periodic=act.periodic)
            stop = act.stop
        s.finish(step, stopped=stop)
    return run.root


def claim_run(cfg: Config, engine: Engine, out_root: str | Path, run_dir: str | Path | None,
              resume: Resumed | None) -> RunDir:
    """The run folder, claimed and locked by rank 0: a new one (never an existing folder:
    name-2 when taken), or the resumed one (rank 0 copies it)."""
    if engine.is_main:
        if resume is not None:
            run = prepare_resume(resume.run.root, run_dir)
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
    if config is not None:
        resumed = open_resume(run_dir, load_config(config, overrides))
    else:
        resumed = open_resume(run_dir, overrides=overrides)
    target = Path(out_root) / resumed.run.root.resolve().name if out_root is not None else None
    return train(resumed.cfg, run_dir=target, resume=resumed, progress=progress)
