"""The networks, plain nn.Modules, and the two tables configs name them by.

`MODEL_MODULES` says which module defines each config `type` (the class of that name);
`model_class` imports it. `FAMILY_MODELS` is each family's declaration as plain data: the
config sections that hold its networks, and the type each takes. lib.config checks
configs against both and lib.families builds from them; both sit above this package.

This file imports no torch (~3 s): a config's model arguments are checked against the
constructor's signature read from its source (`model_signature`), so that a typo prints
before torch loads.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
from pathlib import Path

__all__ = ["FAMILY_MODELS", "MODEL_MODULES", "family_of_type", "model_class",
           "model_signature"]

# config `type` -> the module that defines the class of that name
MODEL_MODULES: dict[str, str] = {
    "Generator": "lib.models.dcgan", "Discriminator": "lib.models.dcgan",
    "CVAE": "lib.models.cvae", "DDPM": "lib.models.ddpm"}

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


def model_class(type_name: str) -> type:
    """The nn.Module class of config `type` `type_name` (imports its module, and torch)."""
    return getattr(importlib.import_module(MODEL_MODULES[type_name]), type_name)


@functools.cache
def model_signature(type_name: str) -> inspect.Signature:
    """The constructor's arguments, with their annotations as types (int, list[int], ...)
    and their defaults, read from the module's source without importing it."""
    source = Path(importlib.util.find_spec(MODEL_MODULES[type_name]).origin).read_text()
    cls = next(node for node in ast.parse(source).body
               if isinstance(node, ast.ClassDef) and node.name == type_name)
    init = next(node for node in cls.body
                if isinstance(node, ast.FunctionDef) and node.name == "__init__").args
    defaults = [inspect.Parameter.empty] * (len(init.args) - len(init.defaults))
    defaults += [ast.literal_eval(node) for node in init.defaults]
    return inspect.Signature([  # annotations name builtins only: evaluated without globals
        inspect.Parameter(arg.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                          annotation=eval(ast.unparse(arg.annotation), {}))  # noqa: S307
        for arg, default in zip(init.args[1:], defaults[1:], strict=True)])
