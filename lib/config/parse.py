"""JSON text to typed config values: parsing (duplicate keys, depth, huge numbers),
`--set` overrides, and construction of the dataclasses with errors naming file and field."""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown, ill-typed or impossible."""


# Numbers travel through float32 tensors and int64 counters: what neither can hold is refused.
FLOAT32_MAX = 3.4028234663852886e38
INT64_MAX = 2**63 - 1


# The config's two layouts (DESIGN.md's JSON contract): the sections each reads; any other
# one would be silently ignored. lib.models.FAMILY_MODELS says which model type each
# network section holds.
GAN_SECTIONS = ("generator", "discriminator", "generator_optimizer", "discriminator_optimizer",
                "generator_lr_scheduler", "discriminator_lr_scheduler", "gan")
MODEL_SECTIONS = ("model", "optimizer", "lr_scheduler")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """An object's fields; json alone keeps the last of two equal keys without a word."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ConfigError(f"field {key!r:.60} is given twice in one object; keep one")
        seen.add(key)
    return dict(pairs)


MAX_DEPTH = 32  # no config nests deeper than a handful of levels


def too_deep(value) -> bool:
    """Deeper than MAX_DEPTH, counted without recursion: how deep Python itself can go
    (asdict, deepcopy, json) depends on the stack already in use, so the bound is ours."""
    level = [value]
    for _ in range(MAX_DEPTH + 1):
        level = [v for item in level if isinstance(item, (list, dict))
                 for v in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return False
    return True


def _bounded(value):
    if too_deep(value):
        raise ConfigError(f"not a config: arrays or objects nested too deeply (over {MAX_DEPTH} "
                          "levels)")
    return value


def parse_json(text: str):
    """JSON text -> value; a ConfigError (no file named) for what Python's parser cannot take."""
    try:
        return _bounded(json.loads(text, object_pairs_hook=_unique_keys))
    except ConfigError:
        raise
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON ({e})") from None
    except RecursionError:
        raise ConfigError("not a config: arrays or objects nested too deeply") from None
    except ValueError:  # Python refuses to parse integers of more than 4,300 digits
        raise ConfigError("not a config: it holds a number of thousands of digits") from None


def read_config(path) -> dict:
    """A JSON config file as its plain dict (not yet validated): what overrides change."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a BOM (Windows editors) is harmless
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at offset "
                          f"{e.start}); save the file as UTF-8") from None
    try:
        raw = parse_json(text)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object {{...}} at the top, got {show(raw)}")
    return raw


def parse_value(text: str):
    """A command-line value: JSON when it parses (numbers, true, null, lists), else the string."""
    try:
        return _bounded(json.loads(text, object_pairs_hook=_unique_keys))
    except json.JSONDecodeError:
        return text
    except (RecursionError, ValueError):  # JSON, but too deep, too long or with a key twice
        return parse_json(text)


def apply_override(raw: dict, item: str, source: str = "<config>") -> None:
    """Apply one `a.b.c=value` override in place; value is JSON if it parses, else a string."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: override {show(item)} must look like section.field=value")
    try:
        value = parse_value(text)
    except ConfigError as e:
        raise ConfigError(f"{source}: override {key.strip():.60}: {e}") from None
    set_field(raw, key.strip(), value, source)


def set_field(raw: dict, key: str, value, source: str = "<config>") -> None:
    """Set the dotted field `key` (`trainer.epochs`) of a plain config dict to `value`, as is."""
    *parents, last = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {'.'.join(parents[: i + 1])} is not a section")
    node[last] = value


# ---------------------------------------------------------------------------
# Typed construction from plain JSON values


def field_error(source: str, where: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {where or '<root>'}: {msg}")


_short = reprlib.Repr()
_short.maxlevel, _short.maxlist, _short.maxdict = 3, 4, 4
_short.maxstring = _short.maxother = _short.maxlong = 40


def show(value) -> str:
    """A value as a message shows it: short, whatever its size or depth."""
    return _short.repr(value)


def _writable(text: str) -> bool:
    try:
        text.encode("utf-8")  # lone surrogates: what undecodable command-line bytes become
    except UnicodeEncodeError:
        return False
    return True


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(tp, value, where: str, source: str):
    """Check `value` against the annotation `tp`, converting only int -> float."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, where, source)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else field_error(
            source, where, f"expected {_type_name(tp)}, got {show(value)}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, source)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise field_error(source, where, f"expected a list, got {show(value)}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [coerce(item_tp, v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise field_error(source, where, f"expected an object, got {show(value)}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise field_error(source, where, f"expected true or false, got {show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise field_error(source, where, f"expected an integer, got {show(value)}")
        if abs(value) > INT64_MAX:
            raise field_error(source, where, f"{show(value)} is beyond the 64-bit integer range")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise field_error(source, where, f"expected a number, got {show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise field_error(source, where, f"expected a finite number, got {value!r}")
        if abs(value) > FLOAT32_MAX:  # compared exactly, so huge integers need no float
            raise field_error(source, where, f"{show(value)} is beyond the float32 range "
                                      f"(±{FLOAT32_MAX:.3g}) that tensors hold")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise field_error(source, where, f"expected a string, got {show(value)}")
        if "\0" in value or not _writable(value):  # a path cannot hold NUL; config.json is UTF-8
            raise field_error(source, where, f"{show(value)} holds a NUL or a character that "
                                      "UTF-8 cannot write")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def build(cls, raw, where: str, source: str):
    if not isinstance(raw, dict):
        raise field_error(source, where, f"expected an object, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            dotted = f"{where}.{key:.40}" if where else f"{key:.40}"
            raise field_error(source, dotted,
                              f"unknown field; valid fields: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            dotted = f"{where}.{f.name}" if where else f.name
            kwargs[f.name] = coerce(hints[f.name], raw[f.name], dotted, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise field_error(source, f"{where}.{f.name}" if where else f.name,
                              "missing required field")
    return cls(**kwargs)


def _leaves(node, prefix: str) -> list[str]:
    """Dotted names of the values under `node`: model -> ["model.args.eta"]."""
    if not isinstance(node, dict) or not node:
        return [prefix]
    return [leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}.{k:.40}")]


def check_sections(raw: dict, source: str) -> None:
    """A section the config's family does not read is an error, not silently ignored.

    Checked on the raw JSON, before any field, so that `--set model.args.eta=5` on a GAN
    names the stray `model` section rather than the `model.type` it lacks.
    """
    given = [k for k, v in raw.items() if v is not None]
    if "generator" in given or "discriminator" in given:
        kind, reads, stray = "a GAN config (generator + discriminator)", GAN_SECTIONS, \
            MODEL_SECTIONS
    elif "model" in given:
        kind, reads, stray = "a CVAE/DDPM config (model)", MODEL_SECTIONS, GAN_SECTIONS
    else:
        return
    for name in stray:
        if name in given:
            fields = ", ".join(_leaves(raw[name], name)[:3])
            raise field_error(source, name, f"{kind} would ignore {fields}: it reads "
                                     f"{', '.join(reads)} (and name, data, trainer, wandb); "
                                     "remove the section or move its fields there")
