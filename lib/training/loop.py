"""The training loop: one skeleton for every model family.

`train()` reads top to bottom in the order the work happens - set up, resume,
then each step: the family's update, schedulers and EMA, the divergence check,
evaluation, the time budget, rollback, log, checkpoint - and at the end the
media and summary. What its stanzas share (folder, guard, tracker, counters,
clock) is one small `Session`, whose methods are the longer stanzas. What a
family does lives in lib/families; what is saved, in lib/training/state.py.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from lib import viz
from lib.checkpoint import atomic_save, load_checkpoint
from lib.config import Config, apply_override, load_config
from lib.data import load_dataset
from lib.device import Engine, seed_everything, setup_engine
from lib.families import FAMILIES, Family, Parts
from lib.metrics import Evaluator
from lib.rundir import RunDir, check_name, claim_exact, claim_new, lock, unlock
from lib.training.evaluation import best_fid, evaluate_parts, make_evaluator, sampling_cost
from lib.training.guard import DivergenceError, Guard
from lib.training.state import (
    BatchSampler,
    check_folder,
    default_run_name,
    forget_after,
    make_checkpoint,
    prepare_resume,
    prune_checkpoints,
    restore_checkpoint,
    restore_periodic,
    resumable,
    resume_config,
)
from lib.training.tracking import Tracker, read_history


def train(cfg: Config, out_root: str | Path = "outputs", run_dir: str | Path | None = None,
          resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train `cfg`'s model; return its run folder.

    `resume` continues that run folder from its last.pt - in place, or in `run_dir`
    when given (a copy: the source may be read-only) - with the checkpoint's config
    and the trainer fields `cfg` changes (lib.training.state.resume_config).
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
    parts.ema = family.make_ema(parts, t)
    parts.nets = {name: engine.wrap(net) for name, net in parts.nets.items()}
    if engine.rank:  # each rank its own noise and batches; rank 0 as a single process
        seed_everything(t.seed + engine.rank)
    sampler = BatchSampler(data, t.batch_size, engine, t.seed + engine.rank)

    # the run folder, claimed and locked by rank 0: a new one (never an existing folder:
    # name-2 when taken), or the resumed one (rank 0 copies it)
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
            # one update of the family's recipe, then its schedulers and the EMA
            step += 1
            x, y = sampler.next()
            logs = family.step(parts, x, y, step, engine, cfg)
            for sched in parts.schedulers.values():
                sched.step()
            if parts.ema is not None:
                parts.ema.update(parts.nets, step)
            s.count(x.shape[0] * engine.world_size)
            guard.watch(step, logs)

            is_log = step % t.log_every_step == 0 or step == total
            is_save = step % save_every == 0 or step == total
            is_eval = t.eval_samples and ((t.eval_every and step % t.eval_every == 0)
                                          or step == total)
            # divergence: judged where the loop logs or saves anyway (one device sync)
            reason = s.diverged(step, before_save=is_save) if is_log or is_save else None
            # evaluation: scores, the collapse watch (a reason to roll back, if asked), best.pt
            metrics = {}
            if reason is None and is_eval:
                metrics, reason = s.evaluate(step)
            # time budget or Ctrl-C: stop after this step, saved (checked first); media only
            # for the budget, which leaves time for them
            stop = reason is None and step < total and (s.out_of_time() or s.interrupted())
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


# ---------------------------------------------------------------------------
# What the loop's stanzas share


@dataclass
class Clock:
    """The current logging window: its start and the images trained in it."""

    start: float = field(default_factory=time.monotonic)
    images: int = 0

    def reset(self) -> None:
        self.start, self.images = time.monotonic(), 0

    def read(self) -> tuple[float, float]:
        """(seconds, images per second) of the window so far."""
        seconds = time.monotonic() - self.start
        return seconds, self.images / max(seconds, 1e-9)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C honoured: the step finished and last.pt saved (the CLI exits with 130; a
    notebook cell stops, as for any KeyboardInterrupt)."""


class Interrupt:
    """Ctrl-C (SIGINT; also Kaggle's interrupt button) turned into a request the loop reads
    after each step. A second Ctrl-C interrupts at once, as Python would."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signals: main only
            self.previous = signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)
        print("\ninterrupt: finishing this step and saving last.pt (Ctrl-C again to stop "
              "at once, losing the steps since the last checkpoint)", file=sys.stderr)

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


@dataclass
class Session:
    cfg: Config
    family: Family
    engine: Engine
    parts: Parts
    sampler: BatchSampler
    guard: Guard
    run: RunDir
    tracker: Tracker
    evaluator: Evaluator | None
    counters: dict  # images_seen, train_seconds: saved with every checkpoint
    entered: float  # when train() was called: the time budget counts start-up too
    start: int  # the step this session starts from
    progress: bool
    steps_done: int = 0  # steps run by this session, redone ones included
    save_cost: float = 0.0  # seconds the last save took: the budget keeps room for one
    clock: Clock = field(default_factory=Clock)
    interrupt: Interrupt = field(default_factory=Interrupt)
    by_interrupt: bool = False  # the run stops for a Ctrl-C

    def __enter__(self):
        self.interrupt.install()
        return self

    def __exit__(self, *exc) -> None:
        self.interrupt.uninstall()
        if self.engine.is_main:
            unlock(self.run)

    def __post_init__(self):
        self.best_fid = (best_fid(self.run, self.evaluator.features, self.start)
                         if self.evaluator else math.inf)
        self.bar = tqdm(total=self.cfg.total_steps, initial=self.start,
                        disable=not (self.progress and self.engine.is_main),
                        desc=f"{self.cfg.family} {self.run.name}", mininterval=10,
                        dynamic_ncols=True)

    def count(self, images: int) -> None:
        """One step done on `images` images (all ranks together)."""
        self.counters["images_seen"] += images
        self.clock.images += images
        self.steps_done += 1
        self.bar.update(1)

    def diverged(self, step: int, before_save: bool) -> str | None:
        """Why the run diverged since the last check, as rank 0 saw it, or None.

        A non-finite or spiking loss; before a save also non-finite weights (a step can
        leave NaN weights behind a finite loss, and those must never be saved).
        """
        reason = self.guard.check()
        if reason is None and before_save and not self.guard.weights_finite(
                list(self.parts.nets.values())):
            reason = f"non-finite weights after step {step}"
        if self.engine.agree(reason is not None):  # every rank rolls back together
            return reason or "divergence seen by rank 0"
        return None

    def evaluate(self, step: int) -> tuple[dict, str | None]:
        """Scores (rank 0 alone), the collapse watch and best.pt: (metrics, a reason to roll
        back when a collapse should, else None)."""
        t0 = time.monotonic()
        metrics = (evaluate_parts(self.family, self.parts, self.evaluator, self.engine,
                                  self.cfg.trainer.seed) if self.evaluator else {})
        self.clock.start += time.monotonic() - t0  # evaluation is not training time
        collapses = self.guard.collapses(step, metrics)
        for event in collapses:
            self.tracker.log(event, step)
            self.bar.write(f"step {step}: {event['message']}", file=sys.stderr)
        if self.engine.agree(bool(collapses) and self.cfg.trainer.collapse_rollback):
            return metrics, collapses[0]["message"] if collapses else "collapse seen by rank 0"
        # every rank joins the checkpoint (it gathers their RNG); rank 0 writes it
        if self.engine.broadcast_object(metrics.get("fid", math.inf) < self.best_fid):
            self.best_fid = metrics.get("fid", self.best_fid)
            ckpt = make_checkpoint(self.cfg, self.parts, self.sampler, self.engine,
                                   self.guard, step, self.counters)
            if self.engine.is_main:
                atomic_save(ckpt, self.run.best)
        return metrics, None

    def out_of_time(self) -> bool:
        """Rank 0's verdict: would one more step and a save overrun trainer.max_minutes?"""
        budget = self.cfg.trainer.max_minutes * 60
        if not budget:
            return False
        elapsed = time.monotonic() - self.entered
        per_step = elapsed / self.steps_done
        return self.engine.agree(elapsed + per_step + self.save_cost + 5 > budget)

    def interrupted(self) -> bool:
        """Has Ctrl-C been pressed (on rank 0: every rank stops at the same step)?"""
        self.by_interrupt = self.engine.agree(self.interrupt.requested)
        return self.by_interrupt

    def roll_back(self, reason: str, at_step: int) -> int:
        """Back to last.pt with a lower lr; the step it holds.

        The random streams run on, so new batches follow. Past trainer.max_rollbacks
        the run stops with a DivergenceError.
        """
        ckpt = load_checkpoint(self.run.last, map_location=self.engine.device)
        try:
            event = self.guard.rolled_back(reason, at_step, ckpt["step"])
        except DivergenceError as e:
            self.tracker.log(e.event, at_step)
            self.tracker.finish()
            self.bar.close()
            raise
        restore_checkpoint(ckpt, self.parts, self.sampler, self.engine, None, self.run.last)
        self.guard.scale_lr(self.parts.optimizers, ckpt.get("guard", {}))
        self.counters.update(ckpt["counters"])
        if self.engine.is_main:
            forget_after(self.run, ckpt["step"])
            self.tracker.log(event, ckpt["step"])
        self.save(ckpt["step"], periodic=False)  # last.pt now carries the rollback and its lr
        self.bar.write(f"step {at_step}: {reason}; rolled back to step {ckpt['step']} "
                       f"(rollback {self.guard.rollbacks}/{self.cfg.trainer.max_rollbacks}, "
                       f"lr x{self.guard.lr_scale:g})",
                       file=sys.stderr)  # stdout stays the CLI's answer: the run folder
        self.bar.n = ckpt["step"]
        self.clock.reset()
        return ckpt["step"]

    def log(self, step: int, logs: dict, metrics: dict) -> None:
        """A history line (losses averaged over the ranks, lr, throughput, counters and
        scores), the progress bar's numbers and a snapshot; then a new timing window."""
        seconds, images_per_sec = self.clock.read()
        record = self.engine.mean_over_ranks({k: _scalar(v) for k, v in logs.items()})
        self.counters["train_seconds"] += seconds
        schedulers = self.parts.schedulers
        record.update({f"lr_{k}": s.get_last_lr()[0] for k, s in schedulers.items()})
        record["lr"] = next(iter(schedulers.values())).get_last_lr()[0]
        if self.parts.ema is not None:  # the decay this step's average was folded in with
            record["ema_decay"] = self.parts.ema.decay_at(step)
        record["images_per_sec"] = images_per_sec
        record.update(self.counters)
        self.tracker.log({**record, **metrics}, step)
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                              if k.startswith(("loss", "d_"))}, refresh=False)
        if self.engine.is_main:
            self.snapshot(step)
        self.clock.reset()

    def snapshot(self, step: int) -> None:
        for prefix, grid in self.family.snapshot(self.parts).items():
            viz.save_png(grid, self.run.snapshot(prefix, step))

    def save(self, step: int, periodic: bool) -> None:
        """last.pt, and step_<N>.pt when periodic. Every rank calls it (the checkpoint
        gathers their RNG states); rank 0 writes."""
        t0 = time.monotonic()
        ckpt = make_checkpoint(self.cfg, self.parts, self.sampler, self.engine, self.guard,
                               step, self.counters)
        if not self.engine.is_main:
            return
        atomic_save(ckpt, self.run.last)
        if periodic:
            atomic_save(ckpt, self.run.periodic(step))
            prune_checkpoints(self.run, self.cfg.trainer.keep_checkpoints)
        self.save_cost = time.monotonic() - t0

    def finish(self, step: int, stopped: bool) -> None:
        """The media and summary.json (rank 0); tracking and the process group closed."""
        self.bar.close()
        run, engine, total = self.run, self.engine, self.cfg.total_steps
        launcher = (f"torchrun --nproc_per_node={engine.world_size}" if engine.distributed
                    else "python")
        if stopped and self.by_interrupt:
            # Ctrl-C: last.pt is saved; no media (the user wants out), the cell stops
            self.tracker.finish()
            engine.close()
            message = (f"interrupted after step {step}/{total}, last.pt saved; resume with: "
                       f"{launcher} -m lib train --resume {run.root}")
            if engine.is_main:
                print(message, file=sys.stderr)
            raise Interrupted(message)
        if engine.is_main:
            viz.save_gif(run.snapshots("step"), run.media("evolution.gif"))
            self.family.finish(self.parts, run)
            sampled_with = self.parts.sampled_with(self.family.sampler)
            grid = run.media("final_grid.png")
            viz.with_caption(Image.open(grid), f"step {step}, {sampled_with} weights",
                             min_width=0).save(grid)
            viz.plot_metrics(read_history(run.root), run.metrics_figure)
            summary = {"step": step, "total_steps": total, "finished": not stopped,
                       "family": self.cfg.family, "precision": engine.precision,
                       "device": str(engine.device), "world_size": engine.world_size,
                       "rollbacks": self.guard.rollbacks, "sampled_with": sampled_with,
                       **self.counters,
                       "sample_seconds_per_image": sampling_cost(self.family, self.parts,
                                                                 engine)}
            run.summary.write_text(json.dumps(summary, indent=2) + "\n")
        self.tracker.finish()
        engine.close()
        if stopped and engine.is_main:
            print(f"time budget of {self.cfg.trainer.max_minutes:g} min reached at step "
                  f"{step}/{total}; resume with: {launcher} -m lib train --resume {run.root}")


def _scalar(v) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)
