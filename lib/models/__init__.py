"""The networks, plain nn.Modules, and the two tables configs name them by.

`MODEL_TYPES` turns a config `type` into its class. `FAMILY_MODELS` is each family's
declaration as plain data: the config sections that hold its networks, and the type
each takes. lib.config checks configs against both and lib.families builds from them;
both sit above this package, so neither has to import the other.
"""

from torch import nn

from lib.models.cvae import CVAE
from lib.models.dcgan import Discriminator, Generator
from lib.models.ddpm import DDPM

__all__ = ["CVAE", "DDPM", "FAMILY_MODELS", "MODEL_TYPES", "Discriminator", "Generator",
           "family_of_type"]

MODEL_TYPES: dict[str, type[nn.Module]] = {
    "Generator": Generator, "Discriminator": Discriminator, "CVAE": CVAE, "DDPM": DDPM}

# family -> {config section -> the model type it holds}, in the order the report shows them
FAMILY_MODELS: dict[str, dict[str, str]] = {
    "dcgan": {"generator": "Generator", "discriminator": "Discriminator"},
    "cvae": {"model": "CVAE"},
    "ddpm": {"model": "DDPM"},
}


def family_of_type(type_name: str) -> str:
    """The family that trains networks of config `type` `type_name`."""
    return next(family for family, roles in FAMILY_MODELS.items()
                if type_name in roles.values())
