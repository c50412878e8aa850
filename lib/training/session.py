"""What the training loop's stanzas share: the `Session` (folder, guard, tracker,
counters, clock) whose methods are the longer stanzas, the logging `Clock`, and Ctrl-C."""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from lib.config import Config
from lib.core import viz
from lib.core.checkpoint import atomic_save, load_checkpoint
from lib.core.device import Engine
from lib.core.progress import progress_bar, write_beside
from lib.core.rundir import RunDir, unlock
from lib.families import Family, Parts
from lib.families.base import CHUNK, fixed_generator
from lib.metrics import Evaluator
from lib.training.batches import Batches
from lib.training.checkpoints import make_checkpoint, prune_checkpoints, restore_checkpoint
from lib.training.evaluation import best_fid, evaluate_parts, rng_untouched, sampling_cost
from lib.training.guard import DivergenceError, Guard
from lib.training.resume import forget_after
from lib.training.tracking import Tracker, read_history

# What a time budget may spend on one thing: start-up work (the reference features), the
# final scores, the first snapshot. What does not fit is deferred or skipped, and said so.
BUDGET_SHARE = 0.25
CHEAP_S = 2.0  # work that costs less is done whatever the budget: a share is never smaller
# Draws of a snapshot's size the end of a session makes: a snapshot, the final grid, the
# summary's sampling cost, DDPM's denoising row
FINISH_DRAWS = 4
PROBE_IMAGES = 16  # sampled to tell the cost per image from the cost per call
MARGIN_S = 10.0  # kept free for the evolution GIF and the metrics figure (~10 s, busy CPU)
# A history line at least every this many steps, whatever log_every_step (the snapshots'
# cadence) says: a session of a few dozen steps draws a loss curve. One device sync each.
HISTORY_EVERY = 5


def budget_share(cfg: Config) -> float | None:
    """Seconds of trainer.max_minutes that one piece of work may take; None: no budget."""
    budget = cfg.trainer.max_minutes * 60
    return max(BUDGET_SHARE * budget, CHEAP_S) if budget else None


# ---------------------------------------------------------------------------
# What the loop's stanzas share


@dataclass
class Clock:
    """The current logging window: its start and the images trained in it; and the moment up
    to which training time was counted into train_seconds."""

    start: float = field(default_factory=time.monotonic)
    images: int = 0
    counted: float = field(default_factory=time.monotonic)

    def reset(self) -> None:
        self.start = self.counted = time.monotonic()
        self.images = 0

    def pause(self, seconds: float) -> None:
        """`seconds` just spent on something else than training (an evaluation)."""
        self.start += seconds
        self.counted += seconds

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
    batches: Batches
    guard: Guard
    run: RunDir
    tracker: Tracker
    evaluator: Evaluator | None
    counters: dict  # images_seen, train_seconds: saved with every checkpoint
    entered: float  # when train() was called: the time budget counts start-up too
    start: int  # the step this session starts from
    progress: bool
    steps_done: int = 0  # steps run by this session, redone ones included
    trained: float = 0.0  # seconds of those steps, counted into train_seconds so far
    save_cost: float = 0.0  # seconds the last save took: the budget keeps room for one
    eval_cost: float = 0.0  # seconds the last evaluation took (or will): one runs at a stop
    sample_cost: float = 0.0  # seconds per sampled image: what the final media will cost
    sample_call: float = 0.0  # seconds per sampling call besides its images
    sample_setup: float = 0.0  # seconds a first draw with new weights adds (BatchNorm stats)
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
        self.budget = self.cfg.trainer.max_minutes * 60  # seconds; 0: none
        # a partial reference set scores nothing this session (make_evaluator said so)
        self.scoring = self.evaluator is not None and self.evaluator.complete
        # plain text in an executed notebook, the widget only where a person watches
        self.bar = progress_bar(total=self.cfg.total_steps, initial=self.start,
                                desc=f"{self.cfg.family} {self.run.name}", unit="step",
                                disable=not (self.progress and self.engine.is_main))

    def begin(self) -> None:
        """Before the first step: what the budget affords (sampling timed on a few images),
        the first snapshot and last.pt of a new run, and the clock started."""
        if self.budget and self.engine.is_main:
            self.time_sampling()
            share, n = budget_share(self.cfg), self.cfg.trainer.eval_samples
            scores = (self.draw_seconds(n) + n * (self.evaluator.seconds_per_image or 0.0)
                      if self.scoring else 0.0)
            if scores > share:
                self.scoring = False
                print(f"scores: none this session (~{scores:.0f} s for {n} images would take "
                      f"over a quarter of the {self.cfg.trainer.max_minutes:g} min budget); "
                      f"score the run later with: python -m lib evaluate {self.run.root}")
            self.eval_cost = scores if self.scoring else 0.0
        if self.start == 0:  # the first snapshot, and a rollback target from the first step on
            if self.engine.is_main and self.affords_snapshot():
                self.snapshot(0)
            self.clock.reset()
            self.save(0, periodic=False)
        self.clock.reset()

    def time_sampling(self) -> None:
        """sample_setup, sample_call and sample_cost, from a first draw of 1 image with
        these weights (set-up included), a second, and a batch of PROBE_IMAGES when the second
        took under a second or that surely costs less than half a budget's share (else all
        is counted per image: a slow draw, as DDPM's on a CPU, grows with its images)."""
        def draw(n: int) -> float:
            t0 = time.monotonic()
            self.family.sample(self.parts, n, None, fixed_generator(0))
            if self.engine.device.type == "cuda":
                torch.cuda.synchronize(self.engine.device)
            return time.monotonic() - t0

        with rng_untouched(self.engine):
            first, second = draw(1), draw(1)
            self.sample_cost = second
            if second < 1 or self.sample_cost * PROBE_IMAGES < budget_share(self.cfg) / 2:
                more = max(0.0, draw(PROBE_IMAGES) - second)
                self.sample_cost = more / (PROBE_IMAGES - 1)
                self.sample_call = max(0.0, second - self.sample_cost)
        self.sample_setup = max(0.0, first - second)

    def draw_seconds(self, n: int) -> float:
        """What sampling `n` images will take, as time_sampling measured it."""
        return self.sample_call * math.ceil(n / CHUNK) + n * self.sample_cost

    def affords_snapshot(self) -> bool:
        """No budget, or a snapshot's sampling fits in its share (else: one line says so).
        The weights are those time_sampling drew with: no set-up left."""
        seconds = self.draw_seconds(len(self.parts.fixed.get("noise", ())))
        if not self.budget or seconds <= budget_share(self.cfg):
            return True
        print(f"snapshot at step 0 skipped: ~{seconds:.0f} s of sampling would take over a "
              f"quarter of the {self.cfg.trainer.max_minutes:g} min budget")
        return False

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
                                  self.cfg.trainer.seed) if self.scoring else {})
        self.eval_cost = time.monotonic() - t0 if self.scoring else 0.0
        self.clock.pause(time.monotonic() - t0)  # evaluation is not training time
        collapses = self.guard.collapses(metrics)
        for event in collapses:
            self.tracker.log(event, step)
            write_beside(self.bar, f"step {step}: {event['message']}")
        if self.engine.agree(bool(collapses) and self.cfg.trainer.collapse_rollback):
            return metrics, collapses[0]["message"] if collapses else "collapse seen by rank 0"
        # every rank joins the checkpoint (it gathers their RNG); rank 0 writes it
        if self.engine.broadcast_object(metrics.get("fid", math.inf) < self.best_fid):
            self.best_fid = metrics.get("fid", self.best_fid)
            ckpt = make_checkpoint(self.cfg, self.parts, self.batches, self.engine,
                                   self.guard, step, self.counters)
            if self.engine.is_main:
                atomic_save(ckpt, self.run.best)
        return metrics, None

    def out_of_time(self) -> bool:
        """Rank 0's verdict: would one more step and the session's end (the final scores,
        last.pt, the media) overrun trainer.max_minutes, counted from train()'s call?

        A step costs what this session's steps took on average: start-up, evaluations and
        snapshots are not steps.
        """
        if not self.budget:
            return False
        now = time.monotonic()
        per_step = (self.trained + now - self.clock.counted) / self.steps_done
        # the media get at most a share: what costs more is drawn smaller (finish)
        media = min(self.media_seconds(FINISH_DRAWS), budget_share(self.cfg))
        ending = self.eval_cost + self.save_cost + media + MARGIN_S
        return self.engine.agree(now - self.entered + per_step + ending > self.budget)

    def media_seconds(self, draws: int) -> float:
        """What the end's media cost at full size: the set-up of new weights and `draws`
        draws of a snapshot's size."""
        return self.sample_setup + draws * self.draw_seconds(64)

    def time_left(self) -> float:
        """Seconds of the budget left for sampling (MARGIN_S kept); inf without a budget."""
        if not self.budget or not self.sample_cost:
            return math.inf
        return max(0.0, self.budget - (time.monotonic() - self.entered) - MARGIN_S)

    def media_fit(self, draws: int) -> float:
        """The share of media_seconds(draws) the time left affords (1: all, or no budget)."""
        return min(1.0, self.time_left() / max(self.media_seconds(draws), 1e-9))

    def tally(self) -> None:
        """The training time since the last tally into train_seconds (every checkpoint and
        history line carries it: a budget stop between log lines loses none)."""
        now = time.monotonic()
        self.counters["train_seconds"] += now - self.clock.counted
        self.trained += now - self.clock.counted
        self.clock.counted = now

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
        restore_checkpoint(ckpt, self.parts, self.batches, self.engine, None, self.run.last)
        self.guard.scale_lr(self.parts.optimizers, ckpt.get("guard", {}))
        self.counters.update(ckpt["counters"])
        if self.engine.is_main:
            forget_after(self.run, ckpt["step"])
            self.tracker.log(event, ckpt["step"])
        self.clock.reset()  # the steps rolled back count no training time
        self.save(ckpt["step"], periodic=False)  # last.pt now carries the rollback and its lr
        # on stderr: stdout stays the CLI's answer, the run folder
        write_beside(self.bar, f"step {at_step}: {reason}; rolled back to step {ckpt['step']} "
                     f"(rollback {self.guard.rollbacks}/{self.cfg.trainer.max_rollbacks}, "
                     f"lr x{self.guard.lr_scale:g})")
        self.bar.n = ckpt["step"]
        return ckpt["step"]

    def log(self, step: int, logs: dict, metrics: dict) -> None:
        """A history line (losses averaged over the ranks, lr, throughput, counters and
        scores), the progress bar's numbers and, every log_every_step, a snapshot; then a
        new timing window."""
        images_per_sec = self.clock.read()[1]
        record = self.engine.mean_over_ranks({k: _scalar(v) for k, v in logs.items()})
        self.tally()
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
        if self.engine.is_main and (step % self.cfg.trainer.log_every_step == 0
                                    or step == self.cfg.total_steps):
            self.snapshot(step)
        self.clock.reset()

    def snapshot(self, step: int) -> None:
        for prefix, grid in self.family.snapshot(self.parts).items():
            viz.save_png(grid, self.run.snapshot(prefix, step))

    def save(self, step: int, periodic: bool) -> None:
        """last.pt, and step_<N>.pt when periodic. Every rank calls it (the checkpoint
        gathers their RNG states); rank 0 writes."""
        t0 = time.monotonic()
        self.tally()
        ckpt = make_checkpoint(self.cfg, self.parts, self.batches, self.engine, self.guard,
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
            # the final grid and the family's own media: about two draws of a snapshot's size
            smaller = self.family.finish(self.parts, run, self.media_fit(2))
            if self.parts.standing:  # measured for the final grid: a notebook's rebuild reuses
                atomic_save(self.parts.standing_buffers(), run.standing)
            if smaller:
                print(f"final media: {smaller} this session, to fit the "
                      f"{self.cfg.trainer.max_minutes:g} min budget")
            # a budget stop before any snapshot: the GIF gets one at this step, if it fits
            # (the weights' set-up is paid by now)
            if not run.snapshots("step"):
                fixed = len(self.parts.fixed.get("noise", ()))
                if self.draw_seconds(fixed) <= self.time_left():
                    self.snapshot(step)
                else:
                    print(f"evolution.gif: none this session (no snapshot before step {step}, "
                          f"and the {self.cfg.trainer.max_minutes:g} min budget has no time "
                          f"for one)")
            viz.save_gif(run.snapshots("step"), run.media("evolution.gif"))
            sampled_with = self.parts.sampled_with(self.family.sampling_net)
            grid = run.media("final_grid.png")
            viz.with_caption(Image.open(grid), f"step {step}, {sampled_with} weights",
                             min_width=0).save(grid)
            viz.plot_metrics(read_history(run.root), run.metrics_figure)
            summary = {"step": step, "total_steps": total, "finished": not stopped,
                       "family": self.cfg.family, "precision": engine.precision,
                       "device": str(engine.device), "world_size": engine.world_size,
                       "rollbacks": self.guard.rollbacks, "sampled_with": sampled_with,
                       **self.counters,
                       "sample_seconds_per_image": self.sampling_cost(),
                       # this train() call's wall time, all of it: what max_minutes bounds
                       "session_seconds": time.monotonic() - self.entered}
            run.summary.write_text(json.dumps(summary, indent=2) + "\n")
        self.tracker.finish()
        engine.close()
        if stopped and engine.is_main:
            print(f"time budget of {self.cfg.trainer.max_minutes:g} min reached at step "
                  f"{step}/{total}; resume with: {launcher} -m lib train --resume {run.root}")

    def sampling_cost(self) -> float:
        """Seconds per sampled image for summary.json: measured on 64 images, or estimated
        from what begin() timed when the budget has no room left for 64."""
        left = self.budget - (time.monotonic() - self.entered) if self.budget else math.inf
        if self.sample_cost and left < self.draw_seconds(66) + MARGIN_S:
            return self.draw_seconds(64) / 64
        return sampling_cost(self.family, self.parts, self.engine)


def _scalar(v) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)
