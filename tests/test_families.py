"""The families' shared pieces: the registry, chunked sampling, the EMA object."""

import copy

import pytest
import torch
from torch import nn

from lib.families import FAMILIES
from lib.families.base import EMA, Parts, chunked, plain_batchnorm, standing_statistics
from lib.models import FAMILY_MODELS, MODEL_TYPES, family_of_type


def test_the_registry_names_every_model_type_once():
    assert list(FAMILIES) == list(FAMILY_MODELS)  # every declared family has its recipe
    for name, family in FAMILIES.items():
        assert family.name == name
        for type_name, cls in family.models.items():
            assert MODEL_TYPES[type_name] is cls and family_of_type(type_name) == name
        assert family.sampling_net in family.roles and set(family.averaged) <= set(family.roles)
    assert len(MODEL_TYPES) == sum(len(f.models) for f in FAMILIES.values())  # no type twice
    assert len({f.color for f in FAMILIES.values()}) == len(FAMILIES)  # told apart in plots


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
    warm = EMA({"net": net}, 0.999, power=2 / 3, inv_gamma=1.0)  # ema-pytorch's schedule
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
