"""CVAE model: shapes, the loss's reduction and terms, warm-up, and that kl_weight acts."""

import inspect
import typing

import pytest
import torch
import torch.nn.functional as F

from lib.data import load_dataset, to_float, to_uint8
from lib.families import FAMILIES
from lib.families.base import Parts
from lib.metrics import label_sensitivity
from lib.models.cvae import CVAE


def tiny(**kw) -> CVAE:
    args = {"image_size": 16, "n_channels": 1, "num_classes": 3, "latent_dim": 4,
            "hidden_dim": 8, "embed_dim": 4}
    return CVAE(**(args | kw))


def batch(b=4, c=1, size=16, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, size, size, generator=g) * 2 - 1
    return x, torch.randint(0, classes, (b,), generator=g)


@pytest.mark.parametrize("size,channels", [(28, 1), (28, 3), (32, 1), (32, 3), (64, 1), (64, 3)])
def test_shapes_and_range(size, channels):
    model = tiny(image_size=size, n_channels=channels)
    x, y = batch(3, channels, size)
    mu, logvar = model.encode(x, y)
    assert mu.shape == logvar.shape == (3, 4)
    assert model.decode(mu, y).shape == (3, channels, size, size)
    out = model(x, y)
    assert set(out) == {"loss", "recon", "kl"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    for images in (model.sample(y), model.reconstruct(x, y)):
        assert images.shape == (3, channels, size, size)
        assert images.min() >= -1 and images.max() <= 1


def test_constructor_follows_the_config_contract():
    params = inspect.signature(CVAE.__init__).parameters
    hints = typing.get_type_hints(CVAE.__init__)
    for name, p in params.items():
        if name != "self":
            assert p.default is not inspect.Parameter.empty, name
            assert hints[name] in (int, float, str, bool, list[int]), name


@pytest.mark.parametrize("kwargs,match", [
    ({"recon_loss": "l1"}, "mse, bce"), ({"num_classes": 0}, "labelled"),
    ({"image_size": 27}, "image_size"), ({"kl_weight": -1.0}, "kl_weight"),
])
def test_bad_arguments_say_what_to_do(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


@pytest.mark.parametrize("recon_loss", ["mse", "bce"])
def test_loss_terms_and_reduction(recon_loss):
    """loss = recon + w * kl; recon is summed per image and matches `decode`; kl is closed form."""
    torch.manual_seed(0)
    model = tiny(recon_loss=recon_loss, kl_weight=0.3)
    x, y = batch()
    out = model(x, y)
    assert torch.allclose(out["loss"], out["recon"] + 0.3 * out["kl"])
    heavy = model(x, y, kl_weight=2.0)
    assert torch.allclose(heavy["loss"], heavy["recon"] + 2.0 * heavy["kl"])

    mu, logvar = model.encode(x, y)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
    assert torch.allclose(out["kl"], kl)
    # a batch of duplicates has the same per-image numbers: mean over the batch
    assert torch.allclose(model(torch.cat([x, x]), torch.cat([y, y]))["kl"], kl, rtol=1e-5)

    # at the posterior mean the recon term is the named loss of the decoded image, summed
    x_hat = model.decode(mu, y)
    if recon_loss == "mse":
        expected = F.mse_loss(x_hat, x, reduction="sum") / len(x)
    else:
        expected = F.binary_cross_entropy((x_hat + 1) / 2, (x + 1) / 2, reduction="sum") / len(x)
    got = model.recon_error(model._decode_raw(mu, y), x).mean()
    assert torch.allclose(got, expected, rtol=1e-4)


def test_kl_warmup_is_linear():
    model = tiny(kl_weight=0.5, kl_warmup_steps=100)
    assert [model.kl_weight_at(s) for s in (0, 50, 100, 1000)] == [0.0, 0.25, 0.5, 0.5]
    assert tiny(kl_weight=0.5).kl_weight_at(0) == 0.5


def test_one_optimizer_step_lowers_the_loss_on_its_batch():
    torch.manual_seed(0)
    model = tiny()
    x, y = batch(8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(1)
    loss0 = model(x, y)["loss"]
    loss0.backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)
               if a.numel() > 1)
    torch.manual_seed(1)
    assert model(x, y)["loss"] < loss0


def test_sampling_is_conditional_and_reproducible():
    model = tiny()
    labels = torch.tensor([0, 1, 2])
    a = model.sample(labels, generator=torch.Generator().manual_seed(0))
    b = model.sample(labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    z = torch.zeros(1, 4).expand(3, -1)
    images = model.sample(labels, z=z)  # same z, different classes -> different images
    assert not torch.allclose(images[0], images[1])


def train_briefly(kl_weight: float, steps: int = 60) -> float:
    """Train on 16 px digits; return the mean KL of the last steps."""
    torch.manual_seed(0)
    data = load_dataset("digits", 16, cache=False, limit=512)
    x, y = to_float(data.images), data.labels
    model = CVAE(image_size=16, n_channels=1, num_classes=10, latent_dim=8, hidden_dim=16,
                 kl_weight=kl_weight)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    kls = []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,))
        out = model(x[idx], y[idx])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        kls.append(out["kl"].item())
    return sum(kls[-10:]) / 10


def test_kl_weight_acts():
    """A huge weight pushes the posterior onto the prior; a small one lets z carry information."""
    collapsed, informative = train_briefly(100.0), train_briefly(0.01)
    assert collapsed < 0.05  # measured 0.002 nats after 60 steps
    assert informative > 10.0  # measured 32 nats


# ---------------------------------------------------------------------------
# Label sensitivity: does the output follow the label, z held fixed?


def label_grid_of(model: CVAE) -> torch.Tensor:
    parts = Parts(nets={"model": model}, optimizers={}, schedulers={}, specs={})
    return to_uint8(FAMILIES["cvae"].label_grid(parts, torch.Generator().manual_seed(0)))


def test_label_sensitivity_is_zero_for_a_decoder_that_ignores_the_label():
    torch.manual_seed(0)
    for every_stage in (True, False):
        model = tiny(label_every_stage=every_stage)
        with torch.no_grad():
            model.embed.weight.zero_()  # every class embeds to the same vector
        grid = label_grid_of(model)
        assert grid.shape == (3, 16, 1, 16, 16)  # (classes, noises, C, H, W)
        assert label_sensitivity(grid) == 0.0


def test_label_sensitivity_is_clearly_positive_for_a_decoder_that_uses_it():
    torch.manual_seed(0)
    model = tiny(latent_dim=1)
    with torch.no_grad():  # z barely moves the image: the label decides it
        model.from_latent.weight[:, :1].mul_(0.01)
    assert label_sensitivity(label_grid_of(model)) > 1.0
    # the definition on hand-made grids: label i and noise j each add a random +-1 pattern
    # (independent, so nearly orthogonal over 32 x 32 pixels) to a grey image
    gen = torch.Generator().manual_seed(0)
    label_part, noise_part = (torch.randint(0, 2, (3, 1, 32, 32), generator=gen) * 2 - 1
                              for _ in range(2))

    def made(a: float, b: float) -> torch.Tensor:  # (3, 3, 1, 32, 32) uint8
        return (128 + a * label_part[:, None] + b * noise_part[None, :]).to(torch.uint8)

    assert label_sensitivity(made(0, 40)) == 0.0  # only the noise moves the image
    assert label_sensitivity(made(40, 0)) == float("inf")  # only the label does
    assert label_sensitivity(made(40, 40)) == pytest.approx(1.0, abs=0.1)  # both, equally
    assert label_sensitivity(made(60, 30)) == pytest.approx(2.0, abs=0.2)


def test_label_sensitivity_does_not_count_a_label_that_only_tints():
    """issue 27: a CVAE on RGB photos whose label only coloured the same layout read 0.28 in
    raw pixels, above the watch's 0.1. Here a tint-only grid reads 0.01 (0.77 in raw
    pixels); a label that moves the layout reads ~1 with the same tints on top."""
    gen = torch.Generator().manual_seed(0)
    layouts = torch.rand(6, 1, 16, 16, generator=gen)  # one per noise vector, grey
    tints = torch.rand(4, 3, 1, 1, generator=gen)  # one per label: a colour, a contrast
    gains = 0.5 + torch.rand(4, 3, 1, 1, generator=gen)
    tinted = tints[:, None] * 0.25 + gains[:, None] * 0.5 * layouts[None]  # within [0, 1]
    grid = (tinted * 255).round().to(torch.uint8)  # (4 labels, 6 noises, 3, 16, 16)
    assert label_sensitivity(grid) < 0.05  # what is left is the rounding to uint8
    moved = torch.stack([grid[i].roll(4 * i, dims=-1) for i in range(4)])  # the label shifts it
    assert label_sensitivity(moved) > 0.5
