"""DDPM: a small UNet that predicts the noise (or v, or a flow's velocity), its schedules,
and four samplers.

Ho et al. 2020 ("Denoising Diffusion Probabilistic Models") for the training
objective and the ancestral sampler, Nichol & Dhariwal 2021 for the cosine
schedule, Song et al. 2021 (DDIM) for the strided sampler, Ho & Salimans 2021
for classifier-free guidance, Salimans & Ho 2022 for v-prediction, Hang et al.
2023 for min-SNR-gamma loss weighting, Lu et al. 2022 (DPM-Solver++) for the
few-step ODE sampler, Liu et al. 2022 (rectified flow; Lipman et al.'s flow matching) for
prediction="flow": x_s = (1 - s) x_0 + s eps on a straight line, the UNet regresses its
velocity eps - x_0, and sampler="euler" integrates it from noise (s = 1) to data (s = 0);
its time s = (t + 1) / T on the same timestep indices. The layout follows lucidrains'
denoising-diffusion-pytorch: the maths lives in short named functions and methods
(`q_sample`, `q_posterior`, `p_sample`, `ddim_step`, `dpm_solver_step`, `euler_step`),
the network in small modules (lib/models/unet.py), the schedules in
lib/models/schedules.py, and the trainer (EMA, grids, GIFs) stays outside
this file.

Timesteps are 0-based: index t in [0, T) is diffusion step t + 1 of the paper,
so `alphas_cumprod[0]` is already slightly below one. Notation: x_t =
alpha_t x_0 + sigma_t eps with alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t),
SNR_t = alpha_t^2 / sigma_t^2, and lambda_t = log(alpha_t / sigma_t).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lib.models.schedules import beta_schedule, default, exists, extract
from lib.models.unet import UNet

SAMPLERS = ("ddim", "ddpm", "dpm++2m", "euler")
PREDICTIONS = ("eps", "v", "flow")
LOSS_WEIGHTINGS = ("none", "min_snr")
SPACINGS = ("uniform", "quadratic")


# ---------------------------------------------------------------------------
# The diffusion model


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"DDPM: unknown {field} {value!r}; choose one of {list(choices)}")
    return value


def _check_eta(eta: float) -> float:
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDPM: eta must be in [0, 1] (0 = deterministic DDIM, 1 = ancestral), "
                         f"got {eta}")
    return eta


class DDPM(nn.Module):
    """Gaussian diffusion around a UNet: `forward` is the training loss, `sample` generates.

    Trains by epsilon-prediction (the "simple" loss of Ho et al.) or, with
    prediction="v", by v-prediction: the target v = alpha_t eps - sigma_t x_0
    has unit scale at every t, and x_0 = alpha_t x_t - sigma_t v never divides
    by a small alpha_t, as x_0 = (x_t - sigma_t eps) / alpha_t does at high
    noise (magnifying eps's errors). loss_weighting="min_snr"
    weights each image's MSE so that the implied x_0 loss is weighted by
    min(SNR_t, min_snr_gamma) (Hang et al.): the nearly clean timesteps, easy
    and dominant in the plain loss, stop crowding out the rest. prediction="flow"
    trains a rectified flow instead (the module's docstring; the schedule then goes
    unused). With `num_classes` > 0 the UNet is class-conditional and, with probability
    `cond_drop_prob`, sees the null class instead, so that one network learns
    both the conditional and the unconditional model that classifier-free
    guidance mixes at sampling time. `sampler`, `sample_steps`, `eta` and
    `guidance_scale` are only the defaults of `sample`: they live here so
    that a config (and a checkpoint) says how its images are drawn.
    """

    def __init__(
        self,
        image_size: int = 32,
        n_channels: int = 3,
        num_classes: int = 0,
        base_channels: int = 64,
        channel_mults: list[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        timesteps: int = 1000,
        schedule: str = "cosine",
        cond_drop_prob: float = 0.1,
        dropout: float = 0.1,
        sampler: str = "ddim",
        sample_steps: int = 50,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        prediction: str = "eps",
        loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
    ):
        super().__init__()
        factor = 2 ** (len(channel_mults) - 1)
        if image_size % factor:
            raise ValueError(
                f"DDPM: image_size={image_size} must be divisible by 2^(len(channel_mults) - 1)"
                f" = {factor} for channel_mults={list(channel_mults)}; use fewer levels"
                f" or another image size"
            )
        if timesteps < 1:
            raise ValueError(f"DDPM: timesteps must be at least 1, got {timesteps}")
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError(f"DDPM: cond_drop_prob must be in [0, 1), got {cond_drop_prob}")
        _check_eta(eta)
        if min_snr_gamma <= 0:
            raise ValueError(f"DDPM: min_snr_gamma must be positive (Hang et al. use 5), "
                             f"got {min_snr_gamma}")
        self.prediction = _check_choice("prediction", prediction, PREDICTIONS)
        if prediction == "flow" and loss_weighting != "none":
            raise ValueError("DDPM: prediction 'flow' takes loss_weighting 'none' (min-SNR weights "
                             "a diffusion's noise levels, not a flow's times)")
        self.loss_weighting = _check_choice("loss_weighting", loss_weighting, LOSS_WEIGHTINGS)
        self.min_snr_gamma = min_snr_gamma
        self.image_size, self.n_channels, self.num_classes = image_size, n_channels, num_classes
        self.timesteps, self.cond_drop_prob = timesteps, cond_drop_prob
        # How `sample` draws when not told otherwise (snapshots, grids, evaluation).
        self.sampler, self.sample_steps, self.eta = sampler, sample_steps, eta
        self.guidance_scale = guidance_scale
        self._check_guidance(guidance_scale)
        self.timestep_sequence(sampler, None)  # fails now, not at the first snapshot
        self.unet = UNet(n_channels, base_channels, list(channel_mults), num_res_blocks,
                         num_classes, dropout)

        # The schedule is host maths (read back below): on the CPU whatever the default device,
        # so that building on the meta device (the config check) works too.
        with torch.device("cpu"):
            betas = beta_schedule(schedule, timesteps)  # (T,) float64
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

        def buffer(name: str, value: torch.Tensor):
            # Rebuilt from the config, so kept out of the state dict (and checkpoints).
            self.register_buffer(name, value.float(), persistent=False)

        buffer("betas", betas)
        buffer("alphas_cumprod", alphas_cumprod)
        buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt())
        buffer("sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt())
        buffer("sqrt_recip_alphas_cumprod", (1.0 / alphas_cumprod).sqrt())
        buffer("sqrt_recipm1_alphas_cumprod", (1.0 / alphas_cumprod - 1).sqrt())
        buffer("snr", alphas_cumprod / (1.0 - alphas_cumprod))
        # float64 on the host: DPM-Solver's per-step coefficients without a device sync
        self.alphas_cumprod_host = alphas_cumprod.tolist()
        # The variance is 0 at t = 0; its log is clipped there (that step adds no noise anyway).
        buffer("posterior_log_variance_clipped",
               posterior_variance.clamp(min=posterior_variance[min(1, timesteps - 1)]).log())
        buffer("posterior_mean_coef1",
               betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod))
        buffer("posterior_mean_coef2",
               (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod))

    @property
    def device(self) -> torch.device:
        return self.betas.device

    # -- the forward process q -------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
        return (extract(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean and log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (extract(self.posterior_mean_coef1, t, x_t.ndim) * x0
                + extract(self.posterior_mean_coef2, t, x_t.ndim) * x_t)
        return mean, extract(self.posterior_log_variance_clipped, t, x_t.ndim)

    def predict_x0_from_eps(self, x_t, t, eps):
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
                - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps)

    def predict_eps_from_x0(self, x_t, t, x0):
        return ((extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0)
                / extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = alpha_t eps - sigma_t x_0 (Salimans & Ho 2022, eq. 9)."""
        return (extract(self.sqrt_alphas_cumprod, t, x0.ndim) * noise
                - extract(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0)

    def predict_x0_from_v(self, x_t, t, v):
        """x_0 = alpha_t x_t - sigma_t v: (x_t, v) is a rotation of (x_0, eps) by angle phi_t."""
        return (extract(self.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
                - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * v)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """min-SNR-gamma weight per image, (B,): min(SNR, gamma) / SNR for eps, / (SNR + 1) for v.

        An eps (v) MSE is SNR (SNR + 1) times the x_0 MSE, so both weightings
        give the x_0 loss the weight min(SNR, gamma).
        """
        snr = self.snr[t]
        clipped = snr.clamp(max=self.min_snr_gamma)
        return clipped / snr if self.prediction == "eps" else clipped / (snr + 1)

    # -- training ----------------------------------------------------------------

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The denoising loss, x in [-1, 1]: MSE of the predicted noise (or v) against the true."""
        b = x.shape[0]
        labels = self._check_labels(labels, b)
        if exists(labels) and self.cond_drop_prob > 0:
            drop = torch.rand(b, device=x.device) < self.cond_drop_prob
            labels = labels.masked_fill(drop, self.num_classes)  # index num_classes = null class
        t = torch.randint(0, self.timesteps, (b,), device=x.device)
        # drawn in (B, C, H, W) order, then laid out like x: randn_like fills memory order,
        # which gave a channels_last batch other noise than the same batch laid out plainly
        noise = torch.empty_like(x).copy_(torch.randn(x.shape, device=x.device, dtype=x.dtype))
        if self.prediction == "flow":  # the straight path from x_0 (s = 0) to noise (s = 1)
            s = self.flow_time(t).view(-1, *[1] * (x.ndim - 1))
            return F.mse_loss(self.unet((1 - s) * x + s * noise, t, labels), noise - x)
        out = self.unet(self.q_sample(x, t, noise), t, labels)
        target = noise if self.prediction == "eps" else self.v_target(x, t, noise)
        if self.loss_weighting == "none":
            return F.mse_loss(out, target)
        per_image = F.mse_loss(out, target, reduction="none").flatten(1).mean(1)  # (B,)
        return (self.loss_weight(t) * per_image).mean()

    def _check_labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if self.num_classes == 0:
            return None  # an unconditional model ignores labels
        if labels is None:
            raise ValueError(f"DDPM was built with num_classes={self.num_classes}: pass labels "
                             f"(int64, shape ({n},)), or build it with num_classes=0")
        if labels.shape != (n,):
            raise ValueError(f"DDPM: labels must have shape ({n},), got {tuple(labels.shape)}")
        return labels

    # -- the reverse process p ---------------------------------------------------

    def model_predictions(self, x_t, t, labels, guidance_scale: float):
        """(eps, x0) predicted at (x_t, t); x0 clipped to [-1, 1] and eps made consistent with it.

        Classifier-free guidance: out = out_null + w (out_cond - out_null), both
        halves in one batch; w = 1 is the plain conditional model. It mixes the
        raw output, eps or v alike: for a fixed x_t both are affine in eps, so
        mixing v is mixing eps.
        """
        out = self.guided_output(x_t, t, labels, guidance_scale)
        if self.prediction == "eps":
            x0 = self.predict_x0_from_eps(x_t, t, out)
        else:
            x0 = self.predict_x0_from_v(x_t, t, out)
        x0 = x0.clamp(-1.0, 1.0)
        return self.predict_eps_from_x0(x_t, t, x0), x0

    def guided_output(self, x_t, t, labels, guidance_scale: float) -> torch.Tensor:
        """The UNet's output at (x_t, t), mixed with the null class's by `guidance_scale`."""
        if exists(labels) and guidance_scale != 1.0:
            null = torch.full_like(labels, self.num_classes)
            out_cond, out_null = self.unet(
                torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null])
            ).chunk(2)
            return out_null + guidance_scale * (out_cond - out_null)
        return self.unet(x_t, t, labels)

    def flow_time(self, t: torch.Tensor | int) -> torch.Tensor | float:
        """Rectified flow's time s in (0, 1] of timestep index t; index -1 ("done") is 0."""
        return (t + 1) / self.timesteps

    def euler_step(self, x_t, t: int, t_prev: int, labels, guidance_scale: float):
        """x_s -> x_{s_prev} along the predicted velocity (x_s = (1 - s) x_0 + s eps, whose
        velocity is eps - x_0): one Euler step of the flow's ODE (Liu et al. 2022)."""
        tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        velocity = self.guided_output(x_t, tt, labels, guidance_scale)
        return x_t + (self.flow_time(t_prev) - self.flow_time(t)) * velocity

    def p_sample(self, x_t, t: int, labels, guidance_scale: float, generator=None):
        """One ancestral step x_t -> x_{t-1} ~ p(x_{t-1} | x_t) = q(x_{t-1} | x_t, x0_hat)."""
        tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        _, x0 = self.model_predictions(x_t, tt, labels, guidance_scale)
        mean, log_var = self.q_posterior(x0, x_t, tt)
        if t == 0:
            return mean  # the last step returns the mean: x0_hat itself
        return mean + (0.5 * log_var).exp() * self._randn(x_t.shape, generator)

    def ddim_step(self, x_t, t: int, t_prev: int, labels, guidance_scale: float, eta: float,
                  generator=None):
        """x_t -> x_{t_prev} (t_prev < t; -1 means "return x0"). eta = 0: deterministic DDIM;
        eta = 1 with t_prev = t - 1 is exactly the ancestral DDPM step."""
        tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        eps, x0 = self.model_predictions(x_t, tt, labels, guidance_scale)
        if t_prev < 0:
            return x0
        abar, abar_prev = self.alphas_cumprod[t], self.alphas_cumprod[t_prev]
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
        x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).sqrt() * eps
        if eta > 0:
            x_prev = x_prev + sigma * self._randn(x_t.shape, generator)
        return x_prev

    def dpm_solver_step(self, x_t, t: int, t_prev: int, labels, guidance_scale: float,
                        previous: tuple[torch.Tensor, int] | None = None):
        """x_t -> x_{t_prev} by DPM-Solver++(2M); returns (x_{t_prev}, (x0_hat, t)) for the next.

        Lu et al. 2022, "DPM-Solver++", Algorithm 2 (as diffusers'
        DPMSolverMultistepScheduler with solver_order=2, the midpoint variant):
        the probability-flow ODE solved exactly in its linear part, with the
        data prediction x0_hat extrapolated linearly in lambda from the
        previous step's. The first step (no `previous`) is first order, which
        is DDIM's step; t_prev = -1 (sigma = 0) returns x0_hat, a first-order
        final step, as diffusers' final_sigmas_type="zero".
        """
        tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        _, x0 = self.model_predictions(x_t, tt, labels, guidance_scale)
        if t_prev < 0:
            return x0, (x0, t)
        alpha_prev, sigma_prev, lam_prev = self._alpha_sigma_lambda(t_prev)
        _, sigma, lam = self._alpha_sigma_lambda(t)
        h = lam_prev - lam  # > 0: the step in log-SNR / 2
        d = x0
        if exists(previous):  # second order: D = x0 + (x0 - x0_last) / (2 r), r = h_last / h
            x0_last, s = previous
            r = (lam - self._alpha_sigma_lambda(s)[2]) / h
            d = x0 + (x0 - x0_last) * (0.5 / r)
        x_prev = (sigma_prev / sigma) * x_t - (alpha_prev * math.expm1(-h)) * d
        return x_prev, (x0, t)

    def _alpha_sigma_lambda(self, t: int) -> tuple[float, float, float]:
        """alpha_t, sigma_t, lambda_t at one timestep, in float64 (lambda spans ~20 units)."""
        abar = self.alphas_cumprod_host[t]
        return math.sqrt(abar), math.sqrt(1.0 - abar), 0.5 * (math.log(abar) - math.log1p(-abar))

    def _randn(self, shape, generator: torch.Generator | None) -> torch.Tensor:
        # Drawn on the generator's device, so a CPU generator reproduces the same images on a GPU.
        where = generator.device if exists(generator) else self.device
        return torch.randn(shape, generator=generator, device=where).to(self.device)

    def timestep_sequence(self, sampler: str, steps: int | None,
                          spacing: str | None = None) -> list[int]:
        """The timesteps a sampler visits, from T - 1 down to -1 ("done"): steps + 1 entries.

        "ddpm" walks all `timesteps`; "ddim", "dpm++2m" and "euler" (a flow's) take `steps` of them
        (default: the model's `sample_steps`, at most `timesteps`), spaced by
        `spacing`: "uniform" in t, or "quadratic" (t + 1 = T (i / steps)^2),
        denser at low noise where a few-step solver makes its largest error
        (the DDIM paper's choice for CIFAR-10; DPM-Solver's authors recommend
        steps denser at low noise for small images too). Default: "quadratic"
        for "dpm++2m", "uniform" for "ddim" and "euler".
        """
        if exists(spacing):
            _check_choice("spacing", spacing, SPACINGS)
        if (sampler == "euler") != (self.prediction == "flow"):
            raise ValueError(f"DDPM: sampler {sampler!r} cannot sample a model trained with "
                             f"prediction={self.prediction!r}: a rectified flow ('flow') "
                             "samples with 'euler', and 'euler' samples only a flow")
        if sampler == "ddpm":
            if default(steps, self.timesteps) != self.timesteps:
                raise ValueError(
                    f"DDPM: the ancestral sampler takes all {self.timesteps} steps, got "
                    f"steps={steps}; for fewer, use sampler='dpm++2m' or 'ddim' (eta=1.0 "
                    f"makes DDIM stochastic)")
            return list(range(self.timesteps - 1, -2, -1))
        if sampler in ("ddim", "dpm++2m", "euler"):
            steps = default(steps, min(self.sample_steps, self.timesteps))
            if not 1 <= steps <= self.timesteps:
                raise ValueError(f"DDPM: steps must be in [1, {self.timesteps}], got {steps}")
            spacing = default(spacing, "quadratic" if sampler == "dpm++2m" else "uniform")
            if spacing == "uniform":
                # on the CPU whatever the default device: the list is read back at once, and the
                # config check builds models on the meta device, which holds no values
                times = torch.linspace(-1, self.timesteps - 1, steps + 1,
                                       device="cpu").round().long()
            else:
                i = torch.arange(steps + 1, device="cpu")
                times = (self.timesteps * (i.double() / steps) ** 2 - 1).round().long()
                # Rounding merges the smallest ones: push them apart, keeping `steps` distinct.
                times = i + (times - i).cummax(0).values
            return times.flip(0).tolist()
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")

    @torch.inference_mode()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        spacing: str | None = None,
    ):
        """n images in [-1, 1], shape (n, C, H, W).

        sampler, steps, eta, guidance_scale: default to the model's
        `sampler`, `sample_steps`, `eta` and `guidance_scale`. sampler: "ddpm"
        (ancestral, all timesteps), "ddim" or "dpm++2m" (DPM-Solver++(2M), an
        ODE solver, second order: for few steps); "euler" for a flow model, and only
        for one. eta is DDIM's
        noise: 0 is deterministic, 1 the ancestral (DDPM) posterior; a short
        training gives cleaner images at 1, as noise corrects earlier errors
        that the deterministic path carries to the end. "dpm++2m" is
        deterministic: it ignores the model's eta and refuses an eta > 0 passed
        here. labels default to 0, 1, 2, ... cycling
        over the classes. noise: the starting x_T (fixed-noise snapshots).
        generator: every random draw, so a seed fixes the images.
        With return_trajectory, also returns x_t before every step and the
        final images, (steps + 1, n, C, H, W) on the CPU. spacing: how the
        steps are spread over t ("uniform" or "quadratic"; see
        `timestep_sequence`), by default the sampler's own.
        """
        sampler = default(sampler, self.sampler)
        if sampler in ("dpm++2m", "euler") and eta not in (None, 0.0):
            raise ValueError(f"DDPM: sampler {sampler!r} is deterministic (an ODE solver), got "
                             f"eta={eta}; leave eta unset, or use sampler='ddim' for eta > 0")
        guidance_scale = default(guidance_scale, self.guidance_scale)
        eta = _check_eta(default(eta, self.eta))
        times = self.timestep_sequence(sampler, steps, spacing)
        self._check_guidance(guidance_scale)
        if self.num_classes > 0:
            labels = default(labels, torch.arange(n) % self.num_classes).to(self.device)
        labels = self._check_labels(labels, n)

        shape = (n, self.n_channels, self.image_size, self.image_size)
        x = noise.to(self.device) if exists(noise) else self._randn(shape, generator)
        trajectory = [x.cpu()] if return_trajectory else []
        previous = None  # DPM-Solver++: the last step's x0 prediction and timestep
        for t, t_prev in zip(times[:-1], times[1:], strict=True):
            if sampler == "ddpm":
                x = self.p_sample(x, t, labels, guidance_scale, generator)
            elif sampler == "ddim":
                x = self.ddim_step(x, t, t_prev, labels, guidance_scale, eta, generator)
            elif sampler == "euler":
                x = self.euler_step(x, t, t_prev, labels, guidance_scale)
            else:
                x, previous = self.dpm_solver_step(x, t, t_prev, labels, guidance_scale,
                                                   previous)
            if return_trajectory:
                trajectory.append(x.cpu())
        x = x.clamp(-1.0, 1.0)  # the ancestral mean at t = 0 can overshoot by rounding
        if return_trajectory:
            return x, torch.stack(trajectory)
        return x

    def _check_guidance(self, guidance_scale: float) -> None:
        if guidance_scale != 1.0 and (self.num_classes == 0 or self.cond_drop_prob == 0):
            raise ValueError(
                f"DDPM: guidance_scale={guidance_scale} needs a class-conditional model trained "
                f"with cond_drop_prob > 0 (this one has num_classes={self.num_classes}, "
                f"cond_drop_prob={self.cond_drop_prob}); use guidance_scale=1.0")
