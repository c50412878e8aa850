"""Training: one loop skeleton shared by every model family.

A family (DCGAN, CVAE, DDPM) is four plain functions gathered in a `Family`:
`build` makes the networks, optimizers and schedulers (`Parts`), `step` does
one training iteration and returns numbers to log, `snapshot` renders the
fixed-noise / fixed-batch grids, `sample` draws images for evaluation, and
`finish` writes the family's final media. Everything else - the run folder,
history, checkpoints, resume, time budget, EMA, progress bar - lives once,
in `train()`, where the order of work is visible in one loop.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from lib import viz
from lib.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    atomic_save,
    build_model,
    load_checkpoint,
)
from lib.config import (
    Config,
    ConfigError,
    ModelSpec,
    OptimizerConfig,
    SchedulerConfig,
    apply_override,
)
from lib.data import ImageData, load_dataset, to_float, to_uint8
from lib.device import Engine, make_optimizer, seed_everything, setup_engine
from lib.guard import DivergenceError, Guard
from lib.metrics import Evaluator, MetricsError
from lib.tracking import Tracker, read_history, truncate_history

# ---------------------------------------------------------------------------
# What a family provides


@dataclass
class Parts:
    nets: dict[str, nn.Module]  # trained networks, saved by name
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    models: dict[str, dict]  # name -> {"type", "args"} resolved, to rebuild without a config
    ema: dict[str, nn.Module] = field(default_factory=dict)  # EMA copies, by net name
    fixed: dict[str, torch.Tensor] = field(default_factory=dict)  # fixed noise/labels/batch
    class_names: list[str] | None = None

    def net(self, name: str) -> nn.Module:
        """The weights to sample with: the EMA copy when there is one, never a DDP wrapper
        (its forward is a collective, and rank 0 samples alone)."""
        return self.ema[name] if name in self.ema else _local(self.nets[name])


@dataclass(frozen=True)
class Family:
    build: Callable[[Config, ImageData, Engine], Parts]
    step: Callable[..., dict[str, float]]  # (parts, x, y, step, engine, cfg) -> logs
    snapshot: Callable[[Parts], dict[str, torch.Tensor]]  # prefix -> uint8 grid
    sample: Callable[..., torch.Tensor]  # (parts, n, labels, generator) -> [-1, 1] images
    finish: Callable[[Parts, Path], None]  # final_grid.png and family-specific media
    # (parts, x [-1, 1] on the device, y) -> [-1, 1] reconstructions, for models that have them
    reconstruct: Callable[..., torch.Tensor] | None = None


# ---------------------------------------------------------------------------
# Shared building blocks


def resolve_model(spec: ModelSpec, data: ImageData, where: str) -> dict:
    """Fill image_size / n_channels / num_classes from the data; refuse contradictions."""
    from lib.models import MODEL_TYPES

    params = inspect.signature(MODEL_TYPES[spec.type].__init__).parameters
    args = dict(spec.args)
    from_data = {"image_size": data.image_size, "n_channels": data.channels,
                 "num_classes": data.num_classes}
    for key, value in from_data.items():
        if key not in params:
            continue
        if key not in args:
            args[key] = value
        elif key != "num_classes" and args[key] != value:
            raise ConfigError(
                f"{where}.args.{key}={args[key]} but the {data.name} data has {key}={value}; "
                f"remove the argument or set data.{'channels' if key == 'n_channels' else key}")
    if params.get("num_classes") and args.get("num_classes", 0) > data.num_classes:
        raise ConfigError(f"{where}.args.num_classes={args['num_classes']} but {data.name} "
                          f"has {data.num_classes} classes")
    return {"type": spec.type, "args": args}


def make_net(resolved: dict, engine: Engine) -> nn.Module:
    try:
        net = build_model(resolved["type"], resolved["args"])
    except (ValueError, RuntimeError, TypeError) as e:  # the model's own checks on its args
        raise ConfigError(f"{resolved['type']} with args {resolved['args']}: {e}") from None
    return engine.prepare(net)


def make_opt_sched(net: nn.Module, opt: OptimizerConfig | None,
                   sched: SchedulerConfig | None, engine: Engine):
    opt = opt or OptimizerConfig()
    optimizer = make_optimizer(net.parameters(), opt.lr, opt.betas, opt.weight_decay,
                               engine.device)
    gamma = sched.gamma if sched else 1.0
    return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)


def fixed_generator(seed: int) -> torch.Generator:
    """Snapshots and evaluation draw from their own generator, never the training RNG."""
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------
# DCGAN


def build_dcgan(cfg: Config, data: ImageData, engine: Engine) -> Parts:
    models = {"generator": resolve_model(cfg.generator, data, "generator"),
              "discriminator": resolve_model(cfg.discriminator, data, "discriminator")}
    nets = {name: make_net(spec, engine) for name, spec in models.items()}
    opt_g, sched_g = make_opt_sched(nets["generator"], cfg.generator_optimizer,
                                    cfg.generator_lr_scheduler, engine)
    opt_d, sched_d = make_opt_sched(nets["discriminator"], cfg.discriminator_optimizer,
                                    cfg.discriminator_lr_scheduler, engine)
    latent = models["generator"]["args"].get("latent_dim", 100)
    noise = torch.randn(64, latent, generator=fixed_generator(cfg.trainer.seed + 1))
    return Parts(nets=nets, optimizers={"generator": opt_g, "discriminator": opt_d},
                 schedulers={"generator": sched_g, "discriminator": sched_d}, models=models,
                 fixed={"noise": noise.to(engine.device)})


def dcgan_step(parts: Parts, x: torch.Tensor, y, step: int, engine: Engine,
               cfg: Config) -> dict[str, float]:
    """The reference's iteration: D on real then fake, one D update; then one G update."""
    G, D = parts.nets["generator"], parts.nets["discriminator"]
    b = x.shape[0]
    ones = torch.ones(b, device=x.device)
    zeros = torch.zeros(b, device=x.device)
    noise = torch.randn(b, parts.fixed["noise"].shape[1], device=x.device)
    clip = cfg.trainer.grad_clip

    with engine.autocast():
        out_real = D(x)  # separate real and fake passes: BatchNorm sees one kind per batch
        fake = G(noise)
        out_fake = D(fake.detach())
        loss_d = (F.binary_cross_entropy_with_logits(out_real.float(), ones)
                  + F.binary_cross_entropy_with_logits(out_fake.float(), zeros))
    engine.backward_step("discriminator", loss_d, parts.optimizers["discriminator"], clip)

    # D's weight gradients are not needed for G's update: freezing them saves ~13%.
    # Under DDP, D runs without its wrapper here: the wrapper would wait for D gradients.
    D.requires_grad_(False)
    with engine.autocast():
        out_g = _local(D)(fake)
        loss_g = F.binary_cross_entropy_with_logits(out_g.float(), ones)
    engine.backward_step("generator", loss_g, parts.optimizers["generator"], clip)
    D.requires_grad_(True)

    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(out_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(out_fake.detach().float()).mean(),
            "d_fake_after": torch.sigmoid(out_g.detach().float()).mean()}


@torch.inference_mode()
def dcgan_sample(parts: Parts, n: int, labels=None, generator=None) -> torch.Tensor:
    G = parts.net("generator")
    was_training = G.training
    G.eval()
    latent = parts.fixed["noise"].shape[1]
    z = torch.randn(n, latent, generator=generator).to(parts.fixed["noise"].device)
    out = torch.cat([G(chunk) for chunk in z.split(256)]).float()
    G.train(was_training)
    return out


@torch.inference_mode()
def dcgan_snapshot(parts: Parts) -> dict[str, torch.Tensor]:
    G = parts.net("generator")
    was_training = G.training
    G.eval()
    images = G(parts.fixed["noise"]).float()  # (64, C, H, W)
    G.train(was_training)
    return {"step": viz.make_grid(images, nrow=8)}


def dcgan_finish(parts: Parts, run_dir: Path) -> None:
    viz.save_png(dcgan_snapshot(parts)["step"], run_dir / "final_grid.png",
                 scale=max(1, 256 // parts.fixed["noise"].shape[0]))


# ---------------------------------------------------------------------------
# CVAE

CVAE_NOISE_PER_CLASS = 8  # columns of the generation grid: one fixed z each, for every class
CVAE_RECON_IMAGES = 16  # fixed real images whose reconstructions are snapshotted


def build_cvae(cfg: Config, data: ImageData, engine: Engine) -> Parts:
    if data.labels is None:
        raise ConfigError(f"model: the CVAE needs class labels but the {data.name} data has "
                          "none; use a labelled dataset (digits, shapes, mnist, artbench, "
                          "or a folder with one subfolder per class)")
    models = {"model": resolve_model(cfg.model, data, "model")}
    net = make_net(models["model"], engine)
    opt, sched = make_opt_sched(net, cfg.optimizer, cfg.lr_scheduler, engine)
    gen = fixed_generator(cfg.trainer.seed + 1)
    noise = torch.randn(CVAE_NOISE_PER_CLASS, _unwrap(net).latent_dim, generator=gen)
    idx = torch.randperm(len(data), generator=gen)[:CVAE_RECON_IMAGES]
    fixed = {"noise": noise,
             "recon_x": to_float(data.images[idx]), "recon_y": data.labels[idx]}
    return Parts(nets={"model": net}, optimizers={"model": opt}, schedulers={"model": sched},
                 models=models, fixed={k: v.to(engine.device) for k, v in fixed.items()})


def cvae_step(parts: Parts, x: torch.Tensor, y, step: int, engine: Engine,
              cfg: Config) -> dict[str, float]:
    """One ELBO step; the KL weight follows the model's warm-up."""
    net = parts.nets["model"]
    kl_weight = _unwrap(net).kl_weight_at(step)
    with engine.autocast():
        out = net(x, y, kl_weight=kl_weight)
    engine.backward_step("model", out["loss"], parts.optimizers["model"], cfg.trainer.grad_clip)
    return {"loss": out["loss"].detach(), "recon": out["recon"].detach(),
            "kl": out["kl"].detach(), "kl_weight": kl_weight}


@torch.inference_mode()
def cvae_sample(parts: Parts, n: int, labels=None, generator=None) -> torch.Tensor:
    """n images; classes cycle 0, 1, ..., K-1, 0, ... unless `labels` (n,) are given."""
    model = _unwrap(parts.net("model"))
    if labels is None:
        labels = torch.arange(n) % model.num_classes
    z = torch.randn(n, model.latent_dim, generator=generator)
    return torch.cat([model.sample(y, z=zc) for y, zc in zip(labels.split(256), z.split(256),
                                                              strict=True)]).float()


@torch.inference_mode()
def cvae_reconstruct(parts: Parts, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reconstructions of x (B, C, H, W) in [-1, 1] by the sampling weights, in batches of 256."""
    model = _unwrap(parts.net("model"))
    return torch.cat([model.reconstruct(xc, yc).float()
                      for xc, yc in zip(x.split(256), y.split(256), strict=True)])


def cvae_generation_grid(parts: Parts) -> torch.Tensor:
    """One row per class, one column per fixed noise vector: uint8 (3, H', W')."""
    model = _unwrap(parts.net("model"))
    noise = parts.fixed["noise"]  # (M, latent)
    k, m = model.num_classes, noise.shape[0]
    labels = torch.arange(k, device=noise.device).repeat_interleave(m)  # (K * M,)
    return viz.make_grid(model.sample(labels, z=noise.repeat(k, 1)).float(), nrow=m)


@torch.inference_mode()
def cvae_snapshot(parts: Parts) -> dict[str, torch.Tensor]:
    """`step`: generations (fixed noise x every class); `recon`: reconstructions, each row of
    them above the row of the real images they came from."""
    model = _unwrap(parts.net("model"))
    x, y = parts.fixed["recon_x"], parts.fixed["recon_y"]
    x_hat = model.reconstruct(x, y).float()
    half = len(x) // 2
    pairs = torch.cat([x_hat[:half], x[:half], x_hat[half:], x[half:]])  # (2N, C, H, W)
    return {"step": cvae_generation_grid(parts), "recon": viz.make_grid(pairs, nrow=half)}


def cvae_finish(parts: Parts, run_dir: Path) -> None:
    samples = run_dir / "samples"
    viz.save_gif(viz.snapshot_frames(samples, "recon_"), run_dir / "reconstruction.gif")
    viz.save_gif(viz.snapshot_frames(samples, "step_"), run_dir / "generation.gif")
    model = _unwrap(parts.net("model"))
    names = parts.class_names or [str(k) for k in range(model.num_classes)]
    with torch.inference_mode():
        grid = cvae_generation_grid(parts)
    viz.label_rows(grid, names[: model.num_classes], min_width=512).save(
        run_dir / "final_grid.png")


# ---------------------------------------------------------------------------
# DDPM

SNAPSHOT_SEED = 2  # the noise a stochastic sampler adds during snapshots, the same every time


def build_ddpm(cfg: Config, data: ImageData, engine: Engine) -> Parts:
    """One denoising network; sampler, steps and guidance come from its model args."""
    models = {"model": resolve_model(cfg.model, data, "model")}
    net = make_net(models["model"], engine)
    opt, sched = make_opt_sched(net, cfg.optimizer, cfg.lr_scheduler, engine)
    args = models["model"]["args"]  # image_size, n_channels, num_classes filled from the data
    gen = fixed_generator(cfg.trainer.seed + 1)
    fixed = {}
    if args["num_classes"] > 0:  # one row of 8 per class (at most 16 rows), names beside them
        rows = min(args["num_classes"], 16)
        fixed["labels"] = torch.arange(rows).repeat_interleave(8).to(engine.device)
    n = len(fixed["labels"]) if "labels" in fixed else 64
    shape = (n, args["n_channels"], args["image_size"], args["image_size"])
    fixed["noise"] = torch.randn(shape, generator=gen).to(engine.device)  # x_T of every snapshot
    return Parts(nets={"model": net}, optimizers={"model": opt}, schedulers={"model": sched},
                 models=models, fixed=fixed)


def ddpm_step(parts: Parts, x: torch.Tensor, y, step: int, engine: Engine,
              cfg: Config) -> dict[str, float]:
    """One denoising step: a random t per image, predict the added noise, MSE."""
    with engine.autocast():
        loss = parts.nets["model"](x, y)
    engine.backward_step("model", loss, parts.optimizers["model"], cfg.trainer.grad_clip)
    return {"loss": loss.detach()}


def _ddpm_draw(parts: Parts, **kwargs):
    """model.sample with the sampling weights (EMA) in eval mode (no dropout).

    Snapshots pass their own generator: a stochastic sampler (eta > 0) then
    redraws the same noise each time and never touches the training RNG.
    """
    model = parts.net("model")
    was_training = model.training
    model.eval()
    out = _unwrap(model).sample(**kwargs)
    model.train(was_training)
    return out


def ddpm_sample(parts: Parts, n: int, labels=None, generator=None) -> torch.Tensor:
    num_classes = _unwrap(parts.net("model")).num_classes
    if labels is None and num_classes > 0:
        labels = torch.arange(n) % num_classes  # classes in equal shares
    out = []
    for start in range(0, n, 256):
        chunk = labels[start : start + 256] if labels is not None else None
        out.append(_ddpm_draw(parts, n=min(256, n - start), labels=chunk,
                              generator=generator).float())
    return torch.cat(out)


def ddpm_snapshot(parts: Parts) -> dict[str, torch.Tensor]:
    images = _ddpm_draw(parts, n=len(parts.fixed["noise"]), labels=parts.fixed.get("labels"),
                        noise=parts.fixed["noise"], generator=fixed_generator(SNAPSHOT_SEED))
    return {"step": viz.make_grid(images.float(), nrow=8)}


def ddpm_finish(parts: Parts, run_dir: Path) -> None:
    grid = ddpm_snapshot(parts)["step"]
    labels = parts.fixed.get("labels")
    if labels is not None and parts.class_names:
        names = [parts.class_names[i] for i in labels[::8].tolist()]
        viz.label_rows(grid, names).save(run_dir / "final_grid.png")
    else:
        viz.save_png(grid, run_dir / "final_grid.png", scale=max(1, 512 // grid.shape[-1]))
    save_denoising_gif(parts, run_dir / "denoising.gif")


def save_denoising_gif(parts: Parts, path: Path, max_frames: int = 40) -> None:
    """One row of images (one per class when conditional) from x_T to x_0, frame by frame."""
    model = _unwrap(parts.net("model"))
    labels = parts.fixed.get("labels")
    labels = labels[::8][:10] if labels is not None else None  # one image per class
    n = len(labels) if labels is not None else 8
    _, path_x = _ddpm_draw(parts, n=n, labels=labels, noise=parts.fixed["noise"][:n],
                                generator=fixed_generator(SNAPSHOT_SEED), return_trajectory=True)
    # path_x: (steps + 1, n, C, H, W), x_T first
    times = model.timestep_sequence(model.sampler, None)
    keep = torch.linspace(0, len(path_x) - 1, min(max_frames, len(path_x))).round().long()
    with tempfile.TemporaryDirectory() as tmp:
        frames, captions = [], []
        for i in keep.unique().tolist():
            frames.append(viz.save_png(viz.make_grid(path_x[i].float(), nrow=n),
                                       Path(tmp) / f"{i:05d}.png"))
            captions.append("x_0" if times[i] < 0 else f"t = {times[i]}")
        viz.save_gif(frames, path, captions, duration_ms=150, final_hold_ms=2000)


FAMILIES = {
    "dcgan": Family(build_dcgan, dcgan_step, dcgan_snapshot, dcgan_sample, dcgan_finish),
    "cvae": Family(build_cvae, cvae_step, cvae_snapshot, cvae_sample, cvae_finish,
                   reconstruct=cvae_reconstruct),
    "ddpm": Family(build_ddpm, ddpm_step, ddpm_snapshot, ddpm_sample, ddpm_finish),
}


# ---------------------------------------------------------------------------
# Batches drawn on the device


class BatchSampler:
    """Random batches drawn by index from the device-resident uint8 dataset.

    Each epoch is a fresh permutation; its state (permutation, position, RNG)
    goes into checkpoints so a resumed run draws exactly the batches it would have.
    """

    def __init__(self, data: ImageData, batch_size: int, engine: Engine, seed: int):
        if batch_size > len(data):
            raise ConfigError(f"trainer.batch_size={batch_size} is larger than the "
                              f"{data.name} dataset ({len(data)} images)")
        self.images = data.images.to(engine.device)  # (N, C, H, W) uint8, resident
        self.labels = data.labels.to(engine.device) if data.labels is not None else None
        self.batch_size = batch_size
        self.engine = engine
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(len(data), generator=self.gen)
        self.pos = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pos + self.batch_size > len(self.perm):
            self.perm = torch.randperm(len(self.perm), generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size].to(self.images.device)
        self.pos += self.batch_size
        x = self.engine.batch(self.images[idx])
        y = self.labels[idx] if self.labels is not None else None
        return x, y

    def state_dict(self) -> dict:
        return {"perm": self.perm, "pos": self.pos, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.pos = state["perm"], state["pos"]
        self.gen.set_state(state["gen"])


# ---------------------------------------------------------------------------
# EMA


def make_ema(parts: Parts, decay: float) -> None:
    if decay > 0:
        for name, net in parts.nets.items():
            if name != "discriminator":  # only what we sample with
                parts.ema[name] = copy.deepcopy(_unwrap(net)).requires_grad_(False)


@torch.no_grad()
def update_ema(parts: Parts, decay: float) -> None:
    for name, ema in parts.ema.items():
        net = _unwrap(parts.nets[name])
        ema_params = list(ema.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in net.parameters()], 1 - decay)
        for b_ema, b in zip(ema.buffers(), net.buffers(), strict=True):
            b_ema.copy_(b)


# ---------------------------------------------------------------------------
# Run folder, checkpoints, resume


def default_run_name(cfg: Config) -> str:
    return f"{cfg.family}_{cfg.data.dataset}_{datetime.now():%Y%m%d-%H%M%S}"


def _rng_state(sampler: BatchSampler) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2]), "sampler": sampler.state_dict()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, sampler: BatchSampler) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32),
                         state["numpy_pos"], 0, 0.0))
    sampler.load_state_dict(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def _local(net: nn.Module) -> nn.Module:
    """The net without its DDP wrapper (still compiled if it was): a forward that involves
    no other rank and expects no gradient all-reduce."""
    return net.module if isinstance(net, DistributedDataParallel) else net


def _unwrap(net: nn.Module) -> nn.Module:
    """The plain module, without DDP and torch.compile wrappers: what state dicts hold."""
    net = _local(net)
    return getattr(net, "_orig_mod", net)  # torch.compile


def make_checkpoint(cfg: Config, parts: Parts, sampler: BatchSampler, engine: Engine,
                    step: int, counters: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "family": cfg.family,
        "config": cfg.to_dict(),
        "models": parts.models,
        "class_names": parts.class_names,
        "step": step,
        "counters": dict(counters),
        "nets": {k: _unwrap(v).state_dict() for k, v in parts.nets.items()},
        "ema": {k: _unwrap(v).state_dict() for k, v in parts.ema.items()},
        "optimizers": {k: v.state_dict() for k, v in parts.optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in parts.schedulers.items()},
        "scalers": {k: v.state_dict() for k, v in engine.scalers.items()},
        "rng": _rng_state(sampler),
        # under DDP each rank draws its own batches: keep every rank's RNG (a collective)
        "rank_rng": engine.gather_object(_rng_state(sampler)) if engine.distributed else [],
    }


def _mismatch(source: str | Path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"{source}: does not match this config ({type(e).__name__}: {str(e)[:300]}); "
        f"resume with the run's own config (only trainer fields may change)")


def load_weights(ckpt: dict, parts: Parts, source: str | Path = "checkpoint") -> None:
    """The nets and EMA copies of `ckpt`; one that does not fit is a CheckpointError."""
    try:
        for group in ("nets", "ema"):
            for k, net in getattr(parts, group).items():
                _unwrap(net).load_state_dict(ckpt[group][k])
    except (KeyError, RuntimeError, ValueError) as e:
        raise _mismatch(source, e) from None


def restore_checkpoint(ckpt: dict, parts: Parts, sampler: BatchSampler, engine: Engine,
                       rng: bool = True, source: str | Path = "checkpoint") -> None:
    """Load every state of `ckpt`; `rng=False` keeps the random streams running (rollbacks).

    A checkpoint that does not fit the config (other model arguments, another
    family) is a CheckpointError naming the file, not a state-dict traceback.
    """
    load_weights(ckpt, parts, source)
    try:
        for k, opt in parts.optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][k])
        for k, sched in parts.schedulers.items():
            sched.load_state_dict(ckpt["schedulers"][k])
    except (KeyError, RuntimeError, ValueError) as e:
        raise _mismatch(source, e) from None
    for k, state in ckpt.get("scalers", {}).items():
        engine.scalers[k] = torch.amp.GradScaler(engine.device.type,
                                                 enabled=engine.amp_dtype == torch.float16)
        engine.scalers[k].load_state_dict(state)
    if rng:
        rank_rng = ckpt.get("rank_rng") or [ckpt["rng"]]
        if engine.rank < len(rank_rng):  # other ranks of a resume on more GPUs keep fresh seeds
            _set_rng_state(rank_rng[engine.rank], sampler)


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    periodic = sorted(ckpt_dir.glob("step_*.pt"), key=viz.step_of)
    for old in periodic[:-keep]:
        old.unlink(missing_ok=True)


RUN_FILES = ("config.json", "history.jsonl", ".wandb_id", "checkpoints/last.pt")


def prepare_resume(source: str | Path, run_dir: str | Path | None = None) -> Path:
    """The folder a resumed run continues in: `source` itself, or a copy at `run_dir`.

    A read-only source (a Kaggle input) needs `run_dir`: its config, history,
    wandb id, samples and last.pt are copied there and the source is never written.
    """
    source = Path(source)
    if not (source / "checkpoints" / "last.pt").is_file():
        raise CheckpointError(f"{source}: not a run folder to resume (no checkpoints/last.pt)")
    if run_dir is None or Path(run_dir).resolve() == source.resolve():
        if not os.access(source, os.W_OK) or not os.access(source / "checkpoints", os.W_OK):
            raise CheckpointError(f"{source}: the run folder is read-only; resume into a new "
                                  f"folder with --out DIR (notebook: out_root)")
        run_dir = source
    else:
        run_dir = Path(run_dir)
        if (run_dir / "checkpoints" / "last.pt").exists():
            raise CheckpointError(f"{run_dir} already holds a run; resume that one "
                                  f"(--resume {run_dir}) or choose another --out")
        for name in RUN_FILES:
            if (source / name).is_file():
                (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / name, run_dir / name)
        if (source / "samples").is_dir():
            shutil.copytree(source / "samples", run_dir / "samples", dirs_exist_ok=True)
    for tmp in (run_dir / "checkpoints").glob(".*.tmp"):  # left by a write that was killed
        tmp.unlink()
    return run_dir


def _forget_after(run_dir: Path, step: int) -> None:
    """A resume redoes the work after `step`: drop its history and snapshots."""
    truncate_history(run_dir, step)
    for png in (run_dir / "samples").glob("*.png"):
        if viz.step_of(png) > step:
            png.unlink()


def sampling_cost(family: Family, parts: Parts, engine: Engine, n: int = 64) -> float:
    """Seconds per image of the family's own sampler: the inference side of the cost account."""
    def sync():
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)

    sync()
    t0 = time.perf_counter()
    family.sample(parts, n, None, fixed_generator(0))
    sync()
    return (time.perf_counter() - t0) / n


# ---------------------------------------------------------------------------
# Evaluation (lib.metrics does the scoring)


def _rng_untouched(engine: Engine):
    """Whatever runs inside leaves the torch RNG of the CPU and the training GPU as it was."""
    return torch.random.fork_rng(devices=[engine.device] if engine.device.type == "cuda" else [])


def make_evaluator(cfg: Config, data: ImageData, engine: Engine, features: str | None = None,
                   samples: int | None = None) -> Evaluator | None:
    """The run's Evaluator; None, with a warning, when `auto` features find no usable network."""
    t = cfg.trainer
    features = features or t.features
    try:
        # building it (a network's init, a cached classifier) must not move the training RNG:
        # a resumed run builds it after restoring that RNG
        with _rng_untouched(engine):
            return Evaluator(data, features=features, num_samples=samples or t.eval_samples,
                             device=engine.device, cache_dir=Path(cfg.data.root) / "cache",
                             weights_path=t.inception_weights, download=t.inception_download,
                             seed=t.seed)
    except MetricsError as e:
        if features != "auto":
            raise
        warnings.warn(f"evaluation is off for this run: {e}", stacklevel=2)
        return None


def evaluate_parts(family: Family, parts: Parts, evaluator: Evaluator, engine: Engine,
                   seed: int) -> dict:
    """Score the sampling weights on a fixed draw, leaving the training RNG untouched."""
    n = evaluator.num_samples
    conditional = any(spec["args"].get("num_classes", 0) > 0 for spec in parts.models.values())
    labels = None
    if conditional and evaluator.real_labels is not None:
        labels = torch.arange(n) % len(evaluator.class_names)  # balanced: every class scored
    device = engine.device
    with _rng_untouched(engine):
        fake = to_uint8(family.sample(parts, n, labels, fixed_generator(seed + 2)))
        recon = None
        if family.reconstruct is not None:
            x = evaluator.real_images[:n]
            y = evaluator.real_labels[:n].to(device) if evaluator.real_labels is not None else None
            recon = (x, to_uint8(family.reconstruct(parts, to_float(x).to(device), y)))
        return evaluator.evaluate(fake, labels, recon)


def _best_fid(run_dir: Path, features: str, ckpt_dir: Path, step: int) -> float:
    """Best FID logged so far with these features; a best.pt newer than `step` is dropped."""
    best = ckpt_dir / "best.pt"
    if best.exists() and load_checkpoint(best)["step"] > step:
        best.unlink()  # it belongs to work that a resume redoes
    fids = [r["fid"] for r in read_history(run_dir)
            if r.get("features") == features and isinstance(r.get("fid"), float)]
    return min(fids, default=math.inf)


def evaluate_checkpoint(run_dir: str | Path, samples: int | None = None,
                        features: str | None = None, checkpoint: str = "last.pt",
                        inception_weights: str | None = None, download: bool = False) -> dict:
    """Score a run's final weights; the result is also written to RUN_DIR/metrics.json."""
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir / "checkpoints" / checkpoint)
    cfg = Config.from_dict(ckpt["config"], f"{run_dir}/checkpoints/{checkpoint}")
    cfg.trainer.inception_weights = inception_weights or cfg.trainer.inception_weights
    cfg.trainer.inception_download = download or cfg.trainer.inception_download
    family = FAMILIES[cfg.family]
    engine = setup_engine(cfg.trainer)
    data = load_dataset(**asdict(cfg.data))
    parts = family.build(cfg, data, engine)
    parts.class_names = data.class_names
    make_ema(parts, cfg.trainer.ema_decay)
    load_weights(ckpt, parts, run_dir / "checkpoints" / checkpoint)
    evaluator = make_evaluator(cfg, data, engine, features, samples)
    if evaluator is None:
        raise MetricsError("no feature network is usable here; see the warning above")
    result = {"step": ckpt["step"], "checkpoint": checkpoint,
              **evaluate_parts(family, parts, evaluator, engine, cfg.trainer.seed)}
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# ---------------------------------------------------------------------------
# The loop


def _scalar(v) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def train(cfg: Config, out_root: str | Path = "outputs", run_dir: str | Path | None = None,
          resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train `cfg`'s model; return its run folder.

    `resume` continues that run folder from its last.pt - in place, or in
    `run_dir` when given (a copy: the source may be read-only).
    """
    entered = time.monotonic()  # the time budget counts start-up too
    family = FAMILIES[cfg.family]
    engine = setup_engine(cfg.trainer)
    seed_everything(cfg.trainer.seed)  # the same initial weights on every rank
    with engine.main_first():  # rank 0 writes the dataset cache, the others read it
        data = load_dataset(**asdict(cfg.data))
    parts = family.build(cfg, data, engine)
    parts.class_names = data.class_names
    make_ema(parts, cfg.trainer.ema_decay)
    parts.nets = {name: engine.wrap(net) for name, net in parts.nets.items()}
    if engine.rank:  # each rank its own noise and batches; rank 0 as a single process
        seed_everything(cfg.trainer.seed + engine.rank)
    sampler = BatchSampler(data, cfg.trainer.batch_size, engine, cfg.trainer.seed + engine.rank)
    guard = Guard(cfg.trainer)

    if resume is not None:  # rank 0 copies; the broadcast below waits for it
        run_dir = prepare_resume(resume, run_dir) if engine.is_main else run_dir or resume
    run_dir = Path(run_dir) if run_dir else Path(out_root) / (cfg.name or default_run_name(cfg))
    run_dir = Path(engine.broadcast_object(str(run_dir)))  # rank 0's clock names the run
    ckpt_dir, samples_dir = run_dir / "checkpoints", run_dir / "samples"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    samples_dir.mkdir(exist_ok=True)

    start, counters = 0, {"images_seen": 0, "train_seconds": 0.0}
    if resume is not None:
        ckpt = load_checkpoint(ckpt_dir / "last.pt", map_location=engine.device)
        restore_checkpoint(ckpt, parts, sampler, engine, source=ckpt_dir / "last.pt")
        guard.load_state_dict(ckpt.get("guard", {}))
        start, counters = ckpt["step"], ckpt["counters"]
        if engine.is_main:
            _forget_after(run_dir, start)
    if engine.is_main:
        cfg.save(run_dir / "config.json")  # a resume may have changed trainer fields
    tracker = Tracker(run_dir, cfg.wandb, run_dir.name, cfg.to_dict(), enabled=engine.is_main)

    t = cfg.trainer
    evaluator = make_evaluator(cfg, data, engine) if engine.is_main and t.eval_samples else None
    best_fid = _best_fid(run_dir, evaluator.features, ckpt_dir, start) if evaluator else math.inf
    total = cfg.total_steps
    save_every = t.save_period * t.iterations_per_epoch
    budget_s = t.max_minutes * 60
    window_start, window_images, save_cost, steps_done = time.monotonic(), 0, 0.0, 0

    def save(step: int, periodic: bool) -> None:
        """Called by every rank (the checkpoint gathers their RNG states); rank 0 writes."""
        nonlocal save_cost
        t0 = time.monotonic()
        ckpt = make_checkpoint(cfg, parts, sampler, engine, step, counters)
        ckpt["guard"] = guard.state_dict()
        if not engine.is_main:
            return
        atomic_save(ckpt, ckpt_dir / "last.pt")
        if periodic:
            atomic_save(ckpt, ckpt_dir / f"step_{step:07d}.pt")
            prune_checkpoints(ckpt_dir, t.keep_checkpoints)
        save_cost = time.monotonic() - t0

    def snapshot(step: int) -> None:
        for prefix, grid in family.snapshot(parts).items():
            viz.save_png(grid, samples_dir / f"{prefix}_{step:07d}.png")

    def diverged(step: int, before_save: bool) -> str | None:
        reason = guard.check()
        if reason is None and before_save and not guard.weights_finite(list(parts.nets.values())):
            reason = f"non-finite weights after step {step}"
        if engine.agree(reason is not None):  # rank 0 decides: every rank rolls back together
            return reason or "divergence seen by rank 0"
        return None

    def roll_back(reason: str, at_step: int) -> int:
        """Back to last.pt with a lower lr; the random streams run on, so new batches follow."""
        path = ckpt_dir / "last.pt"
        ckpt = load_checkpoint(path, map_location=engine.device)
        try:
            event = guard.rolled_back(reason, at_step, ckpt["step"])
        except DivergenceError as e:
            tracker.log(e.event, at_step)
            tracker.finish()
            bar.close()
            raise
        restore_checkpoint(ckpt, parts, sampler, engine, rng=False, source=path)
        guard.scale_lr(parts.optimizers, ckpt.get("guard", {}))
        counters.update(ckpt["counters"])
        if engine.is_main:
            _forget_after(run_dir, ckpt["step"])
            tracker.log(event, ckpt["step"])
        save(ckpt["step"], periodic=False)  # last.pt now carries the rollback and its lr
        bar.write(f"step {at_step}: {reason}; rolled back to step {ckpt['step']} "
                  f"(rollback {guard.rollbacks}/{t.max_rollbacks}, lr x{guard.lr_scale:g})",
                  file=sys.stderr)  # stdout stays the CLI's answer: the run folder
        bar.n = ckpt["step"]
        return ckpt["step"]

    if start == 0:
        if engine.is_main:
            snapshot(0)
        save(0, periodic=False)  # a rollback target from the first step on
    bar = tqdm(total=total, initial=start, disable=not (progress and engine.is_main),
               desc=f"{cfg.family} {run_dir.name}", mininterval=10, dynamic_ncols=True)
    step, stopped_early = start, False
    while step < total:
        step += 1
        x, y = sampler.next()
        logs = family.step(parts, x, y, step, engine, cfg)
        for sched in parts.schedulers.values():
            sched.step()
        update_ema(parts, t.ema_decay)
        counters["images_seen"] += x.shape[0] * engine.world_size
        window_images += x.shape[0] * engine.world_size
        steps_done += 1
        bar.update(1)
        guard.watch(step, logs)

        is_log = step % t.log_every_step == 0 or step == total
        is_save = step % save_every == 0 or step == total
        if is_log or is_save:
            reason = diverged(step, before_save=is_save)
            if reason is not None:
                step = roll_back(reason, step)
                window_start, window_images = time.monotonic(), 0
                continue

        metrics = {}
        if t.eval_samples and ((t.eval_every and step % t.eval_every == 0) or step == total):
            t0 = time.monotonic()
            metrics = evaluate_parts(family, parts, evaluator, engine, t.seed) if evaluator else {}
            window_start += time.monotonic() - t0  # evaluation is not training time
            diversity = metrics.get("diversity")
            collapse = guard.collapse(step, diversity) if diversity is not None else None
            if collapse is not None:
                tracker.log(collapse, step)
                bar.write(f"step {step}: {collapse['message']}", file=sys.stderr)
            if engine.agree(collapse is not None and t.collapse_rollback):
                step = roll_back(collapse["message"], step)  # history after last.pt is dropped
                window_start, window_images = time.monotonic(), 0
                continue
            # rank 0 scores alone; every rank joins the checkpoint (it gathers their RNG)
            if engine.broadcast_object(metrics.get("fid", math.inf) < best_fid):
                best_fid = metrics.get("fid", best_fid)
                ckpt = make_checkpoint(cfg, parts, sampler, engine, step, counters)
                if engine.is_main:
                    atomic_save(ckpt, ckpt_dir / "best.pt")
        if is_log:
            now = time.monotonic()
            record = engine.mean_over_ranks({k: _scalar(v) for k, v in logs.items()})
            counters["train_seconds"] += now - window_start
            record.update({f"lr_{k}": s.get_last_lr()[0] for k, s in parts.schedulers.items()})
            record["lr"] = next(iter(parts.schedulers.values())).get_last_lr()[0]
            record["images_per_sec"] = window_images / max(now - window_start, 1e-9)
            record.update(counters)
            tracker.log({**record, **metrics}, step)
            bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                             if k.startswith(("loss", "d_"))}, refresh=False)
            if engine.is_main:
                snapshot(step)
            window_start, window_images = time.monotonic(), 0
        elif metrics:
            tracker.log(metrics, step)

        if is_save:
            save(step, periodic=step % save_every == 0)
        if budget_s and step < total:
            elapsed = time.monotonic() - entered
            per_step = elapsed / steps_done
            if engine.agree(elapsed + per_step + save_cost + 5 > budget_s):
                reason = None if is_save else diverged(step, before_save=True)
                if reason is not None:
                    step = roll_back(reason, step)  # saves the rolled-back state
                elif not is_save:
                    save(step, periodic=False)
                stopped_early = True
                break
    bar.close()

    if engine.is_main:
        frames = viz.snapshot_frames(samples_dir, "step_")
        viz.save_gif(frames, run_dir / "evolution.gif")
        family.finish(parts, run_dir)
        viz.plot_metrics(read_history(run_dir), run_dir / "metrics.png")
        summary = {"step": step, "total_steps": total, "finished": not stopped_early,
                   "family": cfg.family, "precision": engine.precision,
                   "device": str(engine.device), "world_size": engine.world_size,
                   "rollbacks": guard.rollbacks, **counters,
                   "sample_seconds_per_image": sampling_cost(family, parts, engine)}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    tracker.finish()
    engine.close()
    if stopped_early and engine.is_main:
        launcher = (f"torchrun --nproc_per_node={engine.world_size}" if engine.distributed
                    else "python")
        print(f"time budget of {t.max_minutes:g} min reached at step {step}/{total}; "
              f"resume with: {launcher} -m lib train --resume {run_dir}")
    return run_dir


def resume(run_dir: str | Path, out_root: str | Path | None = None,
           overrides: list[str] | None = None, progress: bool = True) -> Path:
    """Continue a run from its last.pt (the CLI's --resume and the notebooks' `resume`).

    `out_root` given: continue in `out_root/<run name>`, a copy, leaving `run_dir`
    untouched (e.g. a Kaggle input). `overrides` (`trainer.epochs=200`) change the
    checkpoint's config; only trainer fields can change without breaking the weights.
    """
    source = Path(run_dir)
    path = source / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"{source}: not a run folder to resume (no checkpoints/last.pt)")
    raw = load_checkpoint(path)["config"]
    for item in overrides or []:
        apply_override(raw, item, str(path))
    cfg = Config.from_dict(raw, f"{path} (its config)")
    target = Path(out_root) / source.name if out_root is not None else None
    return train(cfg, run_dir=target, resume=source, progress=progress)
