"""Run configuration: small dataclasses that load, validate and write JSON.

The course project's layout (`generator`/`discriminator` with `type` + `args`,
`*_optimizer`, `*_lr_scheduler`, `trainer`, `wandb`) loads unchanged; the CVAE
and DDPM use one `model` with `optimizer` and `lr_scheduler`. Every mistake is
a `ConfigError` naming the file and the dotted field: unknown or ill-typed fields,
sections the family would ignore, numbers beyond float32 / int64 or outside what
training can use, and model arguments the model cannot be built from (each network
is built on the meta device at validation, without memory or initialisation).

Modules: this one holds the dataclasses and `load_config`; `parse` reads JSON
and `--set` overrides into them; `checks` validates the values.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lib.config.checks import validate
from lib.config.parse import (
    MAX_DEPTH,
    ConfigError,
    apply_override,
    build,
    check_sections,
    parse_value,
    read_config,
    set_field,
    too_deep,
)
from lib.models import family_of_type

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "GanConfig",
    "ModelSpec",
    "OptimizerConfig",
    "SchedulerConfig",
    "TrainerConfig",
    "WandbConfig",
    "apply_override",
    "load_config",
    "parse_value",
    "read_config",
    "set_field",
    "validate",
]


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

    # bce (the reference, non-saturating) | hinge (SN-GAN, BigGAN) | rasgan | ralsgan
    # (relativistic average, Jolicoeur-Martineau 2018) | rpgan (relativistic pairing, R3GAN)
    loss: str = "bce"
    r1_gamma: float = 0.0  # zero-centred penalty gamma/2 E|grad D|^2 at real images; 0 = off
    r2_gamma: float = 0.0  # the same on fakes (R3GAN takes both with rpgan); 0 = off
    penalty_every: int = 16  # lazy R1/R2: every k-th step, weighted by k (StyleGAN2's 16)
    augment: str = ""  # DiffAugment of D's inputs, e.g. "color,translation,cutout"; "" = none
    # G's BatchNorm statistics for sampling: recomputed on this many noise draws through the
    # weights that sample (EMA or raw); 0 = the running averages training kept
    standing_stats: int = 1024


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
    verify_cache: bool = False  # key the decoded cache on file contents too (cp -p, rsync -t)


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
    # EMA warm-up (ema-pytorch's): decay min(ema_decay, 1 - (1 + step) ** -ema_power), so a
    # short run's average is not its initialisation (docs/quality.md); 0 = constant decay
    ema_power: float = 2 / 3  # ema-pytorch's default
    grad_clip: float = 0.0  # 0 = no clipping
    sync_batchnorm: bool = False  # under DDP: synchronise BatchNorm statistics across ranks
    # divergence guard: a non-finite value rolls back to the last checkpoint, at half the lr
    max_rollbacks: int = 3  # rollbacks allowed per run before it stops with an error
    # collapse watch: diversity (1 = as diverse as the real data) below this is logged; 0 = off
    collapse_fraction: float = 0.3
    # ... and a conditional generator's label sensitivity (lib.metrics.label_sensitivity: ~0
    # when the label is ignored) below this; 0 = off. Measured values: docs/quality.md
    label_sensitivity_min: float = 0.1
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
    gan: GanConfig | None = None  # GAN options (loss, R1/R2, DiffAugment); absent = the reference
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    @property
    def family(self) -> str:
        """"dcgan", "cvae" or "ddpm": the family that trains its model type (lib.models)."""
        return family_of_type((self.generator or self.model).type)

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
        if too_deep(raw):
            raise ConfigError(f"{source}: arrays or objects nested too deeply (over {MAX_DEPTH} "
                              "levels)")
        cfg = build(cls, without_retired(raw, source), "", source)
        validate(cfg, source)
        return cfg


# Options removed for want of a preset that used them or a measurement for them. Old
# configs and checkpoints hold them at these values, which mean what the code does now.
RETIRED = {"trainer": {
    "spike_factor": (0.0, "the loss-spike guard is gone; non-finite values still roll back"),
    "rollback_lr_factor": (0.5, "a rollback always halves the learning rates"),
    "ema_inv_gamma": (1.0, "the EMA warm-up is 1 - (1 + step) ** -ema_power"),
    "compile_mode": ("default", "trainer.compile uses torch.compile's default mode"),
}}


def without_retired(raw: Any, source: str) -> Any:
    """`raw` without the retired options that hold their old value; another value asked for
    something that no longer exists, and is an error."""
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    for section, retired in RETIRED.items():
        if not isinstance(raw.get(section), dict):
            continue
        raw[section] = dict(raw[section])
        for key, (old, why) in retired.items():
            if key in raw[section] and raw[section].pop(key) != old:
                raise ConfigError(f"{source}: {section}.{key}: this option was removed ({why}); "
                                  "delete it from the config")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a JSON config, apply `section.field=value` overrides, validate."""
    raw = read_config(path)
    for item in overrides or []:
        apply_override(raw, item, str(path))
    return Config.from_dict(raw, str(path))
