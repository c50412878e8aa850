"""CVAE: one ELBO step per batch; generations per class and reconstructions as media."""

from __future__ import annotations

import torch

from lib.config import Config, ConfigError
from lib.core import viz
from lib.core.device import Engine
from lib.core.rundir import RunDir
from lib.data import ImageData, to_float
from lib.families.base import (
    Family,
    Parts,
    chunked,
    fixed_generator,
    make_net,
    make_opt_sched,
    resolve_model,
    unwrap,
)

NOISE_PER_CLASS = 8  # columns of the generation grid: one fixed z each, for every class
RECON_IMAGES = 16  # fixed real images whose reconstructions are snapshotted
LABEL_NOISE = 16  # noise vectors of the label-sensitivity grid, each decoded under every class


def build(cfg: Config, data: ImageData, engine: Engine) -> Parts:
    if data.labels is None:
        raise ConfigError(f"model: the CVAE needs class labels but the {data.name} data has "
                          "none; use a labelled dataset (digits, shapes, mnist, artbench, "
                          "or a folder with one subfolder per class)")
    specs = {"model": resolve_model(cfg.model, data, "model")}
    net = make_net(specs["model"], engine)
    opt, sched = make_opt_sched(net, cfg.optimizer, cfg.lr_scheduler, engine)
    gen = fixed_generator(cfg.trainer.seed + 1)
    noise = torch.randn(NOISE_PER_CLASS, unwrap(net).latent_dim, generator=gen)
    idx = torch.randperm(len(data), generator=gen)[:RECON_IMAGES]
    fixed = {"noise": noise,
             "recon_x": to_float(data.images[idx]), "recon_y": data.labels[idx]}
    return Parts(nets={"model": net}, optimizers={"model": opt}, schedulers={"model": sched},
                 specs=specs, fixed={k: v.to(engine.device) for k, v in fixed.items()})


def step(parts: Parts, x: torch.Tensor, y, it: int, engine: Engine,
         cfg: Config) -> dict[str, torch.Tensor | float]:
    """One ELBO step (the KL weight follows the model's warm-up), then the scheduler and
    the moving average."""
    net = parts.nets["model"]
    kl_weight = unwrap(net).kl_weight_at(it)
    with engine.autocast():
        out = net(x, y, kl_weight=kl_weight)
    engine.backward_step("model", out["loss"], parts.optimizers["model"], cfg.trainer.grad_clip)
    parts.schedulers["model"].step()
    if parts.ema is not None:
        parts.ema.update(parts.nets, it)
    return {"loss": out["loss"].detach(), "recon": out["recon"].detach(),
            "kl": out["kl"].detach(), "kl_weight": kl_weight}


@torch.inference_mode()
def sample(parts: Parts, n: int, labels=None, generator=None) -> torch.Tensor:
    """n images; classes cycle 0, 1, ..., K-1, 0, ... unless `labels` (n,) are given."""
    model = unwrap(parts.sampling_weights("model"))
    if labels is None:
        labels = torch.arange(n) % model.num_classes
    z = torch.randn(n, model.latent_dim, generator=generator)
    return chunked(lambda y, zc: model.sample(y, z=zc), labels, z).float()


@torch.inference_mode()
def reconstruct(parts: Parts, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reconstructions of x (B, C, H, W) in [-1, 1] by the sampling weights."""
    model = unwrap(parts.sampling_weights("model"))
    return chunked(lambda xc, yc: model.reconstruct(xc, yc).float(), x, y)


@torch.inference_mode()
def label_grid(parts: Parts, generator: torch.Generator) -> torch.Tensor:
    """LABEL_NOISE noise vectors, each decoded under every class: (K, M, C, H, W) in [-1, 1]."""
    model = unwrap(parts.sampling_weights("model"))
    k, m = model.num_classes, LABEL_NOISE
    z = torch.randn(m, model.latent_dim, generator=generator).repeat(k, 1)  # (K * M, latent)
    labels = torch.arange(k).repeat_interleave(m)  # (K * M,)
    images = chunked(lambda y, zc: model.sample(y, z=zc), labels, z).float()
    return images.view(k, m, *images.shape[1:])


def generation_grid(parts: Parts) -> torch.Tensor:
    """One row per class, one column per fixed noise vector: uint8 (3, H', W')."""
    model = unwrap(parts.sampling_weights("model"))
    noise = parts.fixed["noise"]  # (M, latent)
    k, m = model.num_classes, noise.shape[0]
    labels = torch.arange(k, device=noise.device).repeat_interleave(m)  # (K * M,)
    return viz.make_grid(model.sample(labels, z=noise.repeat(k, 1)).float(), nrow=m)


@torch.inference_mode()
def snapshot(parts: Parts) -> dict[str, torch.Tensor]:
    """`step`: generations (fixed noise x every class); `recon`: reconstructions, each row of
    them above the row of the real images they came from."""
    model = unwrap(parts.sampling_weights("model"))
    x, y = parts.fixed["recon_x"], parts.fixed["recon_y"]
    x_hat = model.reconstruct(x, y).float()
    half = len(x) // 2
    pairs = torch.cat([x_hat[:half], x[:half], x_hat[half:], x[half:]])  # (2N, C, H, W)
    return {"step": generation_grid(parts), "recon": viz.make_grid(pairs, nrow=half)}


def finish(parts: Parts, run: RunDir, fit: float) -> None:
    """The GIFs and final_grid.png, whatever `fit`: a decoder's grid costs a fraction of a
    step."""
    viz.save_gif(run.snapshots("recon"), run.media("reconstruction.gif"))
    viz.save_gif(run.snapshots("step"), run.media("generation.gif"))
    model = unwrap(parts.sampling_weights("model"))
    names = parts.class_names or [str(k) for k in range(model.num_classes)]
    with torch.inference_mode():
        grid = generation_grid(parts)
    viz.label_rows(grid, names[: model.num_classes], min_width=512).save(
        run.media("final_grid.png"))


FAMILY = Family(name="cvae", sampling_net="model", averaged=("model",),
                color="tab:green", build=build, step=step, snapshot=snapshot, sample=sample,
                finish=finish, reconstruct=reconstruct, label_grid=label_grid)
