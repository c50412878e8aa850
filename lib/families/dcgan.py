"""DCGAN: the reference's iteration (D on real then fake, one D update; then one G update).

Options of `cfg.gan` (off by default, the reference's step exactly): the loss ("bce",
"hinge", or the relativistic "rasgan", "ralsgan", "rpgan"), lazy R1/R2 gradient penalties
and DiffAugment of everything D sees, all in lib/models/dcgan.py.
"""

from __future__ import annotations

import torch

from lib.config import Config, GanConfig
from lib.core import viz
from lib.core.device import Engine
from lib.core.rundir import RunDir
from lib.data import ImageData
from lib.families.base import (
    CHUNK,
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
    standing_statistics,
    unwrap,
)
from lib.models.dcgan import (
    RELATIVISTIC,
    d_loss,
    diff_augment,
    g_loss,
    gradient_penalty,
    penalty_weight,
)


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


def step(parts: Parts, x: torch.Tensor, y, it: int, engine: Engine,
         cfg: Config) -> dict[str, torch.Tensor]:
    """One iteration of the reference: (1) update D on a real and a fake batch, (2) update
    G through D, (3) the schedulers and G's moving average."""
    G, D = parts.nets["generator"], parts.nets["discriminator"]
    gan = cfg.gan or GanConfig()  # DiffAugment's "" policy returns its input, drawing nothing
    noise = torch.randn(x.shape[0], parts.fixed["noise"].shape[1], device=x.device)
    clip = cfg.trainer.grad_clip

    # (1) Update D: maximize log(D(x)) + log(1 - D(G(z))). Separate real and fake passes:
    # BatchNorm sees one kind per batch. DiffAugment: the same policy on the real and the
    # fake batch, in D's update and in G's (Zhao et al. 2020). On an R1/R2 step the
    # penalties' gradients are taken at D's inputs before augmentation (as StyleGAN2-ADA)
    r1 = penalty_weight(gan.r1_gamma, gan.penalty_every, it)
    r2 = penalty_weight(gan.r2_gamma, gan.penalty_every, it)
    real_in = x.detach().requires_grad_(True) if r1 else x
    with engine.autocast():
        out_real = D(diff_augment(real_in, gan.augment))
        fake = G(noise)
        fake_in = fake.detach().requires_grad_(bool(r2))
        out_fake = D(diff_augment(fake_in, gan.augment))
        loss_d = d_loss(gan.loss, out_real.float(), out_fake.float())
        penalised = loss_d
        if r1:
            penalised = penalised + r1 * gradient_penalty(out_real.float(), real_in)
        if r2:
            penalised = penalised + r2 * gradient_penalty(out_fake.float(), fake_in)
    engine.backward_step("discriminator", penalised, parts.optimizers["discriminator"], clip)

    # (2) Update G: maximize log(D(G(z))). D's weight gradients are not needed here:
    # freezing them saves ~13%. Under DDP, D runs without its wrapper: the wrapper would
    # wait for D gradients. A relativistic loss judges the fakes against a real batch, seen
    # by the updated D
    D.requires_grad_(False)
    with engine.autocast():
        out_g = local(D)(diff_augment(fake, gan.augment))
        real_g = (local(D)(diff_augment(x, gan.augment)).float()
                  if gan.loss in RELATIVISTIC else None)
        loss_g = g_loss(gan.loss, out_g.float(), real_g)
    engine.backward_step("generator", loss_g, parts.optimizers["generator"], clip)
    D.requires_grad_(True)

    # (3) the learning rates' decay, and the moving average G samples with
    for sched in parts.schedulers.values():
        sched.step()
    if parts.ema is not None:
        parts.ema.update(parts.nets, it)

    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(out_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(out_fake.detach().float()).mean(),
            "d_fake_after": torch.sigmoid(out_g.detach().float()).mean()}


@torch.inference_mode()
def sample(parts: Parts, n: int, labels=None, generator=None) -> torch.Tensor:
    G = parts.sampling_weights("generator")
    z = torch.randn(n, unwrap(G).latent_dim, generator=generator).to(device_of(G))
    with eval_mode(G):
        return chunked(G, z).float()


@torch.inference_mode()
def snapshot(parts: Parts) -> dict[str, torch.Tensor]:
    G = parts.sampling_weights("generator")
    with eval_mode(G):
        images = G(parts.fixed["noise"]).float()  # (64, C, H, W)
    return {"step": viz.make_grid(images, nrow=8)}


def finish(parts: Parts, run: RunDir, fit: float) -> None:
    """final_grid.png, whatever `fit`: one draw of 64 costs a fraction of a step."""
    viz.save_png(snapshot(parts)["step"], run.media("final_grid.png"),
                 scale=max(1, 256 // parts.fixed["noise"].shape[0]))


STANDING_SEED = 12345  # the noise G's standing statistics are measured on: fixed, not training's


def standing(cfg: Config) -> dict:
    """G's BatchNorm statistics for sampling, measured on `gan.standing_stats` noise draws
    through the very weights that sample (the EMA's, when kept); {} when 0."""
    images = (cfg.gan or GanConfig()).standing_stats
    if not images:
        return {}

    def recompute(G: torch.nn.Module) -> None:
        g, device = fixed_generator(STANDING_SEED), device_of(G)
        standing_statistics(G, ((torch.randn(min(CHUNK, images - i), G.latent_dim,
                                             generator=g).to(device),)
                                for i in range(0, images, CHUNK)))

    return {"generator": recompute}


FAMILY = Family(name="dcgan", sampling_net="generator", averaged=("generator",), color="tab:blue",
                build=build, step=step, snapshot=snapshot, sample=sample, finish=finish,
                standing=standing)
