"""Model families. `MODEL_TYPES` maps a config's `type` string to its class."""

from lib.models.cvae import CVAE
from lib.models.dcgan import Discriminator, Generator
from lib.models.ddpm import DDPM

MODEL_TYPES = {
    "Generator": Generator,
    "Discriminator": Discriminator,
    "CVAE": CVAE,
    "DDPM": DDPM,
}

# which training recipe in lib.train a config's model type belongs to
MODEL_FAMILIES = {
    "Generator": "dcgan",
    "Discriminator": "dcgan",
    "CVAE": "cvae",
    "DDPM": "ddpm",
}
