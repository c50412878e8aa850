"""Value checks: what a well-typed config may still not ask for, named by file and field."""

from __future__ import annotations

import functools
import inspect
import json
import re
import unittest.mock
from typing import TYPE_CHECKING

from lib.config.parse import INT64_MAX, check_sections, coerce, field_error, show
from lib.models import FAMILY_MODELS, MODEL_MODULES, model_class, model_signature

if TYPE_CHECKING:
    from lib.config import Config, DataConfig, GanConfig, ModelSpec, OptimizerConfig

MAX_IMAGE_SIZE = 1024  # pixels per side; the largest native size of a built-in dataset is 256
MAX_EVAL_SAMPLES = 100_000  # twice the standard FID@50k
MAX_STANDING_STATS = 100_000  # noise draws for BatchNorm statistics; the default is 1024
MAX_GAMMA = 1e4  # R1/R2 weights; R3GAN's range 0.05-10, StyleGAN2's up to ~100
MAX_PENALTY_EVERY = 10_000  # steps between lazy penalties
MAX_MODEL_BYTES = 2**32  # 4 GiB of weights and buffers per network (Adam's moments triple it)


# ---------------------------------------------------------------------------
# Value checks


def _check(ok: bool, source: str, where: str, msg: str) -> None:
    if not ok:
        raise field_error(source, where, msg)


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
    _check_choice(spec.type, MODEL_MODULES, source, f"{where}.type")
    # a section takes the types that the families declare for it
    allowed = [t for t in MODEL_MODULES if any(roles.get(where) == t
                                               for roles in FAMILY_MODELS.values())]
    _check(spec.type in allowed, source, f"{where}.type",
           f"{spec.type!r} cannot be the {where}; it takes {' or '.join(allowed)}")
    params = model_signature(spec.type).parameters  # read from the source: no torch yet
    for key, value in spec.args.items():
        dotted = f"{where}.args.{key:.40}"
        _check(key in params, source, dotted,
               f"{spec.type} takes no argument {key!r:.40}; valid: {', '.join(params)}")
        hint, default = params[key].annotation, params[key].default
        if hint is not inspect.Parameter.empty:
            spec.args[key] = coerce(hint, value, dotted, source)
        if hint is int and isinstance(default, int) and default >= 0:
            low = 1 if default > 0 else 0  # a size that defaults to 0 means "off"
            _check(spec.args[key] >= low, source, dotted, f"must be >= {low}, got {value}")
        if key in ARG_RULES:
            ok, rule = ARG_RULES[key]
            _check(ok(spec.args[key]), source, dotted, f"{rule}, got {show(value)}")
    if "image_size" in spec.args:  # the data is resized to data.image_size
        _check(spec.args["image_size"] == data.image_size, source, f"{where}.args.image_size",
               f"{spec.args['image_size']} but data.image_size is {data.image_size}; "
               "remove the argument or change data.image_size")


def check_model_size(spec: ModelSpec, data: DataConfig, source: str, where: str) -> None:
    """Build the network on the meta device - no memory, no initialisation - so that its
    own argument checks run now and its size is known before any data is loaded."""
    params = model_signature(spec.type).parameters
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
    import torch  # heavy (~3 s): only once every cheaper check has passed

    try:
        # meta weights hold no values: skip the random init, whose meta kernel (a Python
        # reference) first imports torch._dynamo, 3-4 s of every config check
        with torch.device("meta"), unittest.mock.patch.object(
                torch.nn.init, "normal_", lambda tensor, *args, **kwargs: tensor):
            net = model_class(type_name)(**json.loads(args_json))
    except (ValueError, TypeError, RuntimeError) as e:
        return 0, str(e)[:300]
    return sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()]), None


def _check_optimizer(opt: OptimizerConfig, source: str, name: str) -> None:
    _check(0 < opt.lr <= 1, source, f"{name}.lr",
           f"must be in (0, 1] (Adam's step size; typical: 1e-4 to 2e-3), got {opt.lr}")
    _check(len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas), source,
           f"{name}.betas", f"must be two numbers in [0, 1), got {show(opt.betas)}")
    _check(0 <= opt.weight_decay <= 1, source, f"{name}.weight_decay",
           f"must be in [0, 1], got {opt.weight_decay}")


def _check_gan(gan: GanConfig, source: str) -> None:
    for name in ("r1_gamma", "r2_gamma"):
        gamma = getattr(gan, name)
        _check(0 <= gamma <= MAX_GAMMA, source, f"gan.{name}",
               f"must be in [0, {MAX_GAMMA:g}] (0: off; R3GAN uses 0.05 to 10), got {gamma}")
    _check(1 <= gan.penalty_every <= MAX_PENALTY_EVERY, source, "gan.penalty_every",
           f"must be in [1, {MAX_PENALTY_EVERY}] (steps between R1/R2 penalties; 1: every "
           f"step, StyleGAN2: 16), got {gan.penalty_every}")
    _check(0 <= gan.standing_stats <= MAX_STANDING_STATS, source, "gan.standing_stats",
           f"must be in [0, {MAX_STANDING_STATS}] (0: training's running averages), got "
           f"{gan.standing_stats}")
    # heavy (torch): the names of the losses and augmentations live with their code
    from lib.models.dcgan import AUGMENT_POLICIES, GAN_LOSSES, parse_policy

    _check_choice(gan.loss, GAN_LOSSES, source, "gan.loss")
    try:
        parse_policy(gan.augment)
    except ValueError:
        raise field_error(source, "gan.augment", f"{show(gan.augment)} is not a comma-separated "
                   f"subset of {list(AUGMENT_POLICIES)}, nor '' (none)") from None


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
           f"epochs x iterations_per_epoch = {show(cfg.total_steps)} steps is beyond the "
           "64-bit step counter")
    _check(t.eval_samples == 0 or 2 <= t.eval_samples <= MAX_EVAL_SAMPLES, source,
           "trainer.eval_samples", f"must be 0 (no evaluation) or in [2, {MAX_EVAL_SAMPLES}], "
           f"got {t.eval_samples}")
    _check(0 <= t.collapse_fraction < 1, source, "trainer.collapse_fraction",
           f"must be in [0, 1), got {t.collapse_fraction}")
    _check(t.label_sensitivity_min >= 0, source, "trainer.label_sensitivity_min",
           f"must be >= 0 (0: off), got {t.label_sensitivity_min}")
    _check(0 <= t.ema_decay < 1, source, "trainer.ema_decay", "must be in [0, 1)")
    _check(t.ema_power >= 0, source, "trainer.ema_power", "must be >= 0 (0: no warm-up)")
    _check_choice(t.precision, {"auto", "fp32", "bf16", "fp16"}, source, "trainer.precision")
    _check_choice(t.features, {"auto", "classifier", "inception"}, source, "trainer.features")
    _check(re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", t.device) is not None, source,
           "trainer.device", f"{show(t.device)} is not auto, cpu, cuda or cuda:N")
    _check_choice(cfg.wandb.mode, {"auto", "online", "offline", "disabled"}, source, "wandb.mode")
    _check(cfg.name == "" or re.fullmatch(r"[\w.-]+", cfg.name) is not None, source, "name",
           f"{show(cfg.name)}: use letters, digits, '_', '-' and '.' only (it names a folder)")
    d = cfg.data
    _check(8 <= d.image_size <= MAX_IMAGE_SIZE, source, "data.image_size",
           f"must be in [8, {MAX_IMAGE_SIZE}], got {d.image_size}")
    _check(d.channels in (None, 1, 3), source, "data.channels", "must be 1, 3 or null")
    _check(d.limit is None or d.limit >= 1, source, "data.limit", "must be >= 1 or null")
    _check(d.seed >= 0, source, "data.seed", f"must be >= 0, got {d.seed}")

    if cfg.generator is not None or cfg.discriminator is not None:
        _check(cfg.generator is not None and cfg.discriminator is not None, source,
               "generator" if cfg.generator is None else "discriminator",
               "a GAN config needs both generator and discriminator")
    else:
        _check(cfg.model is not None, source, "model",
               "missing: give generator+discriminator (GAN) or model (CVAE/DDPM)")
    specs = {where: getattr(cfg, where) for where in ("generator", "discriminator", "model")
             if getattr(cfg, where) is not None}
    for where, spec in specs.items():
        check_model_args(spec, d, source, where)
    if cfg.gan is not None:
        _check_gan(cfg.gan, source)
    for where, spec in specs.items():  # last: the models' own checks need torch
        check_model_size(spec, d, source, where)
