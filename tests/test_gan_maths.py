"""The GAN's options and their maths on tiny shapes: losses (relativistic ones included),
R1/R2 gradient penalties and their lazy schedule, DiffAugment, the discriminator's
normalisations, the gan config section, standing statistics."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.models.dcgan import (
    AUGMENT_POLICIES,
    RELATIVISTIC,
    Discriminator,
    d_loss,
    diff_augment,
    g_loss,
    gradient_penalty,
    init_weights,
    penalty_weight,
    saturation,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# ---------------------------------------------------------------------------
# Losses

REAL = torch.tensor([2.0, -1.0])
FAKE = torch.tensor([0.5, -3.0])


def test_bce_losses_by_hand():
    # -log sigmoid(v) = softplus(-v), -log(1 - sigmoid(v)) = softplus(v)
    expected_d = (softplus(-2) + softplus(1)) / 2 + (softplus(0.5) + softplus(-3)) / 2
    expected_g = (softplus(-0.5) + softplus(3)) / 2  # non-saturating: -log D(G(z))
    assert d_loss("bce", REAL, FAKE).item() == pytest.approx(expected_d, rel=1e-6)
    assert g_loss("bce", FAKE).item() == pytest.approx(expected_g, rel=1e-6)


def test_hinge_losses_by_hand():
    # D: mean(relu(1 - [2, -1])) + mean(relu(1 + [0.5, -3])) = mean(0, 2) + mean(1.5, 0)
    assert d_loss("hinge", REAL, FAKE).item() == pytest.approx(1.0 + 0.75)
    assert g_loss("hinge", FAKE).item() == pytest.approx(1.25)  # -mean(0.5, -3)


def test_hinge_ignores_samples_past_the_margin():
    real = torch.tensor([3.0, 0.2], requires_grad=True)
    fake = torch.tensor([-4.0, 0.1], requires_grad=True)
    d_loss("hinge", real, fake).backward()
    assert real.grad.tolist() == [0.0, -0.5]  # only the sample inside the margin pulls
    assert fake.grad.tolist() == [0.0, 0.5]


def test_bce_is_bit_for_bit_the_reference_steps_expression():
    """dcgan_step's own lines, so that loss "bce" keeps configs/dcgan_train.json exact."""
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(64, generator=gen) * 3, torch.randn(64, generator=gen) * 3
    ones, zeros = torch.ones(64), torch.zeros(64)
    assert torch.equal(d_loss("bce", real, fake),
                       F.binary_cross_entropy_with_logits(real, ones)
                       + F.binary_cross_entropy_with_logits(fake, zeros))
    assert torch.equal(g_loss("bce", fake), F.binary_cross_entropy_with_logits(fake, ones))


CHOICES = r"\['bce', 'hinge', 'rasgan', 'ralsgan', 'rpgan'\]"


def test_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match=r"'wasserstein'.*" + CHOICES):
        d_loss("wasserstein", REAL, FAKE)
    with pytest.raises(ValueError, match=CHOICES):
        g_loss("lsgan", FAKE)


# relativistic losses: REAL's mean is 0.5, FAKE's -1.25, so real - mean(fake) = [3.25, 0.25]
# and fake - mean(real) = [0, -3.5]; the pairs' differences real - fake are [1.5, 2]


def test_rasgan_losses_by_hand():
    # D: BCE(real - mean(fake), 1) and BCE(fake - mean(real), 0), the mean of the two
    expected_d = ((softplus(-3.25) + softplus(-0.25)) / 2 + (softplus(0) + softplus(-3.5)) / 2) / 2
    # G: the labels swapped, BCE(real - mean(fake), 0) and BCE(fake - mean(real), 1)
    expected_g = ((softplus(3.25) + softplus(0.25)) / 2 + (softplus(0) + softplus(3.5)) / 2) / 2
    assert d_loss("rasgan", REAL, FAKE).item() == pytest.approx(expected_d, rel=1e-6)
    assert g_loss("rasgan", FAKE, REAL).item() == pytest.approx(expected_g, rel=1e-6)


def test_ralsgan_losses_by_hand():
    # D: mean((real - mean(fake) - 1)^2) = (2.25^2 + 0.75^2) / 2 = 2.8125 and
    # mean((fake - mean(real) + 1)^2) = (1 + 2.5^2) / 2 = 3.625: their mean
    assert d_loss("ralsgan", REAL, FAKE).item() == pytest.approx((2.8125 + 3.625) / 2)
    # G: targets swapped: (4.25^2 + 1.25^2) / 2 = 9.8125 and (1 + 4.5^2) / 2 = 10.625
    assert g_loss("ralsgan", FAKE, REAL).item() == pytest.approx((9.8125 + 10.625) / 2)


def test_rpgan_losses_by_hand():
    # D: softplus(-(real_i - fake_i)), G: softplus(-(fake_i - real_i)), means over the pairs
    expected_d = (softplus(-1.5) + softplus(-2)) / 2
    expected_g = (softplus(1.5) + softplus(2)) / 2
    assert d_loss("rpgan", REAL, FAKE).item() == pytest.approx(expected_d, rel=1e-6)
    assert g_loss("rpgan", FAKE, REAL).item() == pytest.approx(expected_g, rel=1e-6)


def test_rpgan_pairs_and_the_average_losses_do_not():
    """RpGAN compares real i with fake i; RaGAN compares each with the other batch's mean."""
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.5, -3.0, 1.0])
    shuffled = fake[[2, 0, 1]]
    assert d_loss("rpgan", real, shuffled).item() != pytest.approx(d_loss("rpgan", real, fake))
    for kind in ("rasgan", "ralsgan"):
        assert d_loss(kind, real, shuffled).item() == pytest.approx(d_loss(kind, real, fake))


@pytest.mark.parametrize("kind", RELATIVISTIC)
def test_relativistic_losses_see_only_differences_and_need_real_logits(kind):
    shift = 7.0  # D's logits judged relative to each other: a common offset changes nothing
    assert d_loss(kind, REAL + shift, FAKE + shift).item() == pytest.approx(
        d_loss(kind, REAL, FAKE).item())
    assert g_loss(kind, FAKE + shift, REAL + shift).item() == pytest.approx(
        g_loss(kind, FAKE, REAL).item())
    with pytest.raises(ValueError, match="relativistic"):
        g_loss(kind, FAKE)


# ---------------------------------------------------------------------------
# R1/R2: zero-centred gradient penalties, applied lazily


def test_gradient_penalty_against_a_known_gradient():
    """D(x) = sum(a x^2) per image: grad = 2 a x, so E ||grad||^2 = 4 a^2 E ||x||^2 and its
    derivative in a is 8 a E ||x||^2 (the penalty must be differentiable for D's update)."""
    a = torch.tensor(0.3, requires_grad=True)
    x = images(n=4, c=2, size=3).requires_grad_(True)
    logits = (a * x.square()).flatten(1).sum(1)  # (B,)
    penalty = gradient_penalty(logits, x)
    sq_norms = x.detach().square().flatten(1).sum(1)  # (B,)
    assert penalty.item() == pytest.approx(4 * 0.3**2 * sq_norms.mean().item(), rel=1e-6)
    (d_a,) = torch.autograd.grad(penalty, a)
    assert d_a.item() == pytest.approx(8 * 0.3 * sq_norms.mean().item(), rel=1e-6)


def test_gradient_penalty_is_per_image_and_zero_where_d_is_flat():
    x = images(n=3, c=1, size=2).requires_grad_(True)
    w = torch.tensor([1.0, 0.0, 2.0])  # image 1 does not move its logit
    logits = w * x.flatten(1).sum(1)  # grad of image i: w_i everywhere, ||.||^2 = 4 w_i^2
    assert gradient_penalty(logits, x).item() == pytest.approx(4 * (1 + 0 + 4) / 3)


def test_lazy_schedule_applies_every_kth_step_scaled_by_k():
    weights = [penalty_weight(2.0, 4, it) for it in range(1, 13)]
    assert weights == [0, 0, 0, 4.0, 0, 0, 0, 4.0, 0, 0, 0, 4.0]  # gamma / 2 * k on 4, 8, 12
    assert sum(weights) / len(weights) == pytest.approx(2.0 / 2)  # on average gamma / 2
    assert [penalty_weight(0.5, 1, it) for it in (1, 2)] == [0.25, 0.25]
    assert penalty_weight(0.0, 4, 4) == 0.0


# ---------------------------------------------------------------------------
# DiffAugment


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=seeded(seed)) * 2 - 1


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
@pytest.mark.parametrize("channels", [1, 3])
def test_augment_keeps_shape_and_dtype_and_lets_gradients_through(policy, channels):
    x = images(c=channels).requires_grad_(True)
    out = diff_augment(x, policy, seeded(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    weights = torch.randn(out.shape, generator=seeded(2))
    (out * weights).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_translation_and_cutout_stay_in_range():
    x = images()
    moved = diff_augment(x, "translation,cutout", seeded(1))
    assert moved.min() >= -1 and moved.max() <= 1  # pixels moved or zeroed, none invented


def test_colour_on_grey_images_shifts_the_mean_and_scales_the_contrast():
    """1 channel: saturation is the identity, so out - mean(out) = c (x - mean(x)), c in
    [0.5, 1.5], and mean(out) = mean(x) + b, b in [-0.5, 0.5] (the brightness shift)."""
    x = images(n=64, c=1)
    out = diff_augment(x, "color", seeded(2))
    dev_x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    dev_out = out - out.mean(dim=(1, 2, 3), keepdim=True)
    c = (dev_out * dev_x).flatten(1).sum(1) / dev_x.square().flatten(1).sum(1)  # (64,)
    assert torch.allclose(dev_out, c[:, None, None, None] * dev_x, atol=1e-5)
    assert c.min() >= 0.5 and c.max() <= 1.5 and c.std() > 0.2  # U(0.5, 1.5): std 0.29
    b = (out - x).flatten(1).mean(1)
    assert b.abs().max() <= 0.5 and b.std() > 0.2


def test_saturation_scales_each_pixels_colour_about_its_grey():
    x = images(n=64)
    out = saturation(x, seeded(3))
    grey = x.mean(dim=1, keepdim=True)
    assert torch.allclose(out.mean(dim=1, keepdim=True), grey, atol=1e-6)
    s = (out - grey).flatten(1).norm(dim=1) / (x - grey).flatten(1).norm(dim=1)
    assert torch.allclose(out - grey, s[:, None, None, None] * (x - grey), atol=1e-5)
    assert s.min() >= 0 and s.max() <= 2 and s.std() > 0.4  # U(0, 2): std 0.58


def test_augment_is_reproducible_from_its_generator():
    x = images()
    a = diff_augment(x, generator=seeded(5))
    assert torch.equal(a, diff_augment(x, generator=seeded(5)))
    assert not torch.equal(a, diff_augment(x, generator=seeded(6)))
    torch.manual_seed(3)  # no generator: torch's global RNG, which checkpoints already carry
    b = diff_augment(x)
    torch.manual_seed(3)
    assert torch.equal(b, diff_augment(x))


def test_real_and_fake_get_the_same_transforms_for_the_same_draws():
    """Random parameters depend only on the generator, never on the pixels: for the same draws
    the linear policies move and cut real and fake identically (aug(a) - aug(b) = aug(a - b))."""
    real, fake = images(seed=0), images(seed=1)
    policy = "translation,cutout"
    diff = diff_augment(real, policy, seeded(4)) - diff_augment(fake, policy, seeded(4))
    assert torch.allclose(diff, diff_augment(real - fake, policy, seeded(4)))
    # colour: a constant image keeps its (per-image) constant, shifted by brightness alone
    flat = torch.full((64, 3, 8, 8), 0.25)
    shifted = diff_augment(flat, "color", seeded(4)) - 0.25
    per_image = shifted.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-6)
    assert per_image.abs().max() <= 0.5 and per_image[:, 0].std() > 0.2  # U(-0.5, 0.5): std 0.29


def test_translation_moves_each_image_by_its_own_shift_within_an_eighth():
    n, size = 64, 16  # an eighth of 16 px: shifts in [-2, 2]
    x = torch.zeros(n, 1, size, size)
    x[:, :, 8, 8] = 1.0  # one bright pixel that no allowed shift pushes out of the image
    out = diff_augment(x, "translation", seeded(0))
    assert torch.equal(out.flatten(1).sum(1), torch.ones(n))  # moved, not lost or blurred
    where = out.flatten(1).argmax(1)
    dy, dx = where // size - 8, where % size - 8
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) > 10  # each image its own shift


def test_translation_shifts_in_zeros_and_cutout_zeros_a_rectangle():
    n, size = 64, 16
    ones = torch.ones(n, 3, size, size)
    shifted = diff_augment(ones, "translation", seeded(0))
    zero_rows = (shifted[:, 0] == 0).all(dim=2).sum(1) + (shifted[:, 0] == 0).all(dim=1).sum(1)
    assert zero_rows.max() <= 4 and (zero_rows > 0).float().mean() > 0.5
    cut = diff_augment(ones, "cutout", seeded(0))
    assert torch.equal(cut[:, :1].expand_as(cut), cut)  # the same hole in every channel
    holes = cut[:, 0] == 0  # (n, H, W)
    area = holes.flatten(1).sum(1)
    # an 8 x 8 square; clipping at the border leaves at least a quarter of it
    assert area.max() == 64 and area.min() >= 16
    rows, cols = holes.any(2).sum(1), holes.any(1).sum(1)
    assert torch.equal(rows * cols, area)  # a rectangle, not scattered pixels


def test_augment_grad_is_the_cutout_mask():
    x = images().requires_grad_(True)
    out = diff_augment(x, "cutout", seeded(0))
    out.sum().backward()
    assert torch.equal(x.grad, (out != 0).float())


def test_policy_validation_and_the_empty_policy():
    x = images()
    assert torch.equal(diff_augment(x, ""), x)
    assert set(AUGMENT_POLICIES) == {"color", "translation", "cutout"}
    with pytest.raises(ValueError, match=r"'colour'.*\['color', 'translation', 'cutout'\]"):
        diff_augment(x, "colour,translation")


# ---------------------------------------------------------------------------
# Spectral normalisation in D


def reference_d_64() -> nn.Sequential:
    """pytorch/examples dcgan/main.py's netD, with its Sigmoid left to BCE-with-logits."""
    ndf, nc = 64, 3
    return nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False))


def test_default_d_is_the_reference_tensor_for_tensor_under_the_same_seed():
    torch.manual_seed(0)
    ours = Discriminator().state_dict()
    torch.manual_seed(0)
    reference = reference_d_64()
    reference.apply(init_weights)
    expected = {f"main.{k}": v for k, v in reference.state_dict().items()}
    assert list(ours) == list(expected)  # the same keys, so old checkpoints still load
    assert all(torch.equal(ours[k], expected[k]) for k in ours)


def conv_sigmas(D: nn.Module) -> list[float]:
    """Largest singular value of each conv weight as SN sees it: (out, in * kh * kw)."""
    with torch.no_grad():
        return [torch.linalg.matrix_norm(m.weight.flatten(1), ord=2).item()
                for m in D.modules() if isinstance(m, nn.Conv2d)]


def test_spectral_norm_bounds_each_layers_largest_singular_value():
    torch.manual_seed(0)
    D = Discriminator(hidden_dim=8, image_size=16, spectral_norm=True, batch_norm=False)
    x = torch.randn(8, 3, 16, 16)
    for _ in range(20):  # weights move; one power iteration per training pass keeps up
        D.zero_grad()
        D(x).square().mean().backward()
        with torch.no_grad():  # signSGD: every weight moves (an optimizer's first step is slow)
            for p in D.parameters():
                p.sub_(2e-2 * p.grad.sign())
    for _ in range(10):
        D(x)
    D.eval()  # eval: weight = original / sigma from the stored u, v, no further iteration
    sigmas = conv_sigmas(D)
    assert len(sigmas) == 3 and max(abs(s - 1) for s in sigmas) < 0.01
    unnormalised = [torch.linalg.matrix_norm(m.parametrizations.weight.original.flatten(1),
                                             ord=2).item()
                    for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert max(abs(s - 1) for s in unnormalised) > 0.3  # the bound is SN's doing


def test_batch_norm_free_d_has_biases_from_zero_and_round_trips_its_state():
    D = Discriminator(hidden_dim=8, image_size=16, spectral_norm=True, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in D.modules())
    biases = [m.bias for m in D.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert len(biases) == 1 and not biases[0].any()  # the one middle conv that lost its BN
    x = torch.randn(4, 3, 16, 16)
    D(x)  # a training pass moves the power-iteration vectors: they are state too
    twin = Discriminator(hidden_dim=8, image_size=16, spectral_norm=True, batch_norm=False)
    twin.load_state_dict(D.state_dict())
    assert torch.equal(twin.eval()(x), copy.deepcopy(D).eval()(x))
    assert D(x).shape == (4,)


# ---------------------------------------------------------------------------
# The options in the DCGAN family's step (config `gan` section)

# imported here so the maths tests above stay independent of the config and the family
from lib.config import ConfigError, load_config  # noqa: E402
from lib.core.device import Engine  # noqa: E402
from lib.data import ImageData  # noqa: E402
from lib.families import FAMILIES  # noqa: E402

TINY_GAN = ["data.image_size=16", "generator.args.hidden_dim=8",
            "discriminator.args.hidden_dim=8", "trainer.batch_size=8"]


def tiny_gan(*overrides: str):
    """configs/dcgan_train.json at 16 px, a built DCGAN and one batch, all under seed 0."""
    cfg = load_config("configs/dcgan_train.json", [*TINY_GAN, *overrides])
    engine = Engine(torch.device("cpu"), None, channels_last=False)
    data = ImageData(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8,
                                   generator=seeded(1)), None, None, "cats")
    torch.manual_seed(0)
    parts = FAMILIES["dcgan"].build(cfg, data, engine)
    return cfg, engine, parts, data.images.float() / 127.5 - 1


def one_step(*overrides: str) -> dict[str, float]:
    cfg, engine, parts, x = tiny_gan(*overrides)
    torch.manual_seed(1)
    logs = FAMILIES["dcgan"].step(parts, x, None, 1, engine, cfg)
    return {k: float(v) for k, v in logs.items()}


def test_the_default_gan_section_is_the_absent_one_value_for_value():
    absent = one_step()
    assert one_step("gan.loss=bce", 'gan.augment=""') == absent


def test_hinge_reaches_the_step_and_changes_the_losses():
    bce, hinge = one_step(), one_step("gan.loss=hinge")
    assert hinge["loss_d"] != bce["loss_d"] and hinge["loss_g"] != bce["loss_g"]
    # before any update D's logits are the same: only the loss on them differs
    assert hinge["d_real"] == bce["d_real"] and hinge["d_fake"] == bce["d_fake"]
    assert all(math.isfinite(v) for v in hinge.values())


def reference_step(parts, x):
    """The family's step as it stood before the options: what dcgan_train.json must still do."""
    G, D = parts.nets["generator"], parts.nets["discriminator"]
    noise = torch.randn(x.shape[0], parts.fixed["noise"].shape[1])
    ones, zeros = torch.ones(x.shape[0]), torch.zeros(x.shape[0])
    out_real = D(x)
    fake = G(noise)
    out_fake = D(fake.detach())
    loss_d = (F.binary_cross_entropy_with_logits(out_real, ones)
              + F.binary_cross_entropy_with_logits(out_fake, zeros))
    loss_d.backward()
    parts.optimizers["discriminator"].step()
    parts.optimizers["discriminator"].zero_grad()
    D.requires_grad_(False)
    loss_g = F.binary_cross_entropy_with_logits(D(fake), ones)
    loss_g.backward()
    parts.optimizers["generator"].step()
    parts.optimizers["generator"].zero_grad()
    D.requires_grad_(True)
    for sched in parts.schedulers.values():
        sched.step()
    return loss_d, loss_g


def test_dcgan_train_json_steps_bit_for_bit_as_before_the_options():
    cfg, engine, parts, x = tiny_gan()
    _, _, twin, _ = tiny_gan()
    torch.manual_seed(1)
    ours = [FAMILIES["dcgan"].step(parts, x, None, it, engine, cfg) for it in range(1, 4)]
    torch.manual_seed(1)
    theirs = [reference_step(twin, x) for _ in range(3)]
    for logs, (loss_d, loss_g) in zip(ours, theirs, strict=True):
        assert torch.equal(logs["loss_d"], loss_d.detach())
        assert torch.equal(logs["loss_g"], loss_g.detach())
    for name, net in parts.nets.items():
        theirs_state = twin.nets[name].state_dict()
        assert all(torch.equal(v, theirs_state[k]) for k, v in net.state_dict().items()), name


def one_step_at(it: int, *overrides: str) -> dict[str, torch.Tensor]:
    """D's weights after one step numbered `it` (the lazy schedule reads the number)."""
    cfg, engine, parts, x = tiny_gan(*overrides)
    torch.manual_seed(1)
    FAMILIES["dcgan"].step(parts, x, None, it, engine, cfg)
    return parts.nets["discriminator"].state_dict()


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.items())


@pytest.mark.parametrize("penalty", ["r1_gamma", "r2_gamma"])
def test_the_step_penalises_on_every_kth_step_only_and_scaled_by_k(penalty):
    plain = one_step_at(3)
    lazy = [f"gan.{penalty}=0.5", "gan.penalty_every=4"]
    assert same(one_step_at(3, *lazy), plain)  # step 3: no penalty, the plain step exactly
    on_due_step = one_step_at(4, *lazy)
    assert not same(on_due_step, plain)
    # step 4 of every 4 at gamma 0.5 weighs the penalty as every step at gamma 2 does
    eager = one_step_at(4, f"gan.{penalty}=2.0", "gan.penalty_every=1")
    assert same(on_due_step, eager)
    assert not same(on_due_step, one_step_at(4, f"gan.{penalty}=0.5", "gan.penalty_every=1"))


@pytest.mark.parametrize("loss", RELATIVISTIC)
def test_relativistic_g_judges_its_fakes_against_a_fresh_real_batch(loss):
    cfg, engine, parts, x = tiny_gan(f"gan.loss={loss}", "gan.r1_gamma=1", "gan.r2_gamma=1",
                                     "gan.penalty_every=1")
    seen = []
    D = parts.nets["discriminator"]
    D.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    before = {name: copy.deepcopy(net.state_dict()) for name, net in parts.nets.items()}
    for it in range(1, 4):
        logs = FAMILIES["dcgan"].step(parts, x, None, it, engine, cfg)
        assert all(math.isfinite(float(v)) for v in logs.values())
    assert len(seen) == 12  # per step: real and fake in D's update; fake and real in G's
    assert torch.equal(seen[3], x)
    for name, net in parts.nets.items():
        assert not same(net.state_dict(), before[name]), name


@pytest.mark.parametrize("augment", ["", "color,translation,cutout"])
def test_augment_changes_what_d_sees_in_both_steps(augment):
    cfg, engine, parts, x = tiny_gan(f"gan.augment={augment}" if augment else 'gan.augment=""')
    seen = []
    D = parts.nets["discriminator"]
    D.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    torch.manual_seed(1)
    logs = FAMILIES["dcgan"].step(parts, x, None, 1, engine, cfg)
    assert len(seen) == 3  # real and fake in D's update, fake in G's
    real_changed = not torch.equal(seen[0], x)
    fakes_differ = not torch.equal(seen[1], seen[2])  # the same fakes, each its own draw
    assert real_changed == fakes_differ == bool(augment)
    assert all(math.isfinite(float(v)) for v in logs.values())


def test_all_options_together_train_finite_steps_and_move_both_nets():
    cfg, engine, parts, x = tiny_gan("gan.loss=hinge", "gan.augment=color,translation,cutout",
                                     "discriminator.args.spectral_norm=true",
                                     "discriminator.args.batch_norm=false",
                                     "discriminator_optimizer.lr=4e-4",
                                     "generator_optimizer.lr=1e-4")
    before = {name: copy.deepcopy(net.state_dict()) for name, net in parts.nets.items()}
    for step in range(1, 4):
        logs = FAMILIES["dcgan"].step(parts, x, None, step, engine, cfg)
        assert all(math.isfinite(float(v)) for v in logs.values())
    for name, net in parts.nets.items():
        assert any(not torch.equal(v, before[name][k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("override, message", [
    ("gan.loss=wgan", r"gan\.loss: 'wgan' is not one of \['bce', 'hinge', 'ralsgan', "
                      r"'rasgan', 'rpgan'\]"),
    ("gan.r1_gamma=-1", r"gan\.r1_gamma: must be in \[0, 10000\] \(0: off.*got -1"),
    ("gan.r2_gamma=1e9", r"gan\.r2_gamma: must be in \[0, 10000\]"),
    ("gan.penalty_every=0", r"gan\.penalty_every: must be in \[1, 10000\].*got 0"),
    ("gan.penalty_every=1.5", r"gan\.penalty_every"),
    ("gan.augment=colour", r"gan\.augment: 'colour' is not a comma-separated subset"),
    ("gan.augmentation=color", r"gan\.augmentation: unknown field"),
])
def test_bad_gan_options_are_refused_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/dcgan_train.json", [override])


def test_the_gan_section_is_refused_on_a_non_gan_config():
    with pytest.raises(ConfigError, match=r"gan: a CVAE/DDPM config \(model\) would ignore "
                                          r"gan\.loss"):
        load_config("configs/ddpm_cats.json", ["gan.loss=hinge"])


# ---------------------------------------------------------------------------
# Standing statistics: the BatchNorm statistics G samples with (gan.standing_stats)


def pre_norm_means(G: torch.nn.Module, z: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel means of what each of G's BatchNorms receives, G in train mode."""
    means = []
    hooks = [m.register_forward_pre_hook(lambda m, args: means.append(args[0].mean((0, 2, 3))))
             for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    G.train()
    with torch.no_grad():
        G(z)
    for h in hooks:
        h.remove()
    return means


def test_the_ema_generator_samples_with_statistics_of_its_own_weights():
    # on main before this, the EMA copy sampled with the live G's running averages:
    # statistics of other weights, 13 to 16 Inception FID worse on the real cats
    from lib.families.dcgan import STANDING_SEED

    cfg, engine, parts, x = tiny_gan("trainer.ema_decay=0.9", "gan.standing_stats=256")
    family = FAMILIES["dcgan"]
    family.prepare_sampling(parts, cfg)
    for step in range(1, 4):
        family.step(parts, x, None, step, engine, cfg)
        parts.ema.update(parts.nets, step)
    avg = parts.ema.averages["generator"]
    G = parts.sampling_weights("generator")
    assert G is not avg
    z = torch.randn(256, avg.latent_dim, generator=seeded(STANDING_SEED))
    norms = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    own = pre_norm_means(copy.deepcopy(avg), z)
    for norm, mean in zip(norms, own, strict=True):
        torch.testing.assert_close(norm.running_mean, mean, rtol=1e-4, atol=1e-5)
    live = [m.running_mean for m in avg.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-4)
               for a, b in zip(live, own, strict=True))
    images = family.sample(parts, 4, None, seeded(0))
    assert images.shape == (4, 3, 16, 16) and bool(torch.isfinite(images).all())


def test_standing_stats_zero_samples_with_trainings_running_averages():
    cfg, engine, parts, x = tiny_gan("trainer.ema_decay=0.9", "gan.standing_stats=0")
    FAMILIES["dcgan"].prepare_sampling(parts, cfg)
    assert parts.sampling_weights("generator") is parts.ema.averages["generator"]
    cfg, engine, parts, x = tiny_gan()  # the default: measured, for the raw G as well
    FAMILIES["dcgan"].prepare_sampling(parts, cfg)
    assert parts.sampling_weights("generator") is not parts.nets["generator"]


@pytest.mark.parametrize("value", ["-1", "1.5", "true"])
def test_bad_standing_stats_are_refused(value):
    with pytest.raises(ConfigError, match=r"gan\.standing_stats"):
        load_config("configs/dcgan_train.json", [f"gan.standing_stats={value}"])
