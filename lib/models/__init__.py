"""Model families. `MODEL_TYPES` maps a config's `type` string to its class."""

from lib.models.dcgan import Discriminator, Generator

MODEL_TYPES = {
    "Generator": Generator,
    "Discriminator": Discriminator,
}

# which training recipe in lib.train a config's model type belongs to
MODEL_FAMILIES = {
    "Generator": "dcgan",
    "Discriminator": "dcgan",
}
