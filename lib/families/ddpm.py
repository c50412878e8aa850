"""DDPM: one denoising step per batch; sampler, steps and guidance come from the model args."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from lib.config import Config
from lib.core import viz
from lib.core.device import Engine
from lib.core.rundir import RunDir
from lib.data import ImageData
from lib.families.base import (
    Family,
    Parts,
    chunked,
    eval_mode,
    fixed_generator,
    make_net,
    make_opt_sched,
    resolve_model,
    unwrap,
)

SNAPSHOT_SEED = 2  # the noise a stochastic sampler adds during snapshots, the same every time


def build(cfg: Config, data: ImageData, engine: Engine) -> Parts:
    specs = {"model": resolve_model(cfg.model, data, "model")}
    net = make_net(specs["model"], engine)
    opt, sched = make_opt_sched(net, cfg.optimizer, cfg.lr_scheduler, engine)
    args = specs["model"]["args"]  # image_size, n_channels, num_classes filled from the data
    gen = fixed_generator(cfg.trainer.seed + 1)
    fixed = {}
    if args["num_classes"] > 0:  # one row of 8 per class (at most 16 rows), names beside them
        rows = min(args["num_classes"], 16)
        fixed["labels"] = torch.arange(rows).repeat_interleave(8).to(engine.device)
    n = len(fixed["labels"]) if "labels" in fixed else 64
    shape = (n, args["n_channels"], args["image_size"], args["image_size"])
    fixed["noise"] = torch.randn(shape, generator=gen).to(engine.device)  # x_T of every snapshot
    return Parts(nets={"model": net}, optimizers={"model": opt}, schedulers={"model": sched},
                 specs=specs, fixed=fixed)


def step(parts: Parts, x: torch.Tensor, y, it: int, engine: Engine,
         cfg: Config) -> dict[str, torch.Tensor]:
    """One denoising step (a random t per image, predict the added noise, MSE), then the
    scheduler and the moving average."""
    with engine.autocast():
        loss = parts.nets["model"](x, y)
    engine.backward_step("model", loss, parts.optimizers["model"], cfg.trainer.grad_clip)
    parts.schedulers["model"].step()
    if parts.ema is not None:
        parts.ema.update(parts.nets, it)
    return {"loss": loss.detach()}


def draw(parts: Parts, **kwargs):
    """model.sample with the sampling weights (EMA) in eval mode (no dropout).

    Snapshots pass their own generator: a stochastic sampler (eta > 0) then
    redraws the same noise each time and never touches the training RNG.
    """
    model = parts.sampling_weights("model")
    with eval_mode(model):
        return unwrap(model).sample(**kwargs)


def sample(parts: Parts, n: int, labels=None, generator=None) -> torch.Tensor:
    num_classes = unwrap(parts.sampling_weights("model")).num_classes
    if labels is None and num_classes > 0:
        labels = torch.arange(n) % num_classes  # classes in equal shares
    return chunked(lambda idx, y: draw(parts, n=len(idx), labels=y, generator=generator).float(),
                   torch.arange(n), labels)


def snapshot(parts: Parts, rows: int | None = None, steps: int | None = None) -> dict:
    """The fixed noise's grid (its first `rows` rows of 8), at `steps` sampler steps."""
    n = len(parts.fixed["noise"]) if rows is None else 8 * rows
    labels = parts.fixed.get("labels")
    images = draw(parts, n=n, labels=None if labels is None else labels[:n],
                  noise=parts.fixed["noise"][:n], steps=steps,
                  generator=fixed_generator(SNAPSHOT_SEED))
    return {"step": viz.make_grid(images.float(), nrow=8)}


def finish(parts: Parts, run: RunDir, fit: float) -> str | None:
    """final_grid.png and denoising.gif; with `fit` < 1 (the share of their full cost the
    time budget leaves) fewer rows of the grid, then fewer sampler steps: said in the note."""
    rows = len(parts.fixed["noise"]) // 8
    model = unwrap(parts.sampling_weights("model"))
    steps = len(model.timestep_sequence(model.sampler, None)) - 1
    keep, fewer = media_size(rows, steps, fit, model.sampler != "ddpm")
    grid = snapshot(parts, keep, fewer)["step"]
    labels = parts.fixed.get("labels")
    if labels is not None and parts.class_names:
        names = [parts.class_names[i] for i in labels[: 8 * keep: 8].tolist()]
        viz.label_rows(grid, names).save(run.media("final_grid.png"))
    else:
        viz.save_png(grid, run.media("final_grid.png"), scale=max(1, 512 // grid.shape[-1]))
    save_denoising_gif(parts, run.media("denoising.gif"), steps=fewer)
    if (keep, fewer) == (rows, steps):
        return None
    return f"final grid {8 * keep} of {8 * rows} images at {fewer} of {steps} sampler steps"


def media_size(rows: int, steps: int, fit: float, can_skip: bool) -> tuple[int, int]:
    """Rows of the final grid and sampler steps that cost about `fit` of the full grid and
    the denoising row (`rows + 1` rows at `steps`): rows first, then steps when the
    sampler can skip some (the ancestral one takes all)."""
    budget = fit * (rows + 1) * steps  # row-steps
    keep = max(1, min(rows, int(budget / steps) - 1))
    if not can_skip or budget >= (keep + 1) * steps:
        return keep, steps
    return keep, max(1, int(budget / (keep + 1)))


def save_denoising_gif(parts: Parts, path: Path, max_frames: int = 40,
                       steps: int | None = None) -> None:
    """One row of images (one per class when conditional) from x_T to x_0, frame by frame,
    at `steps` sampler steps (the model's own by default)."""
    model = unwrap(parts.sampling_weights("model"))
    labels = parts.fixed.get("labels")
    labels = labels[::8][:10] if labels is not None else None  # one image per class
    n = len(labels) if labels is not None else 8
    _, path_x = draw(parts, n=n, labels=labels, noise=parts.fixed["noise"][:n], steps=steps,
                     generator=fixed_generator(SNAPSHOT_SEED), return_trajectory=True)
    # path_x: (steps + 1, n, C, H, W), x_T first
    times = model.timestep_sequence(model.sampler, steps)
    keep = torch.linspace(0, len(path_x) - 1, min(max_frames, len(path_x))).round().long()
    with tempfile.TemporaryDirectory() as tmp:
        frames, captions = [], []
        for i in keep.unique().tolist():
            frames.append(viz.save_png(viz.make_grid(path_x[i].float(), nrow=n),
                                       Path(tmp) / f"{i:05d}.png"))
            captions.append("x_0" if times[i] < 0 else f"t = {times[i]}")
        viz.save_gif(frames, path, captions, duration_ms=150, final_hold_ms=2000)


def sampling_notes(parts: Parts) -> dict:
    """{"sampler": "dpm++2m 20 steps"}: a diffusion model's score depends on the sampler
    that drew its images and how many network calls it took."""
    model = unwrap(parts.sampling_weights("model"))
    steps = len(model.timestep_sequence(model.sampler, None)) - 1
    return {"sampler": f"{model.sampler} {steps} steps"}


FAMILY = Family(name="ddpm", sampling_net="model", averaged=("model",), color="tab:red",
                build=build, step=step, snapshot=snapshot, sample=sample, finish=finish,
                sampling_notes=sampling_notes)
