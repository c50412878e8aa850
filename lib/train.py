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
import random
import time
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
from lib.checkpoint import FORMAT_VERSION, atomic_save, build_model, load_checkpoint
from lib.config import Config, ConfigError, ModelSpec, OptimizerConfig, SchedulerConfig
from lib.data import ImageData, load_dataset
from lib.device import Engine, make_optimizer, seed_everything, setup_engine
from lib.tracking import Tracker, truncate_history

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
    return engine.prepare(build_model(resolved["type"], resolved["args"]))


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


FAMILIES = {
    "dcgan": Family(build_dcgan, dcgan_step, dcgan_snapshot, dcgan_sample, dcgan_finish),
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


def restore_checkpoint(ckpt: dict, parts: Parts, sampler: BatchSampler, engine: Engine) -> None:
    for group in ("nets", "ema"):
        for k, net in getattr(parts, group).items():
            _unwrap(net).load_state_dict(ckpt[group][k])
    for k, opt in parts.optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][k])
    for k, sched in parts.schedulers.items():
        sched.load_state_dict(ckpt["schedulers"][k])
    for k, state in ckpt.get("scalers", {}).items():
        engine.scalers[k] = torch.amp.GradScaler(engine.device.type,
                                                 enabled=engine.amp_dtype == torch.float16)
        engine.scalers[k].load_state_dict(state)
    rank_rng = ckpt.get("rank_rng") or [ckpt["rng"]]
    if engine.rank < len(rank_rng):  # other ranks of a resume on more GPUs keep fresh seeds
        _set_rng_state(rank_rng[engine.rank], sampler)


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    periodic = sorted(ckpt_dir.glob("step_*.pt"), key=viz.step_of)
    for old in periodic[:-keep]:
        old.unlink(missing_ok=True)


def _forget_after(run_dir: Path, step: int) -> None:
    """A resume redoes the work after `step`: drop its history and snapshots."""
    truncate_history(run_dir, step)
    for png in (run_dir / "samples").glob("*.png"):
        if viz.step_of(png) > step:
            png.unlink()


# ---------------------------------------------------------------------------
# The loop


def _scalar(v) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def train(cfg: Config, out_root: str | Path = "outputs", run_dir: str | Path | None = None,
          resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train `cfg`'s model; return its run folder. `resume` continues a run folder."""
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

    if resume is not None:
        run_dir = Path(resume)
    run_dir = Path(run_dir) if run_dir else Path(out_root) / (cfg.name or default_run_name(cfg))
    run_dir = Path(engine.broadcast_object(str(run_dir)))  # rank 0's clock names the run
    ckpt_dir, samples_dir = run_dir / "checkpoints", run_dir / "samples"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    samples_dir.mkdir(exist_ok=True)

    start, counters = 0, {"images_seen": 0, "train_seconds": 0.0}
    if resume is not None:
        ckpt = load_checkpoint(ckpt_dir / "last.pt", map_location=engine.device)
        restore_checkpoint(ckpt, parts, sampler, engine)
        start, counters = ckpt["step"], ckpt["counters"]
        if engine.is_main:
            _forget_after(run_dir, start)
    elif engine.is_main:
        cfg.save(run_dir / "config.json")
    tracker = Tracker(run_dir, cfg.wandb, run_dir.name, cfg.to_dict(), enabled=engine.is_main)

    t = cfg.trainer
    total = cfg.total_steps
    save_every = t.save_period * t.iterations_per_epoch
    budget_s = t.max_minutes * 60
    session_start = time.monotonic()
    window_start, window_images, save_cost = time.monotonic(), 0, 0.0

    def save(step: int, periodic: bool) -> None:
        """Called by every rank (the checkpoint gathers their RNG states); rank 0 writes."""
        nonlocal save_cost
        t0 = time.monotonic()
        ckpt = make_checkpoint(cfg, parts, sampler, engine, step, counters)
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

    if start == 0 and engine.is_main:
        snapshot(0)
    bar = tqdm(total=total, initial=start, disable=not (progress and engine.is_main),
               desc=f"{cfg.family} {run_dir.name}", mininterval=10, dynamic_ncols=True)
    step, stopped_early = start, False
    for step in range(start + 1, total + 1):
        x, y = sampler.next()
        logs = family.step(parts, x, y, step, engine, cfg)
        for sched in parts.schedulers.values():
            sched.step()
        update_ema(parts, t.ema_decay)
        counters["images_seen"] += x.shape[0] * engine.world_size
        window_images += x.shape[0] * engine.world_size
        bar.update(1)

        if step % t.log_every_step == 0 or step == total:
            now = time.monotonic()
            record = engine.mean_over_ranks({k: _scalar(v) for k, v in logs.items()})
            if not all(math.isfinite(v) for v in record.values()):
                bar.write(f"step {step}: non-finite loss {record}")
            counters["train_seconds"] += now - window_start
            record.update({f"lr_{k}": s.get_last_lr()[0] for k, s in parts.schedulers.items()})
            record["lr"] = next(iter(parts.schedulers.values())).get_last_lr()[0]
            record["images_per_sec"] = window_images / max(now - window_start, 1e-9)
            record.update(counters)
            tracker.log(record, step)
            bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                             if k.startswith(("loss", "d_"))}, refresh=False)
            if engine.is_main:
                snapshot(step)
            window_start, window_images = time.monotonic(), 0

        if step % save_every == 0 or step == total:
            save(step, periodic=step % save_every == 0)
        if budget_s and step < total:
            elapsed = time.monotonic() - session_start
            per_step = elapsed / (step - start)
            if engine.agree(elapsed + per_step + save_cost + 5 > budget_s):
                save(step, periodic=False)
                stopped_early = True
                break
    bar.close()

    if engine.is_main:
        frames = viz.snapshot_frames(samples_dir, "step_")
        viz.save_gif(frames, run_dir / "evolution.gif")
        family.finish(parts, run_dir)
        summary = {"step": step, "total_steps": total, "finished": not stopped_early,
                   "family": cfg.family, "precision": engine.precision,
                   "device": str(engine.device), "world_size": engine.world_size, **counters}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    tracker.finish()
    engine.close()
    if stopped_early and engine.is_main:
        launcher = (f"torchrun --nproc_per_node={engine.world_size}" if engine.distributed
                    else "python")
        print(f"time budget of {t.max_minutes:g} min reached at step {step}/{total}; "
              f"resume with: {launcher} -m lib train --resume {run_dir}")
    return run_dir

