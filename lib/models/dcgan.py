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
a D without BatchNorm (see `Discriminator`).
"""

import math

import torch
from torch import nn
from torch.nn.utils import parametrizations


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
