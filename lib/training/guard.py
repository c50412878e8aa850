"""Divergence guard and collapse watch: decide when a run must roll back.

The loop hands every step's logged numbers to `Guard.watch` (no GPU sync:
the values stay on the device) and calls `Guard.check` where it would log or
save anyway, so the cost is one small transfer per log interval. A
non-finite value is a divergence; so, optionally, is a collapse seen by evaluation:
a diversity score falling below `collapse_fraction` of the real data's after an
evaluation at or above it (a GAN's mode collapse; a generator still drawing its first
blobs has not collapsed), or a label sensitivity below `label_sensitivity_min` (a conditional
generator that ignores its label). The loop then restores the last
checkpoint and calls `Guard.rolled_back`, which halves the learning rate and
counts; past `max_rollbacks` it raises `DivergenceError`.

The guard's own state (rollbacks so far, the learning-rate scale) goes into
every checkpoint, so a resumed run counts rollbacks as the uninterrupted one would.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lib.config import TrainerConfig

ROLLBACK_LR_FACTOR = 0.5  # the learning rates after each rollback, relative to before


class DivergenceError(RuntimeError):
    """Training diverged more often than `trainer.max_rollbacks` allows."""


class Guard:
    def __init__(self, cfg: TrainerConfig):
        self.cfg = cfg
        self.rollbacks = 0
        self.lr_scale = 1.0  # product of every rollback's lr factor so far
        self.diverse = False  # an evaluation has read diversity at or above collapse_fraction
        self.pending: list[tuple[int, dict]] = []  # (step, logs) not yet checked

    # -- losses ------------------------------------------------------------

    def watch(self, step: int, logs: dict) -> None:
        """Remember one step's numbers; nothing is read back from the device here."""
        self.pending.append((step, logs))

    def check(self) -> str | None:
        """Judge the steps watched since the last check; the reason when one diverged."""
        pending, self.pending = self.pending, []
        return self._judge(pending) if pending else None

    def _judge(self, pending: list[tuple[int, dict]]) -> str | None:
        device = next((v.device for _, logs in pending for v in logs.values()
                       if isinstance(v, torch.Tensor)), torch.device("cpu"))
        flat = torch.stack([torch.as_tensor(v).detach().to(device, torch.float32).reshape(())
                            for _, logs in pending for v in logs.values()])
        values = iter(flat.tolist())  # the one device -> host transfer
        for step, logs in pending:
            for key in logs:
                value = next(values)
                if not math.isfinite(value):
                    return f"non-finite {key}={value} at step {step}"
        return None

    @staticmethod
    @torch.no_grad()
    def weights_finite(nets: list[nn.Module]) -> bool:
        """A step can leave NaN weights behind a finite loss: never save those."""
        flags = [torch.isfinite(p).all() for net in nets for p in net.parameters()]
        return bool(torch.stack(flags).all()) if flags else True

    # -- collapse ----------------------------------------------------------

    def collapse(self, diversity: float) -> dict | None:
        """A `collapse` event record when diversity fell below the configured fraction, once
        an evaluation has read it at or above (the demo's G reads 0.11 at step 100, before it
        draws digits, then 0.56, 0.68, 0.70)."""
        if not self.diverse:
            self.diverse = diversity >= self.cfg.collapse_fraction  # NaN: not yet
            return None
        return _below("collapse", "diversity", diversity, self.cfg.collapse_fraction,
                      "of the real data's (mode collapse?)")

    def label_collapse(self, sensitivity: float) -> dict | None:
        """A `label_collapse` event record when label sensitivity fell below the minimum."""
        return _below("label_collapse", "label_sensitivity", sensitivity,
                      self.cfg.label_sensitivity_min,
                      "(the generator ignores its class label?)")

    def collapses(self, metrics: dict) -> list[dict]:
        """The collapse events an evaluation's scores show (none when they are absent)."""
        events = []
        if metrics.get("diversity") is not None:
            events.append(self.collapse(metrics["diversity"]))
        if metrics.get("label_sensitivity") is not None:
            events.append(self.label_collapse(metrics["label_sensitivity"]))
        return [e for e in events if e is not None]

    # -- rollback ----------------------------------------------------------

    def rolled_back(self, reason: str, at_step: int, to_step: int) -> dict:
        """Count a rollback to `to_step`; the event record to log.

        Past `max_rollbacks` it raises `DivergenceError`, whose `event` is the record to log.
        """
        self.rollbacks += 1
        self.pending = []
        event = {"event": "rollback", "reason": reason, "diverged_at": at_step,
                 "to_step": to_step, "rollbacks": self.rollbacks}
        if self.rollbacks > self.cfg.max_rollbacks:
            error = DivergenceError(
                f"training diverged ({reason}) with {self.cfg.max_rollbacks} rollback(s) "
                f"already spent (trainer.max_rollbacks); the last good checkpoint is step "
                f"{to_step}. Lower the learning rate, set trainer.grad_clip, or raise "
                f"trainer.max_rollbacks")
            error.event = {**event, "event": "stopped", "message": str(error)}
            raise error
        self.lr_scale *= ROLLBACK_LR_FACTOR
        event["lr_scale"] = self.lr_scale
        return event

    def scale_lr(self, optimizers: dict[str, torch.optim.Optimizer], ckpt_state: dict) -> None:
        """Restored optimizers carry their checkpoint's lr scale; bring them to the run's."""
        relative = self.lr_scale / ckpt_state.get("lr_scale", 1.0)
        for opt in optimizers.values():
            for group in opt.param_groups:
                group["lr"] *= relative

    def state_dict(self) -> dict:
        return {"rollbacks": self.rollbacks, "lr_scale": self.lr_scale, "diverse": self.diverse}

    def load_state_dict(self, state: dict) -> None:
        self.rollbacks = state.get("rollbacks", 0)
        self.lr_scale = state.get("lr_scale", 1.0)  # older checkpoints' loss windows: unused
        self.diverse = state.get("diverse", False)
        self.pending = []


def _below(event: str, score: str, value: float, threshold: float,
           why: str) -> dict | None:
    """An `event` record when `score` fell below `threshold` (0: the watch is off; NaN never
    fires). The message leaves the step out: the record and the printed line carry it."""
    if threshold <= 0 or not value < threshold:
        return None
    return {"event": event, score: value, "threshold": threshold,
            "message": f"{score.replace('_', ' ')} {value:.3g} is below {threshold:g} {why}"}
