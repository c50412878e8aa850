"""Diffusion maths: eps- and v-prediction, min-SNR weighting, DPM-Solver++(2M) and DDIM.

The samplers are checked on a data distribution whose exact denoiser is known:
x_0 ~ N(mu, s^2) per pixel gives E[x_0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 +
sigma^2) (x_t - alpha mu). With that exact "network" every sampler is an affine
map of its starting noise, and the exact probability-flow ODE maps x_T to
mu + s (x_T - alpha_T mu) / sqrt(alpha_T^2 s^2 + sigma_T^2): what is left is
each sampler's own discretisation error.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.models.ddpm import DDPM

pytestmark = pytest.mark.usefixtures("one_thread")

MU, S = 0.3, 0.2  # data well inside [-1, 1], so clipping x0_hat never bites


def tiny(**kw) -> DDPM:
    args = dict(image_size=8, n_channels=1, num_classes=0, base_channels=8, channel_mults=[1, 2],
                num_res_blocks=1, timesteps=40, dropout=0.0)
    args.update(kw)
    return DDPM(**args)


def randomize(model: DDPM, seed: int = 0) -> DDPM:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


class ExactGaussianDenoiser(nn.Module):
    """The Bayes-optimal eps (or v) for x_0 ~ N(mu, s^2), in float64, in place of the UNet."""

    def __init__(self, model: DDPM, mu: float = MU, s: float = S):
        super().__init__()
        self.abar, self.prediction, self.mu, self.s = model.alphas_cumprod, model.prediction, mu, s

    def forward(self, x, t, labels):
        abar = self.abar[t].double().reshape(-1, 1, 1, 1)
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        x = x.double()
        x0 = self.mu + alpha * self.s**2 / (alpha**2 * self.s**2 + sigma**2) * (x - alpha * self.mu)
        eps = (x - alpha * x0) / sigma
        return (eps if self.prediction == "eps" else alpha * eps - sigma * x0).float()


class Answer(nn.Module):
    """A "network" that returns the right output, whatever it is asked."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, x, t, labels):
        return self.out


def exact(schedule: str = "cosine", prediction: str = "eps") -> DDPM:
    """A 1000-step DDPM of 4 x 4 one-channel images whose network is the exact denoiser."""
    model = tiny(schedule=schedule, prediction=prediction, timesteps=1000, image_size=4,
                 channel_mults=[1])
    model.unet = ExactGaussianDenoiser(model)
    return model.eval()


def ode_solution(model: DDPM, noise: torch.Tensor) -> torch.Tensor:
    """Where the exact probability-flow ODE takes x_T: standardise under q(x_T), then rescale."""
    abar = model.alphas_cumprod[-1].double().item()
    alpha, sigma = math.sqrt(abar), math.sqrt(1 - abar)
    return MU + S * (noise.double() - alpha * MU) / math.sqrt(alpha**2 * S**2 + sigma**2)


def worst_error(model: DDPM, noise: torch.Tensor, **kw) -> float:
    return (model.sample(len(noise), noise=noise, **kw).double()
            - ode_solution(model, noise)).abs().max().item()


def noise_batch(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed)).clamp(-3, 3)


# ---------------------------------------------------------------------------
# v-prediction and min-SNR weighting


def test_v_and_x_t_give_back_x0_and_eps():
    model = tiny(timesteps=100)
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1, torch.randn(6, 1, 8, 8, generator=gen)
    t = torch.tensor([0, 1, 30, 60, 98, 99])
    x_t = model.q_sample(x0, t, eps)
    v = model.v_target(x0, t, eps)
    assert torch.allclose(model.predict_x0_from_v(x_t, t, v), x0, atol=1e-5)
    assert torch.allclose(model.predict_eps_from_x0(x_t, t, x0), eps, atol=1e-5)
    # Salimans & Ho's angle: alpha = cos(phi), sigma = sin(phi), v = cos(phi) eps - sin(phi) x0
    phi = torch.atan2(model.sqrt_one_minus_alphas_cumprod[t], model.sqrt_alphas_cumprod[t])
    c, s = phi.cos().reshape(-1, 1, 1, 1), phi.sin().reshape(-1, 1, 1, 1)
    assert torch.allclose(v, c * eps - s * x0, atol=1e-6)
    assert torch.allclose(x_t, c * x0 + s * eps, atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_model_predictions_turn_either_output_into_x0_and_eps(prediction):
    model = tiny(timesteps=100, prediction=prediction)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 1, 8, 8, generator=gen) * 1.8 - 0.9
    eps = torch.randn(3, 1, 8, 8, generator=gen)
    t = torch.tensor([5, 50, 95])
    x_t = model.q_sample(x0, t, eps)
    out = eps if prediction == "eps" else model.v_target(x0, t, eps)
    model.unet = Answer(out)
    got_eps, got_x0 = model.model_predictions(x_t, t, None, 1.0)
    assert torch.allclose(got_x0, x0, atol=1e-4) and torch.allclose(got_eps, eps, atol=1e-3)


def test_min_snr_weights_by_hand():
    model = tiny(timesteps=100, loss_weighting="min_snr", min_snr_gamma=5.0)
    t = torch.tensor([0, 20, 50, 80, 99])
    abar = model.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    assert torch.allclose(model.snr[t].double(), snr, rtol=1e-4)
    expected_eps = [min(x, 5.0) / x for x in snr.tolist()]
    assert model.loss_weight(t).tolist() == pytest.approx(expected_eps, rel=1e-4)
    assert expected_eps[0] < 0.01 and expected_eps[-1] == 1.0  # clean steps down, noisy kept
    v_model = tiny(timesteps=100, loss_weighting="min_snr", min_snr_gamma=5.0, prediction="v")
    expected_v = [min(x, 5.0) / (x + 1) for x in snr.tolist()]
    assert v_model.loss_weight(t).tolist() == pytest.approx(expected_v, rel=1e-4)


def draws(model: DDPM, x: torch.Tensor, seed: int):
    """The t and noise that model.forward draws after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    t = torch.randint(0, model.timesteps, (x.shape[0],))
    return t, torch.randn_like(x)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_losses_weight_the_right_target(prediction):
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    plain = randomize(tiny(timesteps=100, prediction=prediction))
    weighted = randomize(tiny(timesteps=100, prediction=prediction, loss_weighting="min_snr"))
    t, noise = draws(plain, x, seed=7)
    with torch.no_grad():
        out = plain.unet(plain.q_sample(x, t, noise), t, None)
        target = noise if prediction == "eps" else plain.v_target(x, t, noise)
        per_image = (out - target).square().flatten(1).mean(1)
        torch.manual_seed(7)
        assert torch.equal(plain(x), F.mse_loss(out, target))  # today's loss, exactly
        torch.manual_seed(7)
        expected = (weighted.loss_weight(t) * per_image).mean()
        assert weighted(x).item() == pytest.approx(expected.item(), rel=1e-5)
        assert abs(expected.item() - per_image.mean().item()) > 1e-3  # weights that matter


def test_min_snr_with_a_gamma_above_every_snr_is_the_plain_eps_loss():
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    plain = randomize(tiny(timesteps=100))
    loose = randomize(tiny(timesteps=100, loss_weighting="min_snr", min_snr_gamma=1e12))
    with torch.no_grad():
        torch.manual_seed(3)
        a = plain(x)
        torch.manual_seed(3)
        assert loose(x).item() == pytest.approx(a.item(), rel=1e-6)


def test_option_names_are_checked_with_the_choices():
    with pytest.raises(ValueError, match=r"prediction 'x0'.*\['eps', 'v', 'flow'\]"):
        tiny(prediction="x0")
    with pytest.raises(ValueError, match=r"loss_weighting.*\['none', 'min_snr'\]"):
        tiny(loss_weighting="p2")
    with pytest.raises(ValueError, match="min_snr_gamma"):
        tiny(min_snr_gamma=0.0)
    with pytest.raises(ValueError, match=r"spacing.*\['uniform', 'quadratic'\]"):
        tiny().sample(1, steps=2, spacing="karras")
    with pytest.raises(ValueError, match="deterministic"):
        tiny().sample(1, sampler="dpm++2m", steps=2, eta=1.0)
    with pytest.raises(ValueError, match="dpm"):
        tiny(sampler="heun")


# ---------------------------------------------------------------------------
# Timestep grids


def test_quadratic_grid_is_dpm_solvers_default_and_keeps_every_step():
    model = tiny(timesteps=1000)
    assert model.timestep_sequence("dpm++2m", 10) == [999, 809, 639, 489, 359, 249, 159, 89,
                                                      39, 9, -1]
    assert model.timestep_sequence("dpm++2m", 10, "uniform") == model.timestep_sequence("ddim", 10)
    for timesteps in (1, 7, 40):
        model = tiny(timesteps=timesteps)
        for steps in range(1, timesteps + 1):
            times = model.timestep_sequence("dpm++2m", steps)
            assert len(times) == steps + 1 and times[0] == timesteps - 1 and times[-1] == -1
            assert all(a > b for a, b in zip(times[:-1], times[1:], strict=True))  # none merged


# ---------------------------------------------------------------------------
# DPM-Solver++(2M)


def test_its_first_step_is_ddims_and_later_steps_differ():
    model = randomize(tiny(timesteps=100))
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = dict(noise=noise, spacing="uniform")
    for steps in (1, 2):  # a first-order step, then the x0 of the final step: DDIM's own maths
        assert torch.allclose(model.sample(2, sampler="dpm++2m", steps=steps, **kw),
                              model.sample(2, sampler="ddim", steps=steps, **kw), atol=1e-6)
    assert not torch.allclose(model.sample(2, sampler="dpm++2m", steps=4, **kw),
                              model.sample(2, sampler="ddim", steps=4, **kw), atol=1e-3)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_on_gaussian_data_few_steps_land_near_the_exact_ode_solution(schedule, prediction):
    """Measured, worst pixel of 256 starting values (|z| <= 3), cosine / linear schedule:
    DPM-Solver++ 10 steps 0.025 / 0.002, 20 steps 0.012 / 0.020; DDIM 10 steps 0.18 / 0.31,
    50 steps 0.040 / 0.079. The maths is deterministic: the margins cover rounding only."""
    model = exact(schedule, prediction)
    noise = noise_batch()
    dpm10 = worst_error(model, noise, sampler="dpm++2m", steps=10)
    dpm20 = worst_error(model, noise, sampler="dpm++2m", steps=20)
    assert dpm10 < 0.05 and dpm20 < 0.04
    assert dpm10 < worst_error(model, noise, sampler="ddim", steps=10) / 3
    assert dpm10 < worst_error(model, noise, sampler="ddim", steps=50)  # DDIM, 5x the steps
    # On the same grid too: the second-order solver, not only its grid, beats DDIM.
    for steps, spacing in ((20, "quadratic"), (50, "uniform")):
        kw = dict(steps=steps, spacing=spacing)
        assert (worst_error(model, noise, sampler="dpm++2m", **kw)
                < worst_error(model, noise, sampler="ddim", **kw) * 0.6)


def test_on_gaussian_data_samples_have_the_datas_mean_and_std():
    model = exact()
    images = model.sample(1024, sampler="dpm++2m", steps=10,
                          generator=torch.Generator().manual_seed(0))  # 16,384 pixels
    # sampling error of the mean ~ S / 128 = 0.0016, of the std ~ S / 181 = 0.0011
    assert images.mean().item() == pytest.approx(MU, abs=0.008)
    assert images.std().item() == pytest.approx(S, abs=0.012)


def test_second_order_convergence_on_gaussian_data():
    """Doubling the steps shrinks DPM-Solver++'s error ~4x (second order), DDIM's ~2x (first)."""
    model = exact()
    noise = noise_batch()

    def ratio(sampler):
        coarse = worst_error(model, noise, sampler=sampler, steps=50, spacing="quadratic")
        fine = worst_error(model, noise, sampler=sampler, steps=100, spacing="quadratic")
        return coarse / fine

    assert ratio("dpm++2m") > 3.0 and 1.5 < ratio("ddim") < 2.5


def test_deterministic_samplers_agree_at_many_steps():
    model = exact()
    noise = noise_batch()
    dpm = model.sample(16, noise=noise, sampler="dpm++2m", steps=500)
    ddim = model.sample(16, noise=noise, sampler="ddim", steps=500)
    assert (dpm - ddim).abs().max() < 0.01
    assert (dpm.double() - ode_solution(model, noise)).abs().max() < 1e-3


# eps -> x0 divides by alpha_t: at the cosine schedule's last step (abar = 2.4e-9) float32's
# rounding of eps is magnified 2e4 times, so eps-models agree only to ~1e-3 there.
EPS_ATOL = {"cosine": 2e-3, "linear": 2e-5}


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_eps_and_v_models_of_the_same_denoiser_sample_the_same_images(schedule):
    noise = noise_batch()
    for sampler in ("ddim", "dpm++2m"):
        a = exact(schedule, "eps").sample(16, noise=noise, sampler=sampler, steps=12)
        b = exact(schedule, "v").sample(16, noise=noise, sampler=sampler, steps=12)
        assert torch.allclose(a, b, atol=EPS_ATOL[schedule])


def test_guidance_mixes_the_conditional_and_the_null_class_model():
    model = randomize(tiny(num_classes=3))
    labels, null = torch.tensor([0, 1, 2]), torch.full((3,), 3)
    kw = dict(noise=torch.randn(3, 1, 8, 8), steps=5, sampler="dpm++2m")
    unconditional = model.sample(3, labels=labels, guidance_scale=0.0, **kw)
    assert torch.allclose(unconditional, model.sample(3, labels=null, guidance_scale=1.0, **kw),
                          atol=1e-5)
    conditional = model.sample(3, labels=labels, guidance_scale=1.0, **kw)
    guided = model.sample(3, labels=labels, guidance_scale=4.0, **kw)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)
    assert not torch.allclose(guided, conditional, atol=1e-3)


def test_trajectory_has_one_frame_per_step_and_ends_in_range():
    model = randomize(tiny(timesteps=100))
    images, path = model.sample(2, sampler="dpm++2m", steps=6, return_trajectory=True)
    assert path.shape == (7, 2, 1, 8, 8) and images.shape == (2, 1, 8, 8)
    assert images.min() >= -1 and images.max() <= 1


# ---------------------------------------------------------------------------
# Against diffusers' implementation (only where the tests' extra installed it)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own numpy call
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [3, 10, 20])
def test_matches_diffusers_dpm_solver_multistep(schedule, prediction, steps):
    diffusers = pytest.importorskip("diffusers", reason="diffusers is in the dev extra only")
    model = exact(schedule, prediction)
    times = model.timestep_sequence("dpm++2m", steps)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=model.timesteps, trained_betas=model.betas.double().numpy(),
        solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint",
        lower_order_final=True, final_sigmas_type="zero",
        prediction_type="epsilon" if prediction == "eps" else "v_prediction")
    scheduler.set_timesteps(timesteps=times[:-1])  # -1 is diffusers' final sigma = 0
    noise = noise_batch()
    x = noise.clone()
    for t in scheduler.timesteps:
        out = model.unet(x, torch.full((len(x),), int(t)), None)
        x = scheduler.step(out, t, x).prev_sample
    ours = model.sample(16, noise=noise, sampler="dpm++2m", steps=steps)
    # measured: 1e-6 apart, but for eps on the cosine schedule (float32 rounding, see EPS_ATOL)
    assert torch.allclose(ours, x.float(), atol=EPS_ATOL[schedule] if prediction == "eps"
                          else 2e-5)


# ---------------------------------------------------------------------------
# Rectified flow (prediction="flow", sampler="euler")


class ExactGaussianVelocity(nn.Module):
    """E[eps - x_0 | x_s] for x_0 ~ N(mu, s^2) on the path x_s = (1 - s) x_0 + s eps."""

    def __init__(self, model: DDPM, mu: float = MU, s: float = S):
        super().__init__()
        self.flow_time, self.mu, self.s = model.flow_time, mu, s  # a function, not a submodule

    def forward(self, x, t, labels):
        time = self.flow_time(t).double().reshape(-1, 1, 1, 1)
        x, a = x.double(), 1 - time
        x0 = self.mu + a * self.s**2 / (a**2 * self.s**2 + time**2) * (x - a * self.mu)
        return ((x - a * x0) / time - x0).float()  # E[eps | x_s] - E[x_0 | x_s]


def exact_flow() -> DDPM:
    model = tiny(prediction="flow", sampler="euler", timesteps=1000, image_size=4,
                 channel_mults=[1])
    model.unet = ExactGaussianVelocity(model)
    return model.eval()


def test_flow_loss_is_the_velocity_mse_on_the_straight_path():
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = randomize(tiny(timesteps=100, prediction="flow", sampler="euler"))
    t, noise = draws(model, x, seed=5)
    s = ((t + 1) / 100).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        expected = F.mse_loss(model.unet((1 - s) * x + s * noise, t, None), noise - x)
        torch.manual_seed(5)
        assert torch.equal(model(x), expected)
    assert model.flow_time(99) == 1.0 and model.flow_time(-1) == 0.0  # pure noise .. data


def test_euler_on_gaussian_data_converges_to_the_exact_flow_at_first_order():
    """x_1 is pure noise, so the exact flow maps it to mu + s x_1; Euler's error halves
    when its steps double (measured, worst pixel: 10 steps 0.137, 20 0.072, 40 0.037)."""
    model, noise = exact_flow(), noise_batch()
    errors = [(model.sample(len(noise), noise=noise, steps=n).double()
               - (MU + S * noise.double())).abs().max().item() for n in (10, 20, 40)]
    assert errors[2] < 0.05
    assert 1.6 < errors[0] / errors[1] < 2.4 and 1.6 < errors[1] / errors[2] < 2.4


def test_flow_and_its_sampler_go_together():
    with pytest.raises(ValueError, match="euler"):
        tiny(prediction="flow")  # the default sampler is DDIM's
    with pytest.raises(ValueError, match="euler"):
        tiny(sampler="euler")
    with pytest.raises(ValueError, match="loss_weighting"):
        tiny(prediction="flow", sampler="euler", loss_weighting="min_snr")
    model = exact_flow()
    with pytest.raises(ValueError, match="cannot sample"):
        model.sample(2, sampler="dpm++2m")
    with pytest.raises(ValueError, match="deterministic"):
        model.sample(2, eta=1.0)
