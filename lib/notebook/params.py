"""Notebook parameters -> a config: a preset overridden by the parameters that are set."""

from __future__ import annotations

import json
from pathlib import Path

from lib.config import Config, ConfigError, load_config
from lib.notebook.paths import find_preset

# notebook parameter name -> dotted config field it sets (None: the preset's value stays)
PARAMETER_FIELDS = {
    "name": "name",
    "dataset": "data.dataset",
    "image_size": "data.image_size",
    "data_root": "data.root",
    "data_path": "data.path",
    "limit": "data.limit",
    "dedupe": "data.dedupe",
    "epochs": "trainer.epochs",
    "iterations_per_epoch": "trainer.iterations_per_epoch",
    "batch_size": "trainer.batch_size",
    "log_every_step": "trainer.log_every_step",
    "save_period": "trainer.save_period",
    "eval_every": "trainer.eval_every",
    "eval_samples": "trainer.eval_samples",
    "features": "trainer.features",
    "inception_weights": "trainer.inception_weights",
    "inception_download": "trainer.inception_download",
    "max_minutes": "trainer.max_minutes",
    "device": "trainer.device",
    "precision": "trainer.precision",
    "seed": "trainer.seed",
    "wandb_mode": "wandb.mode",
    "kl_weight": "model.args.kl_weight",  # CVAE
    "sample_steps": "model.args.sample_steps",  # DDPM: sampler steps for snapshots and scores
}


def config_from_parameters(preset: str | Path, **params) -> Config:
    """Load a preset and override it with notebook parameters named like config fields.

    None leaves the preset's value; unknown names are an error listing the valid ones.
    """
    overrides = []
    for key, value in params.items():
        if key not in PARAMETER_FIELDS:
            raise ConfigError(f"unknown notebook parameter {key!r}; valid: "
                              f"{', '.join(sorted(PARAMETER_FIELDS))}")
        if value is not None:
            value = str(value) if isinstance(value, Path) else value
            overrides.append(f"{PARAMETER_FIELDS[key]}={json.dumps(value)}")
    return load_config(find_preset(preset), overrides)
