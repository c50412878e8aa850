"""The families' shared pieces: the registry, chunked sampling, the EMA object; and a
fourth family, declared here the way docs/architecture.md says, through every generic path."""

import copy
import inspect
import typing

import pytest
import torch
from inception_standin import save_torchscript
from torch import nn

import lib.families
import lib.models
from lib.config import Config
from lib.core import viz
from lib.core.checkpoint import load_checkpoint
from lib.families import FAMILIES
from lib.families.base import (
    EMA,
    Family,
    Parts,
    chunked,
    make_net,
    make_opt_sched,
    plain_batchnorm,
    resolve_model,
    standing_statistics,
    unwrap,
)
from lib.models import FAMILY_MODELS, MODEL_MODULES, family_of_type, model_signature
from lib.training.evaluation import evaluate_checkpoint, rebuild
from lib.training.loop import resume, train


def test_the_registry_names_every_model_type_once():
    assert list(FAMILIES) == list(FAMILY_MODELS)  # every declared family has its recipe
    for name, family in FAMILIES.items():
        assert family.name == name
        for type_name, cls in family.models.items():
            assert cls.__name__ == type_name and family_of_type(type_name) == name
        assert family.sampling_net in family.roles and set(family.averaged) <= set(family.roles)
    assert len(MODEL_MODULES) == sum(len(f.models) for f in FAMILIES.values())  # no type twice
    assert len({f.color for f in FAMILIES.values()}) == len(FAMILIES)  # told apart in plots


@pytest.mark.parametrize("type_name", list(MODEL_MODULES))
def test_the_signature_read_from_source_is_the_constructors(type_name):
    """Configs are checked against model_signature (no torch import): it must say what
    Python says of the imported class, names, types and defaults."""
    cls = lib.models.model_class(type_name)
    real = inspect.signature(cls.__init__).parameters
    hints = typing.get_type_hints(cls.__init__)
    read = model_signature(type_name).parameters
    assert list(read) == [name for name in real if name != "self"]
    for name, param in read.items():
        assert (param.annotation, param.default) == (hints[name], real[name].default), name


def test_chunked_equals_one_call_and_passes_none_through():
    x, y = torch.randn(600, 3), torch.arange(600)
    sizes = []

    def fn(xc, yc, nothing):
        assert nothing is None and len(xc) == len(yc)
        sizes.append(len(xc))
        return xc * yc[:, None]

    assert torch.equal(chunked(fn, x, y, None), x * y[:, None])
    assert sizes == [256, 256, 88]


def net_with_batchnorm() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_ema_averages_weights_and_copies_buffers():
    net = net_with_batchnorm()
    ema = EMA({"net": net}, decay=0.9)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net(torch.randn(8, 3))  # moves BatchNorm's running statistics
    ema.update({"net": net}, step=1)
    avg = ema.averages["net"]
    torch.testing.assert_close(avg[0].weight, 0.9 * start["0.weight"] + 0.1 * net[0].weight)
    assert torch.equal(avg[1].running_mean, net[1].running_mean)  # copied, not averaged
    assert not any(p.requires_grad for p in avg.parameters())
    parts = Parts(nets={"net": net}, optimizers={}, schedulers={}, specs={}, ema=ema)
    assert parts.sampling_weights("net") is avg


def test_ema_decay_is_constant_unless_a_warm_up_is_asked_for():
    net = nn.Linear(2, 2)
    assert EMA({"net": net}, 0.999).decay_at(1) == EMA({"net": net}, 0.999).decay_at(10**6)
    warm = EMA({"net": net}, 0.999, power=2 / 3)  # ema-pytorch's schedule
    assert warm.decay_at(0) == 0.0  # the first average is the net itself
    assert warm.decay_at(7) == pytest.approx(1 - 8 ** (-2 / 3)) == 0.75
    assert warm.decay_at(10**9) == 0.999


def test_standing_statistics_are_the_plain_average_of_the_batch_statistics():
    net = net_with_batchnorm()
    net[1].running_mean.fill_(5.0)  # stale statistics, to be replaced, not blended
    batches = [torch.randn(16, 3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    standing_statistics(net, ((x,) for x in batches))
    with torch.no_grad():
        h = [net[0](x) for x in batches]
    torch.testing.assert_close(net[1].running_mean, torch.stack([a.mean(0) for a in h]).mean(0))
    torch.testing.assert_close(net[1].running_var,
                               torch.stack([a.var(0, unbiased=True) for a in h]).mean(0))
    assert net[1].momentum == 0.1 and not net.training  # left as it was found, in eval mode


def calibrate_on(inputs: torch.Tensor):
    return lambda net: standing_statistics(net, iter([(inputs,)]))


def test_sampler_net_measures_statistics_on_the_weights_that_sample_and_keeps_them():
    torch.manual_seed(0)
    net, inputs = net_with_batchnorm(), torch.randn(64, 3)
    ema = EMA({"net": net}, decay=0.5)
    with torch.no_grad():
        net[0].weight.mul_(3.0)
    net(torch.randn(8, 3))
    ema.update({"net": net}, step=1)
    avg = ema.averages["net"]
    kept = [copy.deepcopy(m.state_dict()) for m in (net, avg)]
    parts = Parts(nets={"net": net}, optimizers={}, schedulers={}, specs={}, ema=ema,
                  standing={"net": calibrate_on(inputs)})
    sampler = parts.sampling_weights("net")
    assert sampler is not avg and isinstance(sampler[1], nn.BatchNorm1d)
    with torch.no_grad():  # the average's own activations, not the live net's statistics
        torch.testing.assert_close(sampler[1].running_mean, avg[0](inputs).mean(0))
    assert not torch.allclose(sampler[1].running_mean, avg[1].running_mean)
    for m, state in zip((net, avg), kept, strict=True):  # training's nets left untouched
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert parts.sampling_weights("net") is sampler  # the same weights: measured once
    assert not sampler.training and not any(p.requires_grad for p in sampler.parameters())
    with torch.no_grad():
        avg[0].weight.data.add_(1.0)  # whatever changes the weights in place
    again = parts.sampling_weights("net")
    assert again is not sampler
    with torch.no_grad():
        torch.testing.assert_close(again[1].running_mean, avg[0](inputs).mean(0))


def test_a_syncbatchnorm_net_gets_a_plain_batchnorm_copy_it_can_measure_alone():
    torch.manual_seed(0)
    net = nn.SyncBatchNorm.convert_sync_batchnorm(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with torch.no_grad():
        net[1].running_var.fill_(2.0)
    plain = plain_batchnorm(copy.deepcopy(net))
    assert type(plain[1]) is nn.BatchNorm2d and isinstance(net[1], nn.SyncBatchNorm)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in plain.state_dict().items())
    inputs = torch.randn(4, 3, 8, 8)
    parts = Parts(nets={"net": net}, optimizers={}, schedulers={}, specs={},
                  standing={"net": calibrate_on(inputs)})  # a SyncBatchNorm would need a group
    sampler = parts.sampling_weights("net")
    with torch.no_grad():
        torch.testing.assert_close(sampler[1].running_mean, net[0](inputs).mean((0, 2, 3)))


# ---------------------------------------------------------------------------
# A fourth family, declared in this file only: one learnt mean image


class MeanImage(nn.Module):
    """A "generative model" of one parameter tensor: every sample is the learnt mean."""

    def __init__(self, n_channels: int = 1, image_size: int = 8):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(n_channels, image_size, image_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean).pow(2).mean()  # its loss, as the CVAE's and DDPM's forward


def mean_build(cfg, data, engine) -> Parts:
    specs = {"model": resolve_model(cfg.model, data, "model")}
    net = make_net(specs["model"], engine)
    opt, sched = make_opt_sched(net, cfg.optimizer, cfg.lr_scheduler, engine)
    return Parts(nets={"model": net}, optimizers={"model": opt}, schedulers={"model": sched},
                 specs=specs)


def mean_step(parts, x, y, it, engine, cfg) -> dict:
    with engine.autocast():
        loss = parts.nets["model"](x)
    engine.backward_step("model", loss, parts.optimizers["model"], cfg.trainer.grad_clip)
    parts.schedulers["model"].step()
    if parts.ema is not None:
        parts.ema.update(parts.nets, it)
    return {"loss": loss.detach()}


@torch.inference_mode()
def mean_sample(parts, n, labels=None, generator=None) -> torch.Tensor:
    mean = unwrap(parts.sampling_weights("model")).mean.clamp(-1, 1)
    return chunked(lambda i: mean.expand(len(i), *mean.shape).float(), torch.arange(n))


def mean_snapshot(parts) -> dict:
    return {"step": viz.make_grid(mean_sample(parts, 4), nrow=4)}


def mean_finish(parts, run, fit) -> None:
    viz.save_png(mean_snapshot(parts)["step"], run.media("final_grid.png"))


MEAN = Family(name="mean", sampling_net="model", averaged=("model",), color="tab:olive",
              build=mean_build, step=mean_step, snapshot=mean_snapshot, sample=mean_sample,
              finish=mean_finish)


@pytest.fixture
def mean_family(monkeypatch):
    """Registered as docs/architecture.md says (its model's type, its sections, its recipe),
    for this test only."""
    monkeypatch.setitem(lib.models.MODEL_MODULES, "MeanImage", __name__)
    monkeypatch.setitem(lib.models.FAMILY_MODELS, "mean", {"model": "MeanImage"})
    monkeypatch.setitem(lib.families.FAMILIES, "mean", MEAN)


def mean_config(tmp_path, epochs: int) -> Config:
    return Config.from_dict({
        "model": {"type": "MeanImage"}, "optimizer": {"lr": 0.05, "betas": [0.5, 0.999]},
        "data": {"dataset": "digits", "image_size": 8, "root": str(tmp_path / "data")},
        "trainer": {"epochs": epochs, "iterations_per_epoch": 3, "batch_size": 32,
                    "log_every_step": 1, "eval_samples": 0, "ema_decay": 0.5}})


def test_a_fourth_family_trains_resumes_and_samples_through_the_generic_paths(
        tmp_path, mean_family):
    cfg = mean_config(tmp_path, epochs=2)
    assert cfg.family == "mean" and cfg.model.args == {}
    straight = train(cfg, out_root=tmp_path / "straight", progress=False)

    # half the run, then a resume that finishes it: the same weights as the straight run
    half = train(mean_config(tmp_path, epochs=1), out_root=tmp_path / "half", progress=False)
    resumed = resume(half, overrides=["trainer.epochs=2"], progress=False)
    done = {run: load_checkpoint(run / "checkpoints" / "last.pt") for run in (straight, resumed)}
    assert [ckpt["step"] for ckpt in done.values()] == [6, 6]
    assert torch.equal(done[straight]["nets"]["model"]["mean"],
                       done[resumed]["nets"]["model"]["mean"])

    # it learnt: the mean moved from zero towards the data's (mostly dark, below 0) mean
    rebuilt = rebuild(resumed, device="cpu")
    assert rebuilt.family is MEAN and rebuilt.parts.sampled_with("model") == "ema"
    assert rebuilt.net.mean.mean() < -0.05
    assert any(resumed.rglob("final_grid.png"))  # the family's finish, from the loop

    weights = save_torchscript(tmp_path / "standin-inception.pt")
    result = evaluate_checkpoint(resumed, samples=20, features="inception",
                                 inception_weights=str(weights))
    assert result["step"] == 6 and result["sampled_with"] == "ema"
    assert result["fid"] > 0 and (resumed / "metrics.json").is_file()
