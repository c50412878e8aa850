"""The families' shared pieces: the registry, chunked sampling, the EMA object."""

import pytest
import torch
from torch import nn

from lib.families import FAMILIES, FAMILY_OF_TYPE, MODEL_TYPES
from lib.families.base import EMA, Parts, chunked


def test_the_registry_names_every_model_type_once():
    for name, family in FAMILIES.items():
        assert family.name == name
        for type_name, cls in family.models.items():
            assert MODEL_TYPES[type_name] is cls and FAMILY_OF_TYPE[type_name] == name
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
    assert parts.sampler_net("net") is avg


def test_ema_decay_is_constant_unless_a_warm_up_is_asked_for():
    net = nn.Linear(2, 2)
    assert EMA({"net": net}, 0.999).decay_at(1) == EMA({"net": net}, 0.999).decay_at(10**6)
    warm = EMA({"net": net}, 0.999, power=2 / 3, inv_gamma=1.0)  # ema-pytorch's schedule
    assert warm.decay_at(0) == 0.0  # the first average is the net itself
    assert warm.decay_at(7) == pytest.approx(1 - 8 ** (-2 / 3)) == 0.75
    assert warm.decay_at(10**9) == 0.999
