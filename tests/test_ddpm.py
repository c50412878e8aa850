"""DDPM model: schedule maths against closed forms, sampler identities, shapes, guidance."""

import math

import pytest
import torch

from lib.models.ddpm import DDPM
from lib.models.schedules import cosine_beta_schedule, linear_beta_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> DDPM:
    args = dict(image_size=8, n_channels=1, num_classes=0, base_channels=8, channel_mults=[1, 2],
                num_res_blocks=1, timesteps=40, dropout=0.0)
    args.update(kw)
    return DDPM(**args)


def randomize(model: DDPM, seed: int = 0) -> DDPM:
    """Random weights everywhere (the zero inits would make the network nearly trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


# ---------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [10, 1000])
def test_alphas_cumprod_is_monotone_and_ends_near_pure_noise(schedule, timesteps):
    abar = tiny(schedule=schedule, timesteps=timesteps).alphas_cumprod
    assert abar.shape == (timesteps,)
    assert (abar[1:] < abar[:-1]).all()
    assert 0 <= abar[-1] < 0.01 and abar[0] < 1  # index 0 is already one noising step
    assert abar[0] > 0.9


def test_linear_schedule_closed_form():
    T = 1000
    betas = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]  # Ho et al.'s endpoints
    assert torch.allclose(linear_beta_schedule(T), torch.tensor(betas, dtype=torch.float64))
    abar = tiny(schedule="linear", timesteps=T).alphas_cumprod
    for t in (0, 1, 99, 500, 999):
        expected = math.prod(1 - b for b in betas[: t + 1])
        assert abar[t].item() == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_cosine_schedule_closed_form():
    T, s = 1000, 0.008

    def f(t):  # Nichol & Dhariwal, eq. 17
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    abar = tiny(schedule="cosine", timesteps=T).alphas_cumprod
    betas = cosine_beta_schedule(T)
    clipped = int((betas >= 0.999).sum())
    assert clipped <= 2  # only the very last steps hit the paper's clip
    for t in (0, 10, 250, 500, 900, T - 1 - clipped):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-4, abs=1e-7)


def test_unknown_schedule_and_sampler_name_the_choices():
    with pytest.raises(ValueError, match="linear"):
        tiny(schedule="quadratic")
    with pytest.raises(ValueError, match="ddim"):
        tiny(sampler="heun")
    with pytest.raises(ValueError, match="divisible"):
        tiny(image_size=28, channel_mults=[1, 2, 2, 2])
    with pytest.raises(ValueError, match="eta"):
        tiny(eta=1.5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_mean_and_variance_at_a_chosen_t(schedule):
    torch.manual_seed(0)
    model = tiny(schedule=schedule, timesteps=100)
    t_idx = 37
    abar = model.alphas_cumprod[t_idx].item()
    x0 = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    n = 4000
    x0s = x0.expand(n, -1, -1, -1)
    xt = model.q_sample(x0s, torch.full((n,), t_idx), torch.randn(n, 1, 8, 8))
    mean, var = xt.mean(0), xt.var(0)
    se = math.sqrt((1 - abar) / n)  # standard error of each pixel's mean
    assert (mean - math.sqrt(abar) * x0[0]).abs().max() < 5 * se
    assert (var - (1 - abar)).abs().max() < 0.15 * (1 - abar)


def test_posterior_is_the_bayes_product_of_forward_steps():
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): precision-weighted Gaussians."""
    model = tiny(schedule="linear", timesteps=50)
    t = 20
    beta, abar_prev = model.betas[t].item(), model.alphas_cumprod[t - 1].item()
    x0, xt = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    # q(x_t | x_{t-1}) = N(sqrt(1 - beta) x_{t-1}, beta): in x_{t-1}, precision (1 - beta) / beta
    prec = (1 - beta) / beta + 1 / (1 - abar_prev)
    mean = (math.sqrt(1 - beta) / beta * xt + math.sqrt(abar_prev) / (1 - abar_prev) * x0) / prec
    got_mean, got_log_var = model.q_posterior(x0, xt, torch.full((2,), t))
    assert torch.allclose(got_mean, mean, atol=1e-5)
    assert got_log_var.exp().flatten() == pytest.approx([1 / prec] * 2, rel=1e-4)


# ---------------------------------------------------------------------------
# Samplers


@pytest.mark.parametrize("num_classes,guidance", [(0, 1.0), (3, 2.0)])
def test_ddim_with_all_steps_and_eta_1_is_the_ddpm_posterior_mean_path(num_classes, guidance):
    """DDIM's x_{t-1} at eta = 1 is the DDPM posterior mean plus the same sigma_t * z, so with the
    same random draws the two samplers walk the same path (clipped x0 predictions included)."""
    model = randomize(tiny(num_classes=num_classes, timesteps=30))
    labels = torch.tensor([0, 2]) if num_classes else None
    kw = dict(labels=labels, guidance_scale=guidance, return_trajectory=True)
    ddpm, path_ddpm = model.sample(2, sampler="ddpm", generator=torch.Generator().manual_seed(3),
                                   **kw)
    ddim, path_ddim = model.sample(2, sampler="ddim", steps=30, eta=1.0,
                                   generator=torch.Generator().manual_seed(3), **kw)
    assert path_ddpm.shape == path_ddim.shape == (31, 2, 1, 8, 8)
    assert torch.allclose(path_ddpm, path_ddim, atol=1e-4)
    assert torch.allclose(ddpm, ddim, atol=1e-4)
    assert path_ddpm[1:].std(dim=(1, 2, 3, 4)).min() > 0.05  # a real path, not a constant


def test_one_ddim_step_at_eta_1_has_the_posterior_mean_and_variance():
    model = randomize(tiny(timesteps=30))
    t, n = 12, 3000
    xt = torch.randn(1, 1, 8, 8).expand(n, -1, -1, -1)
    with torch.inference_mode():
        _, x0 = model.model_predictions(xt[:1], torch.tensor([t]), None, 1.0)
        mean, log_var = model.q_posterior(x0, xt[:1], torch.tensor([t]))
        draws = model.ddim_step(xt, t, t - 1, None, 1.0, eta=1.0)
    se = (0.5 * log_var).exp() / math.sqrt(n)
    assert ((draws.mean(0) - mean[0]).abs() < 5 * se[0]).all()
    assert draws.var(0).mean().item() == pytest.approx(log_var.exp().item(), rel=0.1)


def test_ddim_at_eta_0_is_deterministic_given_the_starting_noise():
    model = randomize(tiny())
    noise = torch.randn(2, 1, 8, 8)
    a = model.sample(2, steps=7, noise=noise, generator=torch.Generator().manual_seed(1))
    b = model.sample(2, steps=7, noise=noise, generator=torch.Generator().manual_seed(2))
    c = model.sample(2, steps=7, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_timestep_sequences():
    model = tiny(timesteps=40, sample_steps=4)
    assert model.timestep_sequence("ddim", None) == [39, 29, 19, 9, -1]
    assert model.timestep_sequence("ddpm", None) == list(range(39, -2, -1))
    assert model.timestep_sequence("ddim", 40) == list(range(39, -2, -1))
    with pytest.raises(ValueError, match="ddim"):
        model.timestep_sequence("ddpm", 10)
    with pytest.raises(ValueError, match="steps"):
        model.timestep_sequence("ddim", 41)


# ---------------------------------------------------------------------------
# Shapes, conditioning, guidance


@pytest.mark.parametrize("size,channels,mults", [(28, 1, [1, 2, 2]), (32, 3, [1, 2, 2]),
                                                 (64, 3, [1, 2, 2, 2])])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_shapes_loss_and_samples(size, channels, mults, num_classes):
    torch.manual_seed(0)
    model = tiny(image_size=size, n_channels=channels, channel_mults=mults,
                 num_classes=num_classes, timesteps=10)
    x = torch.rand(2, channels, size, size) * 2 - 1
    labels = torch.tensor([1, 7]) if num_classes else None
    loss = model(x, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    images = model.sample(3, steps=2)
    assert images.shape == (3, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1


def test_conditional_model_needs_labels_and_unconditional_ignores_them():
    with pytest.raises(ValueError, match="labels"):
        tiny(num_classes=3)(torch.zeros(2, 1, 8, 8))
    assert torch.isfinite(tiny()(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])))


def test_guidance_mixes_the_conditional_and_the_null_class_model():
    model = randomize(tiny(num_classes=3))
    noise = torch.randn(3, 1, 8, 8)
    labels = torch.tensor([0, 1, 2])
    null = torch.full((3,), 3)  # index num_classes is the null ("no class") embedding
    kw = dict(noise=noise, steps=5)
    # w = 0 is the unconditional model, w = 1 the conditional one, w > 1 goes past it
    unconditional = model.sample(3, labels=labels, guidance_scale=0.0, **kw)
    assert torch.allclose(unconditional, model.sample(3, labels=null, guidance_scale=1.0, **kw),
                          atol=1e-5)
    conditional = model.sample(3, labels=labels, guidance_scale=1.0, **kw)
    guided = model.sample(3, labels=labels, guidance_scale=4.0, **kw)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)
    assert not torch.allclose(guided, conditional, atol=1e-3)


def test_guidance_refused_without_a_null_class_model():
    with pytest.raises(ValueError, match="guidance_scale"):
        tiny(guidance_scale=3.0)
    with pytest.raises(ValueError, match="cond_drop_prob"):
        tiny(num_classes=3, cond_drop_prob=0.0).sample(2, guidance_scale=2.0)


def test_condition_dropout_feeds_the_null_class():
    seen = []
    model = tiny(num_classes=3, cond_drop_prob=0.5)
    model.unet.class_emb.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    model(torch.zeros(400, 1, 8, 8), torch.zeros(400, dtype=torch.long))
    dropped = (seen[0] == 3).float().mean().item()
    assert 0.4 < dropped < 0.6 and set(seen[0].tolist()) == {0, 3}
