"""The one registry of model families, in the order the report shows them.

Each family declares itself once, as `FAMILY` in its own module: its recipe,
the config `type`s it trains, which net samples, which nets EMA averages and
its colour. Config validation, checkpoints, the loop, the notebooks and the
report read the tables below; nothing else names a family.
"""

from torch import nn

from lib.families import cvae, dcgan, ddpm
from lib.families.base import Family, Parts

__all__ = ["FAMILIES", "FAMILY_COLORS", "FAMILY_OF_TYPE", "MODEL_TYPES", "Family", "Parts"]

FAMILIES: dict[str, Family] = {f.name: f for f in (dcgan.FAMILY, cvae.FAMILY, ddpm.FAMILY)}
MODEL_TYPES: dict[str, type[nn.Module]] = {
    type_name: cls for f in FAMILIES.values() for type_name, cls in f.models.items()}
FAMILY_OF_TYPE: dict[str, str] = {type_name: f.name for f in FAMILIES.values()
                                  for type_name in f.models}
FAMILY_COLORS: dict[str, str] = {name: f.color for name, f in FAMILIES.items()}
