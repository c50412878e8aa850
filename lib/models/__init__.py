"""The networks, plain nn.Modules; lib.families registers them under their config `type`."""

from lib.models.cvae import CVAE
from lib.models.dcgan import Discriminator, Generator
from lib.models.ddpm import DDPM

__all__ = ["CVAE", "DDPM", "Discriminator", "Generator"]
