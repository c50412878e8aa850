import pytest
import torch
from torch import nn

from lib.models.dcgan import Discriminator, Generator


def reference_generator(nz=100, ngf=64, nc=3):
    """pytorch/examples dcgan/main.py, verbatim layer for layer."""
    return nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2),
        nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())


def reference_discriminator(nc=3, ndf=64):
    return nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False))  # the reference's Sigmoid is our logits


def describe(module):
    return [(type(m).__name__, tuple(p.shape for p in m.parameters(recurse=False)),
             getattr(m, "stride", None), getattr(m, "padding", None),
             getattr(m, "negative_slope", None))
            for m in module.modules() if not isinstance(m, nn.Sequential | Generator
                                                        | Discriminator)]


def test_64px_matches_the_pytorch_reference_layer_for_layer():
    assert describe(Generator()) == describe(reference_generator())
    assert describe(Discriminator()) == describe(reference_discriminator())


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(size, channels):
    G = Generator(latent_dim=16, hidden_dim=8, n_channels=channels, image_size=size)
    D = Discriminator(n_channels=channels, hidden_dim=8, image_size=size)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (5,)


def test_reference_initialisation():
    torch.manual_seed(0)
    G = Generator()
    convs = torch.cat([m.weight.flatten() for m in G.modules()
                       if isinstance(m, nn.ConvTranspose2d)])
    bns = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(convs.mean()) < 1e-3 and abs(convs.std() - 0.02) < 1e-3
    assert abs(bns.mean() - 1) < 5e-3 and abs(bns.std() - 0.02) < 5e-3


def test_image_size_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        Generator(image_size=28)
