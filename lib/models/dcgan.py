"""DCGAN, as the PyTorch examples reference (dcgan/main.py) defines it.

Generator: a latent vector grows to 4x4 through a transposed convolution, then
doubles in size per stage (ConvTranspose 4/2/1 -> BatchNorm -> ReLU), ending in
Tanh. Discriminator: the mirror image with LeakyReLU(0.2) and no BatchNorm on
its first layer. Weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0.
The only departure: the discriminator returns logits (no final Sigmoid), to be
used with BCEWithLogitsLoss - the same maths, without the saturating log(sigmoid).

At 64x64 the layer widths are the reference's (ngf*8 -> ngf*4 -> ngf*2 -> ngf);
smaller images drop the widest stage, so 32x32 starts at ngf*4.

Options beyond the reference (off by default): spectral normalisation in D and
a D without BatchNorm (see `Discriminator`), the hinge and relativistic losses, R1/R2
gradient penalties and DiffAugment of everything D sees (`gan.loss`, `gan.r1_gamma`,
`gan.r2_gamma`, `gan.augment`; below the networks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

# ---------------------------------------------------------------------------
# networks


def _num_stages(image_size: int) -> int:
    stages = math.log2(image_size / 4)
    if image_size < 8 or stages != int(stages):
        raise ValueError(
            f"DCGAN needs a power-of-two image_size >= 8 (e.g. 32 or 64), got {image_size}; "
            "set data.image_size accordingly (MNIST's 28 px is resized to 32)"
        )
    return int(stages)


def init_weights(module: nn.Module) -> None:
    """The reference's weights_init: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:  # only where an option dropped the BatchNorm after it
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    def __init__(self, latent_dim: int = 100, hidden_dim: int = 64, n_channels: int = 3,
                 image_size: int = 64):
        super().__init__()
        self.latent_dim = latent_dim
        stages = _num_stages(image_size)
        width = hidden_dim * 2 ** (stages - 1)
        layers = [nn.ConvTranspose2d(latent_dim, width, 4, 1, 0, bias=False),  # (B, width, 4, 4)
                  nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, n_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # (B, latent_dim) or (B, latent_dim, 1, 1) -> (B, C, H, W) in [-1, 1]
        return self.main(z.view(z.shape[0], self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    """The reference D, returning logits. Two options (defaults: the reference exactly):

    spectral_norm: divide every convolution's weight by its largest singular
    value (Miyato et al. 2018), estimated by one power iteration per training
    forward pass; this bounds D's Lipschitz constant, the usual cure for a D that
    overpowers G. batch_norm=False drops D's BatchNorms, as SN-GAN's D does:
    with SN the two fight (BN rescales what SN bounds), so set both together;
    the convolutions that lose their BatchNorm gain the bias it provided.
    """

    def __init__(self, n_channels: int = 3, hidden_dim: int = 64, image_size: int = 64,
                 spectral_norm: bool = False, batch_norm: bool = True):
        super().__init__()
        stages = _num_stages(image_size)
        width = hidden_dim
        layers = [nn.Conv2d(n_channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(stages - 1):
            layers.append(nn.Conv2d(width, width * 2, 4, 2, 1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            width *= 2
        layers += [nn.Conv2d(width, 1, 4, 1, 0, bias=False)]  # (B, 1, 1, 1) logits
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)
        if spectral_norm:  # after the init: SN wraps the N(0, 0.02) weights as they are
            for layer in self.main:
                if isinstance(layer, nn.Conv2d):
                    parametrizations.spectral_norm(layer)  # in place: weight = original / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()  # (B,) logits


# ---------------------------------------------------------------------------
# losses on D's logits
#
# "bce": the reference DCGAN's (Goodfellow et al. 2014, non-saturating form):
# D minimises -log D(x) - log(1 - D(G(z))), G minimises -log D(G(z)), with
# D = sigmoid(logits) folded into BCE-with-logits (no saturating log(sigmoid)).
# "hinge": the SN-GAN / BigGAN loss (Lim & Ye 2017, Miyato et al. 2018):
# D minimises relu(1 - D(x)) + relu(1 + D(G(z))), G minimises -D(G(z)) on raw logits.
# The relativistic losses judge a real image against fakes, not alone, so G's loss reads
# D's logits on real data too:
# "rasgan" / "ralsgan": relativistic average (Jolicoeur-Martineau 2018; the RaLSGAN record
# on these cats): real logits minus the fake batch's mean logit and vice versa, in BCE or
# least squares with targets +-1, each loss the mean of its two terms as in the paper's code.
# "rpgan": relativistic pairing (R3GAN, Huang et al. 2024): softplus(-(D(x_i) - D(G(z_i))))
# for pair i, and the same with real and fake swapped for G.
# Each term is a mean over the batch; every function takes (real, fake) logits, (B,) each.


def _d_bce(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def _g_bce(real, fake: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def _d_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def _g_hinge(real, fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


def _rasgan(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(real - mean(fake)) - log(1 - sigmoid(fake - mean(real))), halved."""
    return (F.binary_cross_entropy_with_logits(real - fake.mean(), torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake - real.mean(), torch.zeros_like(fake))) / 2


def _ralsgan(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """(real - mean(fake) - 1)^2 + (fake - mean(real) + 1)^2, each a mean, halved."""
    return ((real - fake.mean() - 1).square().mean()
            + (fake - real.mean() + 1).square().mean()) / 2


def _rpgan(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """softplus(-(real_i - fake_i)), the mean over pairs."""
    return F.softplus(fake - real).mean()


# name -> (D's loss, G's loss); a relativistic G minimises D's loss with real and fake swapped
GAN_LOSSES = {
    "bce": (_d_bce, _g_bce),
    "hinge": (_d_hinge, _g_hinge),
    "rasgan": (_rasgan, lambda real, fake: _rasgan(fake, real)),
    "ralsgan": (_ralsgan, lambda real, fake: _ralsgan(fake, real)),
    "rpgan": (_rpgan, lambda real, fake: _rpgan(fake, real)),
}
RELATIVISTIC = ("rasgan", "ralsgan", "rpgan")  # G's loss needs D's logits on a real batch


def _losses(kind: str):
    if kind not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {kind!r}; choose one of {list(GAN_LOSSES)}")
    return GAN_LOSSES[kind]


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's loss from its logits on a real and a fake batch, (B,) each -> a scalar."""
    return _losses(kind)[0](real_logits, fake_logits)


def g_loss(kind: str, fake_logits: torch.Tensor,
           real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """G's loss from D's logits on its fakes (and on a real batch: the relativistic losses),
    (B,) each -> a scalar."""
    if kind in RELATIVISTIC and real_logits is None:
        raise ValueError(f"GAN loss {kind!r} is relativistic: G's loss needs D's real logits")
    return _losses(kind)[1](real_logits, fake_logits)


# ---------------------------------------------------------------------------
# zero-centred gradient penalties (gan.r1_gamma, gan.r2_gamma, gan.penalty_every)
#
# R1 (Mescheder et al. 2018) penalises the norm of D's gradient at real images, R2 at
# fakes: gamma / 2 * E ||grad_x D(x)||^2. R1 alone keeps D from pushing real data off a
# cliff; R3GAN needs both with RpGAN for its convergence proof. StyleGAN2's lazy
# regularisation applies them every k-th step only, scaled by k, so their mean weight
# over a run is gamma / 2 (Karras et al. 2020).


def gradient_penalty(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """E ||d logits_i / d inputs_i||^2 over the batch, differentiable (create_graph) so that
    D's update can descend it; `inputs` (B, C, H, W) must require grad."""
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


def penalty_weight(gamma: float, every: int, it: int) -> float:
    """The lazy schedule: gamma / 2 * every on steps it = every, 2 every, ...; 0 otherwise."""
    return gamma / 2 * every if gamma > 0 and it % every == 0 else 0.0


# ---------------------------------------------------------------------------
# DiffAugment: differentiable augmentation of what the discriminator sees
#
# Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN
# Training": on a small dataset D memorises the real images and its feedback to
# G collapses. Augmenting the real AND the fake batch with the same kind of
# random transform (each image its own parameters), in every D and G pass, makes
# memorising harder while G still learns the un-augmented distribution, because
# the transforms are differentiable and G's gradient flows back through them.
#
# The three policies are the paper's, with its constants, on images in [-1, 1]:
#   color        brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5)
#   translation  shift by up to 1/8 of the size in each direction, zeros shifted in
#   cutout       a square of half the size (centre anywhere) set to zero
# No clamping afterwards (as the paper's code): colour may leave [-1, 1] a little,
# real and fake alike, and a clamp would cut G's gradient where it bites.
#
# Random draws come from `generator` (or torch's global RNG when None): a seeded
# generator, saved with the run, makes a run reproducible and resumable.

AUGMENT_POLICIES = ("color", "translation", "cutout")


# random parameters, one per image

def _rand(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) per image, (B, 1, 1, 1), drawn on the generator's device and moved to x's."""
    where = generator.device if generator is not None else x.device
    u = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=where)
    return u.to(device=x.device, dtype=x.dtype)


def _randint(low: int, high: int, x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    """An integer in [low, high) per image, (B, 1)."""
    where = generator.device if generator is not None else x.device
    return torch.randint(low, high, (x.shape[0], 1), generator=generator,
                         device=where).to(x.device)


# the transforms: (B, C, H, W) -> (B, C, H, W)

def brightness(x: torch.Tensor, generator=None) -> torch.Tensor:
    return x + (_rand(x, generator) - 0.5)


def saturation(x: torch.Tensor, generator=None) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)  # the grey of each pixel: a 1-channel image is unchanged
    return (x - mean) * (_rand(x, generator) * 2) + mean


def contrast(x: torch.Tensor, generator=None) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, generator) + 0.5) + mean


def translation(x: torch.Tensor, generator=None, ratio: float = 0.125) -> torch.Tensor:
    """Output pixel (i, j) is input pixel (i + dy, j + dx), zero where that falls outside."""
    b, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = _randint(-max_dy, max_dy + 1, x, generator)  # (B, 1)
    dx = _randint(-max_dx, max_dx + 1, x, generator)
    # Index a 1-pixel zero border: every source outside the image reads a zero from it.
    rows = (torch.arange(h, device=x.device) + dy + 1).clamp(0, h + 1)  # (B, H)
    cols = (torch.arange(w, device=x.device) + dx + 1).clamp(0, w + 1)  # (B, W)
    padded = F.pad(x, [1, 1, 1, 1])  # (B, C, H + 2, W + 2)
    batch = torch.arange(b, device=x.device)[:, None, None]
    shifted = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return shifted.permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, generator=None, ratio: float = 0.5) -> torch.Tensor:
    """Zero a (ratio H) x (ratio W) rectangle whose centre is anywhere in the image."""
    _, _, h, w = x.shape
    size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # The paper's offsets: centres over the whole image, the rectangle clipped at its edges.
    top = _randint(0, h + (1 - size_h % 2), x, generator) - size_h // 2  # (B, 1)
    left = _randint(0, w + (1 - size_w % 2), x, generator) - size_w // 2
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + size_h)  # (B, H)
    in_cols = (cols >= left) & (cols < left + size_w)  # (B, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (B, H, W)
    return x * keep[:, None].to(x.dtype)


POLICY_TRANSFORMS = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(policy: str) -> list[str]:
    """"color,translation" -> ["color", "translation"]; "" -> [] (no augmentation)."""
    names = [name.strip() for name in policy.split(",") if name.strip()]
    unknown = [name for name in names if name not in POLICY_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown[0]!r} in {policy!r}; use a "
                         f"comma-separated subset of {list(AUGMENT_POLICIES)}, or '' for none")
    return names


def diff_augment(x: torch.Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """x (B, C, H, W) -> the same shape, each image transformed with its own random draw.

    Call it with the same policy on the real and on the fake batch, before every
    pass through D (its own update and G's): the paper's recipe.
    """
    for name in parse_policy(policy):
        for transform in POLICY_TRANSFORMS[name]:
            x = transform(x, generator)
    return x
