"""Run configuration: small dataclasses that load, validate and write JSON.

The course project's layout (`generator`/`discriminator` with `type` + `args`,
`*_optimizer`, `*_lr_scheduler`, `trainer`, `wandb`) loads unchanged; the CVAE
and DDPM use one `model` with `optimizer` and `lr_scheduler`. Every mistake is
a `ConfigError` naming the file and the dotted field.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown, ill-typed or impossible."""


@dataclass
class ModelSpec:
    type: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.0


@dataclass
class SchedulerConfig:
    gamma: float = 1.0  # exponential decay per iteration; 1.0 keeps the lr constant


@dataclass
class DataConfig:
    dataset: str = "digits"
    image_size: int = 32
    root: str = "data"
    path: str | None = None
    channels: int | None = None
    download: bool = False
    limit: int | None = None
    seed: int = 0


@dataclass
class TrainerConfig:
    epochs: int = 1
    iterations_per_epoch: int = 1000
    batch_size: int = 128
    save_period: int = 1  # epochs between periodic checkpoints
    log_every_step: int = 100  # history line + fixed-noise snapshot
    keep_checkpoints: int = 3  # periodic checkpoints kept besides last.pt
    eval_every: int = 0  # steps between metric evaluations; 0 = only at the end
    eval_samples: int = 500  # generated images per evaluation (CPU-sized); 0 = no evaluation
    features: str = "auto"  # feature network for FID/KID: auto | classifier | inception
    inception_weights: str | None = None  # local FID Inception weights for offline machines
    inception_download: bool = False  # fetch the standard Inception weights once if none is found
    seed: int = 0
    max_minutes: float = 0.0  # time budget; 0 = none
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    ema_decay: float = 0.0  # 0 = no EMA copy of the weights
    grad_clip: float = 0.0  # 0 = no clipping
    sync_batchnorm: bool = False  # under DDP: synchronise BatchNorm statistics across ranks
    # divergence guard: a non-finite value or a loss spike rolls back to the last checkpoint
    max_rollbacks: int = 3  # rollbacks allowed per run before it stops with an error
    spike_factor: float = 0.0  # loss > factor x its running median is a spike; 0 = off
    rollback_lr_factor: float = 0.5  # learning rates are multiplied by this at each rollback
    # collapse watch: diversity (1 = as diverse as the real data) below this is logged; 0 = off
    collapse_fraction: float = 0.3
    collapse_rollback: bool = False  # also roll back on a collapse


@dataclass
class WandbConfig:
    project: str = "genlab"
    mode: str = "auto"  # auto | online | offline | disabled
    entity: str | None = None


@dataclass
class Config:
    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    generator: ModelSpec | None = None
    discriminator: ModelSpec | None = None
    model: ModelSpec | None = None
    generator_optimizer: OptimizerConfig | None = None
    discriminator_optimizer: OptimizerConfig | None = None
    optimizer: OptimizerConfig | None = None
    generator_lr_scheduler: SchedulerConfig | None = None
    discriminator_lr_scheduler: SchedulerConfig | None = None
    lr_scheduler: SchedulerConfig | None = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    @property
    def family(self) -> str:
        """"dcgan", "cvae" or "ddpm": which training recipe this config describes."""
        if self.generator is not None:
            return "dcgan"
        from lib.models import MODEL_FAMILIES

        return MODEL_FAMILIES[self.model.type]

    @property
    def total_steps(self) -> int:
        return self.trainer.epochs * self.trainer.iterations_per_epoch

    def to_dict(self) -> dict:
        """Plain JSON-able dict; absent optional sections are left out."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<config>") -> Config:
        cfg = _build(cls, raw, "", source)
        validate(cfg, source)
        return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a JSON config, apply `section.field=value` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object {{...}} at the top, got {raw!r:.60}")
    for item in overrides or []:
        apply_override(raw, item, str(path))
    return Config.from_dict(raw, str(path))


def parse_value(text: str):
    """A command-line value: JSON when it parses (numbers, true, null, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_override(raw: dict, item: str, source: str = "<config>") -> None:
    """Apply one `a.b.c=value` override in place; value is JSON if it parses, else a string."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: override {item!r} must look like section.field=value")
    value = parse_value(text)
    *parents, last = key.strip().split(".")
    node = raw
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {'.'.join(parents[: i + 1])} is not a section")
    node[last] = value


# ---------------------------------------------------------------------------
# Typed construction from plain JSON values


def _err(source: str, where: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {where or '<root>'}: {msg}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp, value, where: str, source: str):
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
                return _coerce(option, value, where, source)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else _err(
            source, where, f"expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _err(source, where, f"expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(item_tp, v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _err(source, where, f"expected an object, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _err(source, where, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _err(source, where, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _err(source, where, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise _err(source, where, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _err(source, where, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def _build(cls, raw, where: str, source: str):
    if not isinstance(raw, dict):
        raise _err(source, where, f"expected an object, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            dotted = f"{where}.{key}" if where else key
            raise _err(source, dotted, f"unknown field; valid fields: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            dotted = f"{where}.{f.name}" if where else f.name
            kwargs[f.name] = _coerce(hints[f.name], raw[f.name], dotted, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _err(source, f"{where}.{f.name}" if where else f.name, "missing required field")
    return cls(**kwargs)


# ---------------------------------------------------------------------------
# Value checks


def _check(ok: bool, source: str, where: str, msg: str) -> None:
    if not ok:
        raise _err(source, where, msg)


def _check_choice(value: str, choices, source: str, where: str) -> None:
    _check(value in choices, source, where, f"{value!r} is not one of {sorted(choices)}")


def check_model_args(spec: ModelSpec, source: str, where: str) -> None:
    """Model args must match the model's constructor: names and annotated types."""
    from lib.models import MODEL_TYPES

    _check_choice(spec.type, MODEL_TYPES, source, f"{where}.type")
    cls = MODEL_TYPES[spec.type]
    params = inspect.signature(cls.__init__).parameters
    hints = typing.get_type_hints(cls.__init__)
    valid = [p for p in params if p != "self"]
    for key, value in spec.args.items():
        dotted = f"{where}.args.{key}"
        _check(key in valid, source, dotted,
               f"{spec.type} takes no argument {key!r}; valid: {', '.join(valid)}")
        if key in hints:
            spec.args[key] = _coerce(hints[key], value, dotted, source)
        default = params[key].default
        if hints.get(key) is int and isinstance(default, int) and default >= 0:
            low = 1 if default > 0 else 0  # a size that defaults to 0 means "off"
            _check(spec.args[key] >= low, source, dotted, f"must be >= {low}, got {value}")


def validate(cfg: Config, source: str = "<config>") -> None:
    for name in ("generator_optimizer", "discriminator_optimizer", "optimizer"):
        opt = getattr(cfg, name)
        if opt is None:
            continue
        _check(opt.lr > 0, source, f"{name}.lr", f"must be > 0, got {opt.lr}")
        _check(len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas), source,
               f"{name}.betas", f"must be two numbers in [0, 1), got {opt.betas}")
        _check(opt.weight_decay >= 0, source, f"{name}.weight_decay", "must be >= 0")
    for name in ("generator_lr_scheduler", "discriminator_lr_scheduler", "lr_scheduler"):
        sched = getattr(cfg, name)
        if sched is not None:
            _check(0 < sched.gamma <= 1, source, f"{name}.gamma",
                   f"must be in (0, 1], got {sched.gamma}")
    t = cfg.trainer
    for name in ("epochs", "iterations_per_epoch", "batch_size", "save_period",
                 "log_every_step", "keep_checkpoints"):
        _check(getattr(t, name) >= 1, source, f"trainer.{name}",
               f"must be >= 1, got {getattr(t, name)}")
    for name in ("eval_every", "max_minutes", "grad_clip", "seed", "max_rollbacks"):
        _check(getattr(t, name) >= 0, source, f"trainer.{name}", "must be >= 0")
    _check(t.eval_samples == 0 or t.eval_samples >= 2, source, "trainer.eval_samples",
           f"must be 0 (no evaluation) or >= 2, got {t.eval_samples}")
    _check(t.seed < 2**63, source, "trainer.seed", f"must be < 2**63, got {t.seed}")
    _check(t.spike_factor == 0 or t.spike_factor > 1, source, "trainer.spike_factor",
           f"must be 0 (off) or > 1, got {t.spike_factor}")
    _check(0 < t.rollback_lr_factor <= 1, source, "trainer.rollback_lr_factor",
           f"must be in (0, 1], got {t.rollback_lr_factor}")
    _check(0 <= t.collapse_fraction < 1, source, "trainer.collapse_fraction",
           f"must be in [0, 1), got {t.collapse_fraction}")
    _check(0 <= t.ema_decay < 1, source, "trainer.ema_decay", "must be in [0, 1)")
    _check_choice(t.precision, {"auto", "fp32", "bf16", "fp16"}, source, "trainer.precision")
    _check_choice(t.features, {"auto", "classifier", "inception"}, source, "trainer.features")
    _check(re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None, source,
           "trainer.device", f"{t.device!r} is not auto, cpu, cuda or cuda:N")
    _check_choice(cfg.wandb.mode, {"auto", "online", "offline", "disabled"}, source, "wandb.mode")
    _check(cfg.name == "" or re.fullmatch(r"[\w.-]+", cfg.name) is not None, source, "name",
           f"{cfg.name!r}: use letters, digits, '_', '-' and '.' only (it names a folder)")
    d = cfg.data
    _check(d.image_size >= 8, source, "data.image_size", f"must be >= 8, got {d.image_size}")
    _check(d.channels in (None, 1, 3), source, "data.channels", "must be 1, 3 or null")
    _check(d.limit is None or d.limit >= 1, source, "data.limit", "must be >= 1 or null")

    if cfg.generator is not None or cfg.discriminator is not None:
        _check(cfg.generator is not None and cfg.discriminator is not None, source,
               "generator" if cfg.generator is None else "discriminator",
               "a GAN config needs both generator and discriminator")
        _check(cfg.model is None, source, "model",
               "give either generator+discriminator (GAN) or model (CVAE/DDPM), not both")
        check_model_args(cfg.generator, source, "generator")
        check_model_args(cfg.discriminator, source, "discriminator")
    else:
        _check(cfg.model is not None, source, "model",
               "missing: give generator+discriminator (GAN) or model (CVAE/DDPM)")
        check_model_args(cfg.model, source, "model")
