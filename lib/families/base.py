"""What a model family gives the shared loop, and the pieces every family builds with.

A family (DCGAN, CVAE, DDPM) is one `Family`: a few plain functions - `build`
makes the networks, optimizers and schedulers (`Parts`), `step` does one
training iteration (forward, loss, backward, optimizer, scheduler and EMA steps),
`snapshot` renders the fixed-noise grids, `sample` draws images for evaluation,
`finish` writes the family's final media - and what it declares: its config
sections and the model type each holds (lib.models.FAMILY_MODELS, which the
config checks read too), which net samples, which nets EMA averages, its colour
in the report. lib/families/__init__.py lists them.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import get_ema_multi_avg_fn

from lib.config import (
    Config,
    ConfigError,
    ModelSpec,
    OptimizerConfig,
    SchedulerConfig,
    TrainerConfig,
)
from lib.core.device import Engine, make_optimizer
from lib.core.rundir import RunDir
from lib.data import ImageData
from lib.models import FAMILY_MODELS, MODEL_MODULES, model_class, model_signature

CHUNK = 256  # images per forward when many are drawn or scored: memory stays bounded

# ---------------------------------------------------------------------------
# What a family provides


@dataclass
class Parts:
    """Everything a run of one family is made of: what checkpoints save and restore."""

    nets: dict[str, nn.Module]  # the trained networks by name (DDP-wrapped while training)
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    specs: dict[str, dict]  # name -> {"type", "args"} resolved: enough to rebuild each net
    ema: EMA | None = None  # moving averages of the nets the family samples with
    fixed: dict[str, torch.Tensor] = field(default_factory=dict)  # fixed noise/labels/batch
    class_names: list[str] | None = None
    # name -> recomputes a sampling copy's BatchNorm statistics (Family.standing), for nets
    # whose running averages describe other weights than those that sample
    standing: dict[str, Callable[[nn.Module], None]] = field(default_factory=dict)
    _standing: dict[str, tuple[torch.Tensor, nn.Module]] = field(default_factory=dict,
                                                                 repr=False)

    def sampling_weights(self, name: str) -> nn.Module:
        """The weights to sample `name` with: its EMA average when kept, never a DDP wrapper
        (its forward is a collective, and rank 0 samples alone). With standing statistics
        for `name`, a copy of them whose BatchNorm statistics were recomputed for these
        very weights: made again only when the weights changed."""
        net = self.averaged_or_raw(name)
        if name not in self.standing:
            return net
        key = fingerprint(net)
        cached = self._standing.get(name)
        if cached is None or not torch.equal(cached[0], key):
            self._set_standing(name, net, key, self.standing[name])
        return self._standing[name][1]

    def _set_standing(self, name: str, net: nn.Module, key: torch.Tensor,
                      fill: Callable[[nn.Module], None]) -> None:
        """A plain copy of `net` whose BatchNorm statistics `fill` sets, kept under `key`."""
        with torch.inference_mode(False), torch.no_grad():  # a copy of plain tensors
            standing = plain_batchnorm(copy.deepcopy(unwrap(net)))
            fill(standing)
        self._standing[name] = (key, standing.eval().requires_grad_(False))

    def standing_buffers(self) -> dict:
        """The standing statistics measured so far, with the weights they belong to: kept
        in the run folder, a rebuild of the same weights need not measure them again."""
        return {name: {"weights": weights_digest(net),
                       "buffers": {k: v for k, v in net.state_dict().items()
                                   if ".running_" in k or "num_batches" in k}}
                for name, (_, net) in self._standing.items()}

    def load_standing(self, saved: dict) -> None:
        """Standing statistics from standing_buffers, for the nets whose weights they match."""
        for name, entry in saved.items():
            net = self.averaged_or_raw(name)
            if name in self.standing and weights_digest(net) == entry["weights"]:
                self._set_standing(name, net, fingerprint(net), lambda copy_, b=entry["buffers"]:
                                   copy_.load_state_dict(b, strict=False))

    def averaged_or_raw(self, name: str) -> nn.Module:
        """`name`'s EMA average when kept, else its own weights (never a DDP wrapper)."""
        if self.ema is not None and name in self.ema.averages:
            return self.ema.averages[name]
        return local(self.nets[name])

    def sampled_with(self, name: str) -> str:
        """"ema" or "raw": which weights `sampling_weights(name)` samples with (grids, scores)."""
        return "ema" if self.ema is not None and name in self.ema.averages else "raw"


@dataclass(frozen=True)
class Family:
    name: str  # what Config.family says, and its key in lib.models.FAMILY_MODELS
    sampling_net: str  # the net that draws samples (its EMA copy when kept)
    averaged: tuple[str, ...]  # the nets EMA keeps a moving average of
    color: str  # the family's colour in the report's figures
    build: Callable[[Config, ImageData, Engine], Parts]
    # (parts, x [-1, 1] (B, C, H, W), y (B,) or None, iteration (1 for the first), engine,
    # cfg) -> the numbers to log, left on the device: the guard reads them back in one
    # transfer
    step: Callable[[Parts, torch.Tensor, torch.Tensor | None, int, Engine, Config],
                   dict[str, torch.Tensor | float]]
    snapshot: Callable[[Parts], dict[str, torch.Tensor]]  # file prefix -> uint8 grid
    # (parts, n, labels (n,) or None, generator) -> (n, C, H, W) in [-1, 1]
    sample: Callable[[Parts, int, torch.Tensor | None, torch.Generator | None], torch.Tensor]
    # (parts, run, fit) -> final_grid.png and the family's own media; `fit` < 1: the share of
    # their full cost the time budget leaves (fewer images or sampler steps), said in the
    # returned note (None: full size)
    finish: Callable[[Parts, RunDir, float], str | None]
    # (parts, x [-1, 1] on the device, y) -> [-1, 1] reconstructions, for models that have them
    reconstruct: Callable[..., torch.Tensor] | None = None
    # (parts, generator) -> (K, M, C, H, W) in [-1, 1]: M fixed noise vectors decoded under
    # each of K labels, for conditional models whose noise is an input (label sensitivity)
    label_grid: Callable[[Parts, torch.Generator], torch.Tensor] | None = None

    # cfg -> {net name: a function that recomputes that net's BatchNorm statistics in place}
    standing: Callable[[Config], dict[str, Callable[[nn.Module], None]]] | None = None
    # parts -> what else a score depends on, recorded beside it (DDPM: its sampler and steps)
    sampling_notes: Callable[[Parts], dict] | None = None

    @property
    def roles(self) -> dict[str, str]:
        """Config section -> the model type it holds: "generator" -> "Generator"."""
        return FAMILY_MODELS[self.name]

    @property
    def models(self) -> dict[str, type[nn.Module]]:
        """Config `type` -> class, for the types this family trains."""
        return {type_name: model_class(type_name) for type_name in self.roles.values()}

    def prepare_sampling(self, parts: Parts, cfg: Config) -> None:
        """What sampling draws from besides the trained nets: EMA averages, standing
        statistics."""
        parts.ema = self.make_ema(parts, cfg.trainer)
        parts.standing = self.standing(cfg) if self.standing else {}

    def make_ema(self, parts: Parts, t: TrainerConfig) -> EMA | None:
        """The moving average of the nets this family averages; None when ema_decay is 0."""
        if t.ema_decay <= 0:
            return None
        return EMA({name: parts.nets[name] for name in self.averaged}, t.ema_decay,
                   t.ema_power)


class EMA:
    """Exponential moving averages of some nets, updated after every optimizer step.

    avg <- avg + (1 - decay) (net - avg), by torch.optim.swa_utils' own EMA
    update; buffers (BatchNorm statistics) are copied, not averaged. With
    `power` > 0 the decay warms up as in ema-pytorch,
    min(decay, 1 - (1 + step) ** -power): early averages follow the
    net instead of staying near its random initialisation.
    """

    def __init__(self, nets: dict[str, nn.Module], decay: float, power: float = 0.0):
        self.decay, self.power = decay, power
        self.averages = {name: copy.deepcopy(unwrap(net)).requires_grad_(False)
                         for name, net in nets.items()}

    def decay_at(self, step: int) -> float:
        if self.power <= 0:
            return self.decay
        return min(self.decay, 1 - (1 + step) ** -self.power)

    @torch.no_grad()
    def update(self, nets: dict[str, nn.Module], step: int) -> None:
        """Fold in the weights of `nets` after optimizer step `step` (1 for the first)."""
        average = get_ema_multi_avg_fn(self.decay_at(step))
        for name, avg in self.averages.items():
            net = unwrap(nets[name])
            average(list(avg.parameters()), [p.detach() for p in net.parameters()], None)
            for b_avg, b in zip(avg.buffers(), net.buffers(), strict=True):
                b_avg.copy_(b)

    def state_dict(self) -> dict[str, dict]:
        return {name: avg.state_dict() for name, avg in self.averages.items()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        for name, avg in self.averages.items():
            avg.load_state_dict(state[name])


# ---------------------------------------------------------------------------
# Building blocks


def build_model(type_name: str, args: dict) -> nn.Module:
    """A network from its config `type` and arguments: how checkpoints rebuild theirs."""
    if type_name not in MODEL_MODULES:
        raise ConfigError(f"unknown model type {type_name!r}; known: {sorted(MODEL_MODULES)}")
    return model_class(type_name)(**args)


def resolve_model(spec: ModelSpec, data: ImageData, where: str) -> dict:
    """Fill image_size / n_channels / num_classes from the data; refuse contradictions."""
    params = model_signature(spec.type).parameters
    args = dict(spec.args)
    from_data = {"image_size": data.image_size, "n_channels": data.channels,
                 "num_classes": data.num_classes}
    for key, value in from_data.items():
        if key not in params:
            continue
        if key not in args:
            args[key] = value
        elif key != "num_classes" and args[key] != value:
            raise ConfigError(
                f"{where}.args.{key}={args[key]} but the {data.name} data has {key}={value}; "
                f"remove the argument or set data.{'channels' if key == 'n_channels' else key}")
    if params.get("num_classes") and args.get("num_classes", 0) > data.num_classes:
        raise ConfigError(f"{where}.args.num_classes={args['num_classes']} but {data.name} "
                          f"has {data.num_classes} classes")
    return {"type": spec.type, "args": args}


def make_net(spec: dict, engine: Engine) -> nn.Module:
    try:
        net = build_model(spec["type"], spec["args"])
    except (ValueError, RuntimeError, TypeError) as e:  # the model's own checks on its args
        raise ConfigError(f"{spec['type']} with args {spec['args']}: {e}") from None
    return engine.prepare(net)


def make_opt_sched(net: nn.Module, opt: OptimizerConfig | None,
                   sched: SchedulerConfig | None, engine: Engine):
    opt = opt or OptimizerConfig()
    optimizer = make_optimizer(net.parameters(), opt.lr, opt.betas, opt.weight_decay,
                               engine.device)
    gamma = sched.gamma if sched else 1.0
    return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)


def fixed_generator(seed: int) -> torch.Generator:
    """Snapshots and evaluation draw from their own generator, never the training RNG."""
    return torch.Generator().manual_seed(seed)


def chunked(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor | None,
            size: int = CHUNK) -> torch.Tensor:
    """`fn` over aligned chunks of `size` rows of the inputs (None stays None), concatenated."""
    n = len(next(x for x in inputs if x is not None))
    return torch.cat([fn(*(None if x is None else x[i : i + size] for x in inputs))
                      for i in range(0, n, size)])


def fingerprint(net: nn.Module) -> torch.Tensor:
    """One sum per parameter, on the CPU: changes when the weights change (optimizer steps,
    EMA updates, loaded or rolled-back weights), whatever did it in place."""
    return torch.stack([p.detach().float().sum() for p in net.parameters()]).cpu()


def weights_digest(net: nn.Module) -> str:
    """The weights' exact bytes, hashed: the same in any process, layout or thread count
    (fingerprint's float sums are not, and serve within one process only)."""
    digest = hashlib.sha256()
    for p in net.parameters():
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def plain_batchnorm(net: nn.Module) -> nn.Module:
    """`net` with every SyncBatchNorm turned back into a BatchNorm2d (same weights and
    statistics): a train-mode forward of a SyncBatchNorm is a collective over all ranks."""
    if isinstance(net, nn.SyncBatchNorm):
        plain = nn.BatchNorm2d(net.num_features, net.eps, net.momentum, net.affine,
                               net.track_running_stats)
        state = net.state_dict()
        plain.load_state_dict(state)
        return plain.to(next(iter(state.values())).device)
    for name, child in net.named_children():
        setattr(net, name, plain_batchnorm(child))
    return net


@torch.no_grad()
def standing_statistics(net: nn.Module, inputs: Iterator[tuple]) -> None:
    """Recompute `net`'s BatchNorm running statistics in place as the plain average of
    their batch statistics over `inputs` (forward in train mode), then leave it in eval
    mode ("standing statistics", Brock et al. 2019). Running averages kept during training
    lag behind the weights, and an EMA copy's were measured on other weights."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    for args in inputs:
        net(*args)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    net.eval()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration (BatchNorm must use running statistics for a batch of one)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def local(net: nn.Module) -> nn.Module:
    """The net without its DDP wrapper (still compiled if it was): a forward that involves
    no other rank and expects no gradient all-reduce."""
    return net.module if isinstance(net, DistributedDataParallel) else net


def unwrap(net: nn.Module) -> nn.Module:
    """The plain module, without DDP and torch.compile wrappers: what state dicts hold."""
    net = local(net)
    return getattr(net, "_orig_mod", net)  # torch.compile
