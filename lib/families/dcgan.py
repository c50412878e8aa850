"""DCGAN: the reference's iteration (D on real then fake, one D update; then one G update)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lib import viz
from lib.config import Config
from lib.data import ImageData
from lib.device import Engine
from lib.families.base import (
    Family,
    Parts,
    chunked,
    device_of,
    eval_mode,
    fixed_generator,
    local,
    make_net,
    make_opt_sched,
    resolve_model,
    unwrap,
)
from lib.models.dcgan import Discriminator, Generator
from lib.rundir import RunDir


def build(cfg: Config, data: ImageData, engine: Engine) -> Parts:
    specs = {"generator": resolve_model(cfg.generator, data, "generator"),
             "discriminator": resolve_model(cfg.discriminator, data, "discriminator")}
    nets = {name: make_net(spec, engine) for name, spec in specs.items()}
    opt_g, sched_g = make_opt_sched(nets["generator"], cfg.generator_optimizer,
                                    cfg.generator_lr_scheduler, engine)
    opt_d, sched_d = make_opt_sched(nets["discriminator"], cfg.discriminator_optimizer,
                                    cfg.discriminator_lr_scheduler, engine)
    latent = unwrap(nets["generator"]).latent_dim
    noise = torch.randn(64, latent, generator=fixed_generator(cfg.trainer.seed + 1))
    return Parts(nets=nets, optimizers={"generator": opt_g, "discriminator": opt_d},
                 schedulers={"generator": sched_g, "discriminator": sched_d}, specs=specs,
                 fixed={"noise": noise.to(engine.device)})


def step(parts: Parts, x: torch.Tensor, y, step: int, engine: Engine,
         cfg: Config) -> dict[str, torch.Tensor]:
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
        out_g = local(D)(fake)
        loss_g = F.binary_cross_entropy_with_logits(out_g.float(), ones)
    engine.backward_step("generator", loss_g, parts.optimizers["generator"], clip)
    D.requires_grad_(True)

    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(out_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(out_fake.detach().float()).mean(),
            "d_fake_after": torch.sigmoid(out_g.detach().float()).mean()}


@torch.inference_mode()
def sample(parts: Parts, n: int, labels=None, generator=None) -> torch.Tensor:
    G = parts.sampler_net("generator")
    z = torch.randn(n, unwrap(G).latent_dim, generator=generator).to(device_of(G))
    with eval_mode(G):
        return chunked(G, z).float()


@torch.inference_mode()
def snapshot(parts: Parts) -> dict[str, torch.Tensor]:
    G = parts.sampler_net("generator")
    with eval_mode(G):
        images = G(parts.fixed["noise"]).float()  # (64, C, H, W)
    return {"step": viz.make_grid(images, nrow=8)}


def finish(parts: Parts, run: RunDir) -> None:
    viz.save_png(snapshot(parts)["step"], run.media("final_grid.png"),
                 scale=max(1, 256 // parts.fixed["noise"].shape[0]))


FAMILY = Family(name="dcgan", models={"Generator": Generator, "Discriminator": Discriminator},
                sampler="generator", averaged=("generator",), color="tab:blue",
                build=build, step=step, snapshot=snapshot, sample=sample, finish=finish)
