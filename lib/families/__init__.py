"""The one registry of model families, in the order the report shows them.

Each family declares itself once: its config sections and model types as plain
data in lib.models.FAMILY_MODELS (the config checks read them there), and its
recipe, which net samples, which nets EMA averages and its colour as `FAMILY` in
its own module. Checkpoints, the loop, evaluation, the notebooks and the report
read `FAMILIES`; nothing else names a family.
"""

from lib.families import cvae, dcgan, ddpm
from lib.families.base import Family, Parts

__all__ = ["FAMILIES", "FAMILY_COLORS", "Family", "Parts"]

FAMILIES: dict[str, Family] = {f.name: f for f in (dcgan.FAMILY, cvae.FAMILY, ddpm.FAMILY)}
FAMILY_COLORS: dict[str, str] = {name: f.color for name, f in FAMILIES.items()}
