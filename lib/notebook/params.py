"""Notebook parameters -> a config: a preset whose fields the parameters that are set replace.

A parameter is named like the config field it sets (`batch_size` is trainer.batch_size,
`kl_weight` the model's argument), or `<section>_<field>` where the field's name alone is
vague or ambiguous (`wandb_mode`, `data_path`; `generator_optimizer_lr`). The parameters
cell is the only list of them: its annotated names are what papermill lists.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from lib.config import Config, ConfigError, ModelSpec, read_config, set_field
from lib.notebook.paths import find_preset


def set_parameters(namespace: dict, notebook: tuple[str, ...] = ()) -> dict:
    """The parameters cell's values that are set, by name: its annotated names (the ones
    papermill lists) less those still None (the preset's value stays) and the `notebook`
    ones (the cells use those themselves: preset, resume, out_root...)."""
    return {name: namespace.get(name) for name in namespace.get("__annotations__", {})
            if name not in notebook and namespace.get(name) is not None}


def preset_fields(raw: dict) -> dict[str, Any]:
    """Dotted field -> its value in the plain config `raw` (the dataclass default where
    `raw` has none): every field of its sections, and its model arguments."""
    hints = typing.get_type_hints(Config)
    fields: dict[str, Any] = {"name": raw.get("name", "")}
    for f in dataclasses.fields(Config):
        section = raw.get(f.name)
        cls = next((t for t in (hints[f.name], *typing.get_args(hints[f.name]))
                    if dataclasses.is_dataclass(t)), None)
        if cls is ModelSpec:  # free-form arguments: the ones the preset gives
            args = section.get("args") if isinstance(section, dict) else None
            fields.update({f"{f.name}.args.{k}": v for k, v in (args or {}).items()})
        elif cls is not None and (section is not None or f.default is not None):
            given = section if isinstance(section, dict) else {}
            for g in dataclasses.fields(cls):
                default = (g.default if g.default is not dataclasses.MISSING
                           else g.default_factory())
                fields[f"{f.name}.{g.name}"] = given.get(g.name, default)
    return fields


def field_of(name: str, fields: dict[str, Any], source: str | Path) -> str:
    """The one dotted field of `fields` a parameter `name` sets: `field` or `section_field`."""
    names: dict[str, list[str]] = {}
    for path in fields:
        section, last = path.split(".")[0], path.split(".")[-1]
        names.setdefault(last, []).append(path)
        if section != last:
            names.setdefault(f"{section}_{last}", []).append(path)
    found = names.get(name, [])
    if len(found) == 1:
        return found[0]
    if found:
        choices = " or ".join(f"{p.split('.')[0]}_{name}" for p in found)
        raise ConfigError(f"notebook parameter {name!r} is ambiguous in {source}: it could "
                          f"set {', '.join(found)}; name it {choices}")
    valid = sorted(n for n, paths in names.items() if [n] == [p.split(".")[-1] for p in paths])
    raise ConfigError(f"unknown notebook parameter {name!r}: {source} has no such field; a "
                      f"parameter is named like a field ({', '.join(valid)}) or "
                      f"<section>_<field> (e.g. wandb_mode)")


def config_from_parameters(preset: str | Path, **params) -> Config:
    """The preset with each parameter's value put, as given, in the field it names;
    validated once (a wrong type or value is a ConfigError naming the field)."""
    path = find_preset(preset)
    raw = read_config(path)
    fields = preset_fields(raw)
    for name, value in params.items():
        set_field(raw, field_of(name, fields, path),
                  str(value) if isinstance(value, Path) else value, str(path))
    return Config.from_dict(raw, f"{path} with the notebook's parameters")


def preset_changes(preset: str | Path, **params) -> list[dict]:
    """What the parameters change in the preset: one row per field whose value differs."""
    path = find_preset(preset)
    fields = preset_fields(read_config(path))
    rows = []
    for name, value in params.items():
        field = field_of(name, fields, path)
        value = str(value) if isinstance(value, Path) else value
        if value != fields[field]:
            rows.append({"field": field, "preset": fields[field], "this run": value})
    return rows
