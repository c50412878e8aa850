"""Run configuration: small dataclasses that load, validate and write JSON.

The course project's layout (`generator`/`discriminator` with `type` + `args`,
`*_optimizer`, `*_lr_scheduler`, `trainer`, `wandb`) loads unchanged; the CVAE
and DDPM use one `model` with `optimizer` and `lr_scheduler`. Every mistake is
a `ConfigError` naming the file and the dotted field: unknown or ill-typed fields,
sections the family would ignore, numbers beyond float32 / int64 or outside what
training can use, and model arguments the model cannot be built from (each network
is built on the meta device at validation, without memory or initialisation).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import re
import reprlib
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown, ill-typed or impossible."""


# Numbers travel through float32 tensors and int64 counters: what neither can hold is refused.
FLOAT32_MAX = 3.4028234663852886e38
INT64_MAX = 2**63 - 1
MAX_IMAGE_SIZE = 1024  # pixels per side; the largest native size of a built-in dataset is 256
MAX_EVAL_SAMPLES = 100_000  # twice the standard FID@50k
MAX_MODEL_BYTES = 2**32  # 4 GiB of weights and buffers per network (Adam's moments triple it)

# The sections each kind of config reads; any other one would be silently ignored.
GAN_SECTIONS = ("generator", "discriminator", "generator_optimizer", "discriminator_optimizer",
                "generator_lr_scheduler", "discriminator_lr_scheduler", "gan")
MODEL_SECTIONS = ("model", "optimizer", "lr_scheduler")


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
class GanConfig:
    """The GAN family's training options; the defaults are the reference DCGAN's step."""

    loss: str = "bce"  # bce (the reference, non-saturating) | hinge (SN-GAN, BigGAN)
    augment: str = ""  # DiffAugment of D's inputs, e.g. "color,translation,cutout"; "" = none


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
    verify: bool = True  # MNIST's files must match the official MD5s
    dedupe: bool = False  # drop exact duplicate images (identical decoded pixels) at load


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
    # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune | ...
    compile_mode: str = "default"
    deterministic: bool = False
    ema_decay: float = 0.0  # 0 = no EMA copy of the weights
    # EMA warm-up (ema-pytorch's): decay min(ema_decay, 1 - (1 + step / ema_inv_gamma) **
    # -ema_power), so a short run's average is not its initialisation; 0 = constant decay
    ema_power: float = 0.0
    ema_inv_gamma: float = 1.0
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
    gan: GanConfig | None = None  # GAN options (loss, DiffAugment); absent = the reference's
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    @property
    def family(self) -> str:
        """"dcgan", "cvae" or "ddpm": the family (lib.families) of the model type it trains."""
        from lib.families import FAMILY_OF_TYPE

        return FAMILY_OF_TYPE[(self.generator or self.model).type]

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
        if isinstance(raw, dict):
            check_sections(raw, source)
        if _too_deep(raw):
            raise ConfigError(f"{source}: arrays or objects nested too deeply (over {MAX_DEPTH} "
                              "levels)")
        cfg = _build(cls, raw, "", source)
        validate(cfg, source)
        return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a JSON config, apply `section.field=value` overrides, validate."""
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
        raw = _parse_json(text)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object {{...}} at the top, got {_show(raw)}")
    for item in overrides or []:
        apply_override(raw, item, str(path))
    return Config.from_dict(raw, str(path))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """An object's fields; json alone keeps the last of two equal keys without a word."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ConfigError(f"field {key!r:.60} is given twice in one object; keep one")
        seen.add(key)
    return dict(pairs)


MAX_DEPTH = 32  # no config nests deeper than a handful of levels


def _too_deep(value) -> bool:
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
    if _too_deep(value):
        raise ConfigError(f"not a config: arrays or objects nested too deeply (over {MAX_DEPTH} "
                          "levels)")
    return value


def _parse_json(text: str):
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


def parse_value(text: str):
    """A command-line value: JSON when it parses (numbers, true, null, lists), else the string."""
    try:
        return _bounded(json.loads(text, object_pairs_hook=_unique_keys))
    except json.JSONDecodeError:
        return text
    except (RecursionError, ValueError):  # JSON, but too deep, too long or with a key twice
        return _parse_json(text)


def apply_override(raw: dict, item: str, source: str = "<config>") -> None:
    """Apply one `a.b.c=value` override in place; value is JSON if it parses, else a string."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: override {_show(item)} must look like section.field=value")
    try:
        value = parse_value(text)
    except ConfigError as e:
        raise ConfigError(f"{source}: override {key.strip():.60}: {e}") from None
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


_short = reprlib.Repr()
_short.maxlevel, _short.maxlist, _short.maxdict = 3, 4, 4
_short.maxstring = _short.maxother = _short.maxlong = 40


def _show(value) -> str:
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
            source, where, f"expected {_type_name(tp)}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _err(source, where, f"expected a list, got {_show(value)}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(item_tp, v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _err(source, where, f"expected an object, got {_show(value)}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _err(source, where, f"expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _err(source, where, f"expected an integer, got {_show(value)}")
        if abs(value) > INT64_MAX:
            raise _err(source, where, f"{_show(value)} is beyond the 64-bit integer range")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _err(source, where, f"expected a number, got {_show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise _err(source, where, f"expected a finite number, got {value!r}")
        if abs(value) > FLOAT32_MAX:  # compared exactly, so huge integers need no float
            raise _err(source, where, f"{_show(value)} is beyond the float32 range "
                                      f"(±{FLOAT32_MAX:.3g}) that tensors hold")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _err(source, where, f"expected a string, got {_show(value)}")
        if "\0" in value or not _writable(value):  # a path cannot hold NUL; config.json is UTF-8
            raise _err(source, where, f"{_show(value)} holds a NUL or a character that "
                                      "UTF-8 cannot write")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def _build(cls, raw, where: str, source: str):
    if not isinstance(raw, dict):
        raise _err(source, where, f"expected an object, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            dotted = f"{where}.{key:.40}" if where else f"{key:.40}"
            raise _err(source, dotted, f"unknown field; valid fields: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            dotted = f"{where}.{f.name}" if where else f.name
            kwargs[f.name] = _coerce(hints[f.name], raw[f.name], dotted, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _err(source, f"{where}.{f.name}" if where else f.name, "missing required field")
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
            raise _err(source, name, f"{kind} would ignore {fields}: it reads "
                                     f"{', '.join(reads)} (and name, data, trainer, wandb); "
                                     "remove the section or move its fields there")


# ---------------------------------------------------------------------------
# Value checks


def _check(ok: bool, source: str, where: str, msg: str) -> None:
    if not ok:
        raise _err(source, where, msg)


def _check_choice(value: str, choices, source: str, where: str) -> None:
    _check(value in choices, source, where, f"{value!r} is not one of {sorted(choices)}")


# Model arguments the constructors accept but that cannot be meant (keyed by argument name,
# which means the same in every model). Sizes are bounded by MAX_MODEL_BYTES instead.
ARG_RULES = {
    "channel_mults": (lambda v: len(v) >= 1 and min(v) >= 1,
                      "must be a non-empty list of integers >= 1 (one UNet level each)"),
    "base_channels": (lambda v: v % 2 == 0,
                      "must be even (the time embedding is base_channels/2 sine-cosine pairs)"),
    "dropout": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "timesteps": (lambda v: v <= 10_000,
                  "must be <= 10000 (Ho et al. use 1000, Nichol & Dhariwal 4000)"),
    "guidance_scale": (lambda v: 0 <= v <= 100, "must be in [0, 100] (typical: 1 to 10)"),
    "kl_weight": (lambda v: v <= 1e4, "must be <= 10000 (beta-VAEs use up to a few hundred)"),
}


def check_model_args(spec: ModelSpec, data: DataConfig, source: str, where: str) -> None:
    """Model args must match the model's constructor: names, annotated types, sane values."""
    from lib.families import MODEL_TYPES

    _check_choice(spec.type, MODEL_TYPES, source, f"{where}.type")
    # the GAN's two sections each take their own network; `model` takes any other one
    roles = {"generator": ["Generator"], "discriminator": ["Discriminator"]}
    allowed = roles.get(where) or [t for t in MODEL_TYPES if t not in ("Generator",
                                                                     "Discriminator")]
    _check(spec.type in allowed, source, f"{where}.type",
           f"{spec.type!r} cannot be the {where}; it takes {' or '.join(allowed)}")
    cls = MODEL_TYPES[spec.type]
    params = inspect.signature(cls.__init__).parameters
    hints = typing.get_type_hints(cls.__init__)
    valid = [p for p in params if p != "self"]
    for key, value in spec.args.items():
        dotted = f"{where}.args.{key:.40}"
        _check(key in valid, source, dotted,
               f"{spec.type} takes no argument {key!r:.40}; valid: {', '.join(valid)}")
        if key in hints:
            spec.args[key] = _coerce(hints[key], value, dotted, source)
        default = params[key].default
        if hints.get(key) is int and isinstance(default, int) and default >= 0:
            low = 1 if default > 0 else 0  # a size that defaults to 0 means "off"
            _check(spec.args[key] >= low, source, dotted, f"must be >= {low}, got {value}")
        if key in ARG_RULES:
            ok, rule = ARG_RULES[key]
            _check(ok(spec.args[key]), source, dotted, f"{rule}, got {_show(value)}")
    if "image_size" in spec.args:  # the data is resized to data.image_size
        _check(spec.args["image_size"] == data.image_size, source, f"{where}.args.image_size",
               f"{spec.args['image_size']} but data.image_size is {data.image_size}; "
               "remove the argument or change data.image_size")
    check_model_size(cls, spec, data, source, where)


def check_model_size(cls, spec: ModelSpec, data: DataConfig, source: str, where: str) -> None:
    """Build the network on the meta device - no memory, no initialisation - so that its
    own argument checks run now and its size is known before any data is loaded."""
    params = inspect.signature(cls.__init__).parameters
    # what the data fills in at build time; 10 classes stand in for a labelled dataset
    stand_ins = {"image_size": data.image_size, "n_channels": data.channels or 3,
                 "num_classes": 10}
    args = {**{k: v for k, v in stand_ins.items() if k in params}, **spec.args}
    size, error = _meta_build(spec.type, json.dumps(args, sort_keys=True))
    _check(error is None, source, f"{where}.args", error or "")
    _check(size <= MAX_MODEL_BYTES, source, f"{where}.args",
           f"{spec.type} would hold {size / 2**30:.3g} GiB of weights, over the "
           f"{MAX_MODEL_BYTES / 2**30:g} GiB this project's models are sized for; "
           "use smaller widths or fewer levels")


@functools.lru_cache(maxsize=256)  # configs differing only outside the model reuse the answer
def _meta_build(type_name: str, args_json: str) -> tuple[int, str | None]:
    """(bytes of weights and buffers, None), or (0, the model's own complaint)."""
    import torch

    from lib.families import MODEL_TYPES

    try:
        with torch.device("meta"):
            net = MODEL_TYPES[type_name](**json.loads(args_json))
    except (ValueError, TypeError, RuntimeError) as e:
        return 0, str(e)[:300]
    return sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()]), None


def _check_optimizer(opt: OptimizerConfig, source: str, name: str) -> None:
    _check(0 < opt.lr <= 1, source, f"{name}.lr",
           f"must be in (0, 1] (Adam's step size; typical: 1e-4 to 2e-3), got {opt.lr}")
    _check(len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas), source,
           f"{name}.betas", f"must be two numbers in [0, 1), got {_show(opt.betas)}")
    _check(0 <= opt.weight_decay <= 1, source, f"{name}.weight_decay",
           f"must be in [0, 1], got {opt.weight_decay}")


def _check_gan(gan: GanConfig, source: str) -> None:
    from lib.models.augment import AUGMENT_POLICIES, parse_policy
    from lib.models.losses import GAN_LOSSES

    _check_choice(gan.loss, GAN_LOSSES, source, "gan.loss")
    try:
        parse_policy(gan.augment)
    except ValueError:
        raise _err(source, "gan.augment", f"{_show(gan.augment)} is not a comma-separated "
                   f"subset of {list(AUGMENT_POLICIES)}, nor '' (none)") from None


COMPILE_MODES = {"default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"}


def validate(cfg: Config, source: str = "<config>") -> None:
    check_sections(cfg.to_dict(), source)
    for name in ("generator_optimizer", "discriminator_optimizer", "optimizer"):
        if getattr(cfg, name) is not None:
            _check_optimizer(getattr(cfg, name), source, name)
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
    _check(cfg.total_steps <= INT64_MAX, source, "trainer.iterations_per_epoch",
           f"epochs x iterations_per_epoch = {_show(cfg.total_steps)} steps is beyond the "
           "64-bit step counter")
    _check(t.eval_samples == 0 or 2 <= t.eval_samples <= MAX_EVAL_SAMPLES, source,
           "trainer.eval_samples", f"must be 0 (no evaluation) or in [2, {MAX_EVAL_SAMPLES}], "
           f"got {t.eval_samples}")
    _check(t.spike_factor == 0 or t.spike_factor > 1, source, "trainer.spike_factor",
           f"must be 0 (off) or > 1, got {t.spike_factor}")
    _check(0 < t.rollback_lr_factor <= 1, source, "trainer.rollback_lr_factor",
           f"must be in (0, 1], got {t.rollback_lr_factor}")
    _check(0 <= t.collapse_fraction < 1, source, "trainer.collapse_fraction",
           f"must be in [0, 1), got {t.collapse_fraction}")
    _check(0 <= t.ema_decay < 1, source, "trainer.ema_decay", "must be in [0, 1)")
    _check(t.ema_power >= 0, source, "trainer.ema_power", "must be >= 0 (0: no warm-up)")
    _check(t.ema_inv_gamma > 0, source, "trainer.ema_inv_gamma", "must be > 0")
    _check_choice(t.precision, {"auto", "fp32", "bf16", "fp16"}, source, "trainer.precision")
    _check_choice(t.compile_mode, COMPILE_MODES, source, "trainer.compile_mode")
    _check_choice(t.features, {"auto", "classifier", "inception"}, source, "trainer.features")
    _check(re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", t.device) is not None, source,
           "trainer.device", f"{_show(t.device)} is not auto, cpu, cuda or cuda:N")
    _check_choice(cfg.wandb.mode, {"auto", "online", "offline", "disabled"}, source, "wandb.mode")
    _check(cfg.name == "" or re.fullmatch(r"[\w.-]+", cfg.name) is not None, source, "name",
           f"{_show(cfg.name)}: use letters, digits, '_', '-' and '.' only (it names a folder)")
    d = cfg.data
    _check(8 <= d.image_size <= MAX_IMAGE_SIZE, source, "data.image_size",
           f"must be in [8, {MAX_IMAGE_SIZE}], got {d.image_size}")
    _check(d.channels in (None, 1, 3), source, "data.channels", "must be 1, 3 or null")
    _check(d.limit is None or d.limit >= 1, source, "data.limit", "must be >= 1 or null")

    if cfg.generator is not None or cfg.discriminator is not None:
        _check(cfg.generator is not None and cfg.discriminator is not None, source,
               "generator" if cfg.generator is None else "discriminator",
               "a GAN config needs both generator and discriminator")
        check_model_args(cfg.generator, d, source, "generator")
        check_model_args(cfg.discriminator, d, source, "discriminator")
        if cfg.gan is not None:
            _check_gan(cfg.gan, source)
    else:
        _check(cfg.model is not None, source, "model",
               "missing: give generator+discriminator (GAN) or model (CVAE/DDPM)")
        check_model_args(cfg.model, d, source, "model")
