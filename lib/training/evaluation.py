"""Scores and costs of a run's weights, and the one way back from a run folder to its nets.

`rebuild` turns a checkpoint into networks again from what it carries (the
resolved model specs, the weights, the EMA averages), as nanoGPT's sample.py
does: no dataset, no training code. Evaluation, the report, the notebooks and
their explorers all start from it. lib.metrics does the scoring itself.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from lib.config import Config, ConfigError
from lib.config.checks import MAX_EVAL_SAMPLES
from lib.core.checkpoint import CheckpointError, load_checkpoint
from lib.core.device import Engine, setup_engine
from lib.core.rundir import RunDir
from lib.data import ImageData, load_dataset, to_float, to_uint8
from lib.families import FAMILIES, Family, Parts
from lib.families.base import fixed_generator, make_net, unwrap
from lib.metrics import Evaluator, MetricsError
from lib.training.checkpoints import load_weights
from lib.training.resume import check_folder
from lib.training.tracking import read_history

# ---------------------------------------------------------------------------
# Rebuilding a run's networks


@dataclass
class Rebuilt:
    cfg: Config  # the checkpoint's config
    family: Family
    parts: Parts  # nets and EMA averages with the checkpoint's weights; no optimizers
    engine: Engine
    step: int  # the checkpoint's step

    @property
    def net(self) -> nn.Module:
        """The network that draws samples (EMA weights when kept): plain, in eval mode."""
        return unwrap(self.parts.sampling_weights(self.family.sampling_net)).eval()


def rebuild(run_dir: str | Path, checkpoint: str = "last.pt",
            device: str | None = None) -> Rebuilt:
    """A run's networks from one of its checkpoints, without its dataset.

    device None: where and how the run's config trains them (trainer.device,
    channels_last), uncompiled; "cpu": plain CPU modules (notebooks, explorers).
    """
    run = RunDir(run_dir)
    path = run.checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    cfg = Config.from_dict(ckpt["config"], f"{path} (its config)")
    family = FAMILIES[cfg.family]
    if device is None:  # compiling would cost more than sampling a few hundred images
        engine = setup_engine(replace(cfg.trainer, compile=False))
    else:
        engine = Engine(torch.device(device), None, channels_last=False)
    nets = {name: make_net(spec, engine) for name, spec in ckpt["models"].items()}
    parts = Parts(nets=nets, optimizers={}, schedulers={}, specs=ckpt["models"],
                  class_names=ckpt.get("class_names"))
    family.prepare_sampling(parts, cfg)
    load_weights(ckpt, parts, path)
    standing = run.standing
    if parts.standing and standing.is_file():  # only where the weights match (else measured)
        try:
            parts.load_standing(torch.load(standing, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - a damaged file is only a cache
            warnings.warn(f"{standing}: unreadable ({type(e).__name__}); the standing "
                          "statistics are measured again", stacklevel=2)
    return Rebuilt(cfg, family, parts, engine, ckpt["step"])


def sampling_cost(family: Family, parts: Parts, engine: Engine, n: int = 64) -> float:
    """Seconds per image of the family's own sampler: the inference side of the cost account
    (training's summary.json, and the report for runs that recorded none)."""
    def sync():
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)

    family.sample(parts, 2, None, fixed_generator(0))  # lazy set-up (kernels, autotuning)
    sync()
    t0 = time.perf_counter()
    family.sample(parts, n, None, fixed_generator(0))
    sync()
    return (time.perf_counter() - t0) / n


# ---------------------------------------------------------------------------
# Evaluation


def rng_untouched(engine: Engine):
    """Whatever runs inside leaves the torch RNG of the CPU and the training GPU as it was."""
    return torch.random.fork_rng(devices=[engine.device] if engine.device.type == "cuda" else [])


def make_evaluator(cfg: Config, data: ImageData, engine: Engine, features: str | None = None,
                   samples: int | None = None, seconds: float | None = None) -> Evaluator | None:
    """The run's Evaluator; None, with a warning, when `auto` features find no usable network,
    or with a one-line note when its reference features took more than `seconds` (a time
    budget's share: the rest is extracted next session)."""
    t = cfg.trainer
    features = features or t.features
    try:
        # building it (a network's init, a cached classifier) must not move the training RNG:
        # a resumed run builds it after restoring that RNG
        with rng_untouched(engine):
            evaluator = Evaluator(data, features=features, num_samples=samples or t.eval_samples,
                                  device=engine.device,
                                  cache_dir=writable_cache(Path(cfg.data.root) / "cache"),
                                  weights_path=t.inception_weights,
                                  download=t.inception_download, seed=t.seed, seconds=seconds)
        if not evaluator.complete:
            print(f"{evaluator.partial}; no scores before then")
        return evaluator
    except MetricsError as e:
        if features != "auto":
            raise
        warnings.warn(f"evaluation is off for this run: {e}", stacklevel=2)
        return None


def evaluate_parts(family: Family, parts: Parts, evaluator: Evaluator, engine: Engine,
                   seed: int) -> dict:
    """Score the sampling weights on a fixed draw, leaving the training RNG untouched."""
    n = evaluator.num_samples
    conditional = any(spec["args"].get("num_classes", 0) > 0 for spec in parts.specs.values())
    labels = None
    if conditional and evaluator.real_labels is not None:
        labels = torch.arange(n) % len(evaluator.class_names)  # balanced: every class scored
    device = engine.device
    with rng_untouched(engine):
        fake = to_uint8(family.sample(parts, n, labels, fixed_generator(seed + 2)))
        recon = None
        if family.reconstruct is not None:
            x = evaluator.real_images[:n]
            y = evaluator.real_labels[:n].to(device) if evaluator.real_labels is not None else None
            recon = (x, to_uint8(family.reconstruct(parts, to_float(x).to(device), y)))
        grid = None
        if family.label_grid is not None:
            grid = to_uint8(family.label_grid(parts, fixed_generator(seed + 3)))
        result = evaluator.evaluate(fake, labels, recon, grid)
    notes = family.sampling_notes(parts) if family.sampling_notes else {}
    return {**result, **notes, **batchnorm_stats(parts, family.sampling_net),
            "sampled_with": parts.sampled_with(family.sampling_net)}


def batchnorm_stats(parts: Parts, name: str) -> dict:
    """{"batchnorm": "standing"} when the sampler's BatchNorm statistics were measured on
    the weights that sampled (gan.standing_stats); {} for running averages or no BatchNorm."""
    return {"batchnorm": "standing"} if name in parts.standing else {}


def best_fid(run: RunDir, features: str, step: int) -> float:
    """Best FID logged so far with these features; a best.pt newer than `step` is dropped."""
    if run.best.exists() and load_checkpoint(run.best)["step"] > step:
        run.best.unlink()  # it belongs to work that a resume redoes
    fids = [r["fid"] for r in read_history(run.root)
            if r.get("features") == features and isinstance(r.get("fid"), float)]
    return min(fids, default=math.inf)


def evaluate_checkpoint(run_dir: str | Path, samples: int | None = None,
                        features: str | None = None, checkpoint: str = "last.pt",
                        inception_weights: str | None = None, download: bool = False) -> dict:
    """Score a run's weights (last.pt, or e.g. best.pt); the result also goes to metrics.json.

    `inception_weights` / `download` stand in for the config's trainer fields of those names
    (the machine that evaluates may not be the one that trained).

    Refused before any scoring: a checkpoint of another run (the checks of a resume), weights
    that are not finite, and a number of samples outside trainer.eval_samples' bounds."""
    run = RunDir(run_dir)
    rebuilt = rebuild(run.root, checkpoint)
    path = run.checkpoint(checkpoint)
    check_folder(run, {"family": rebuilt.cfg.family, "config": rebuilt.cfg.to_dict()}, path)
    check_finite(rebuilt.parts, path)
    n = rebuilt.cfg.trainer.eval_samples if samples is None else samples
    if not 2 <= n <= MAX_EVAL_SAMPLES:
        raise ConfigError(f"evaluate: {n} samples; give --samples N with N in [2, "
                          f"{MAX_EVAL_SAMPLES:,}] (the default is the run's "
                          "trainer.eval_samples, 0 when it trained without evaluation)")
    engine = rebuilt.engine
    trainer = replace(rebuilt.cfg.trainer,
                      inception_weights=inception_weights or rebuilt.cfg.trainer.inception_weights,
                      inception_download=download or rebuilt.cfg.trainer.inception_download)
    cfg = replace(rebuilt.cfg, trainer=trainer)
    evaluator = make_evaluator(cfg, load_dataset(**asdict(cfg.data)), engine, features, n)
    if evaluator is None:
        raise MetricsError("no feature network is usable here; see the warning above")
    result = {"step": rebuilt.step, "checkpoint": checkpoint,
              **evaluate_parts(rebuilt.family, rebuilt.parts, evaluator, engine, cfg.trainer.seed)}
    try:
        run.metrics.write_text(json.dumps(result, indent=2) + "\n")
        result["metrics_file"] = str(run.metrics)
    except OSError as e:  # a read-only run (a Kaggle input): the scores are still the answer
        result["warnings"] = [*result.get("warnings", []),
                              f"{run.metrics} not written ({e.strerror or e}): the run folder "
                              f"is read-only; the scores above are the result"]
    return result


def check_finite(parts: Parts, path: Path) -> None:
    """Every weight a network (or its EMA average) holds is finite: NaN weights sample noise,
    which would be scored as a model ("FID 412.7, diversity 0")."""
    averages = parts.ema.averages if parts.ema is not None else {}
    nets = {**parts.nets, **{f"ema.{k}": v for k, v in averages.items()}}
    for name, net in nets.items():
        for key, tensor in unwrap(net).state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise CheckpointError(
                    f"{path}: {name}.{key} holds NaN or infinite values: the run diverged "
                    "before this checkpoint; score an earlier one (checkpoints/step_*.pt or "
                    "best.pt, the checkpoint= argument of evaluate_checkpoint)")


def writable_cache(cache_dir: Path) -> Path:
    """`cache_dir`, or - when it cannot be written (a read-only data.root) - a user cache
    folder, with a warning: the cache saves time, it is no reason to stop."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir):
            return cache_dir
    except OSError as e:
        fallback = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genlab"
        try:
            fallback.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=fallback):
                pass
        except OSError:
            fallback = Path(tempfile.gettempdir()) / f"genlab-cache-{os.getuid()}"
            fallback.mkdir(parents=True, exist_ok=True)
        warnings.warn(f"{cache_dir} is not writable ({e.strerror or e}); the metrics cache "
                      f"goes to {fallback}", stacklevel=2)
        return fallback
