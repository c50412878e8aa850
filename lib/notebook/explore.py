"""The maths behind latent exploration, and the static grids drawn with it.

Everything here is plain PyTorch and returns uint8 (3, H, W) grids, so the
same functions drive the sliders of `lib.notebook.widgets` and the static figures of
a headless notebook run.

- `slerp`: spherical interpolation. Gaussian latents live near a sphere of
  radius sqrt(latent_dim); a straight line between two of them cuts through
  the low-density middle, an arc stays where the generator was trained.
- `ganspace_directions` (Härkönen et al. 2020, "GANSpace"): PCA of the
  generator's early activations over random latents, carried back to latent
  space by linear regression - directions that change something visible,
  where raw z coordinates mostly do not.
- `posterior_directions`: PCA of a CVAE's posterior means over real data:
  the directions along which the data actually varies within the latent space.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lib.core import viz
from lib.data import to_float
from lib.families.base import chunked, device_of, eval_mode

NONLINEARITIES = (nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Tanh)


@dataclass
class Directions:
    """Unit directions in latent space and the step that moves one "sigma" along each."""

    vectors: torch.Tensor  # (K, latent_dim), unit length
    scales: torch.Tensor  # (K,) latent distance of one slider unit
    explained: torch.Tensor  # (K,) fraction of the variance each component explains

    def __len__(self) -> int:
        return len(self.vectors)

    def offset(self, amounts: Sequence[float]) -> torch.Tensor:
        """Slider positions (in sigmas, one per direction or fewer) -> (latent_dim,) offset."""
        a = torch.zeros(len(self))
        a[: len(amounts)] = torch.as_tensor(list(amounts), dtype=torch.float32)
        return (a * self.scales) @ self.vectors

    def label(self, i: int) -> str:
        return f"PC{i + 1} ({100 * float(self.explained[i]):.0f}%)"


# ---------------------------------------------------------------------------
# Plain maths


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from a (t=0) to b (t=1) along the last dimension.

    Norms are interpolated linearly and directions along the great circle; nearly
    parallel vectors fall back to a straight line (the arc is one there).
    """
    t = torch.as_tensor(t, dtype=a.dtype)
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    arc = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / sin.clamp_min(1e-12)
    direction = torch.where(sin > 1e-6, arc, (1 - t) * ua + t * ub)
    return direction * ((1 - t) * na + t * nb)


def pca(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, D) samples -> top-k components (k, D) as unit rows, the data's std along each
    (k,) and the fraction of the variance each explains (k,).

    Each component's sign is fixed (largest entry positive) so that sliders mean the same
    thing on every machine.
    """
    xc = x.float() - x.float().mean(0)
    n, d = xc.shape
    # Eigen-decompose the smaller of the two Gram matrices, (D, D) or (N, N): for 500
    # activations of 8192 features that is 500 x 500 (products in float32, eigh in float64).
    if d <= n:
        var, vecs = torch.linalg.eigh((xc.T @ xc).double())  # ascending; vecs: (D, D) columns
        comps = vecs.flip(1).T.float()
    else:
        var, vecs = torch.linalg.eigh((xc @ xc.T).double())  # (N, N)
        comps = vecs.flip(1).T.float() @ xc  # right singular vectors, up to their norm
        comps = comps / comps.norm(dim=1, keepdim=True).clamp_min(1e-12)
    var = var.flip(0).clamp_min(0) / max(n - 1, 1)
    k = min(k, n, d)
    comps = comps[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * signs
    return comps, var[:k].sqrt().float(), (var[:k] / var.sum().clamp_min(1e-12)).float()


@contextlib.contextmanager
def interactive_threads(model: nn.Module) -> Iterator[None]:
    """One torch thread while a CPU model renders for a slider, the previous count after.

    These batches are a few images: a second thread gains little and, on a busy 2-core
    machine, waits for the first (DCGAN-64: 15 ms an update with one, 66-85 ms with two).
    """
    if device_of(model).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def seed_latent(seed: int, latent_dim: int, n: int | None = None) -> torch.Tensor:
    """The latent(s) a seed stands for: N(0, I), (latent_dim,) or (n, latent_dim), on the CPU."""
    g = torch.Generator().manual_seed(int(seed))
    shape = (latent_dim,) if n is None else (n, latent_dim)
    return torch.randn(shape, generator=g)


# ---------------------------------------------------------------------------
# GANSpace for generators


class _Stop(Exception):
    """Raised by the activation hook: the rest of the generator need not run."""


def early_layer(generator: nn.Module) -> nn.Module:
    """The first nonlinearity: its output is the generator's first feature map."""
    for module in generator.modules():
        if isinstance(module, NONLINEARITIES):
            return module
    raise ValueError(f"{type(generator).__name__} has no nonlinearity ({NONLINEARITIES}); "
                     "pass layer= explicitly to ganspace_directions")


@torch.inference_mode()
def early_activations(generator: nn.Module, z: torch.Tensor,
                      layer: nn.Module | None = None) -> torch.Tensor:
    """(N, latent) -> (N, D) flattened output of `layer` (default: `early_layer`)."""
    layer = layer or early_layer(generator)
    captured = []

    def hook(_module, _inputs, output):
        captured.append(output.flatten(1).float().cpu())
        raise _Stop

    def features(chunk: torch.Tensor) -> torch.Tensor:
        try:
            generator(chunk.to(device_of(generator)))
        except _Stop:
            return captured.pop()
        raise ValueError(f"layer {layer} did not run in {type(generator).__name__}.forward")

    handle = layer.register_forward_hook(hook)
    try:
        return chunked(features, z)
    finally:
        handle.remove()


def ganspace_directions(generator: nn.Module, n_components: int = 8, n_samples: int = 500,
                        seed: int = 0, layer: nn.Module | None = None) -> Directions:
    """GANSpace: PCA of early activations, regressed back onto the latents that caused them.

    With activations y_j = f(z_j), their PCA coordinates x_j, the latent directions are the
    columns of U = argmin sum_j ||U x_j - z_j||^2, each normalised to unit length. One
    slider unit moves the activations by one standard deviation of that component, as
    measured by a finite step through the generator (not assumed from the fit).
    n_samples: the N x N Gram matrix and its eigendecomposition grow as N^2 and N^3 and were
    most of an explorer's build (DCGAN-64 on a busy 2-core machine: 2.4 s at 1,000, 0.13 s
    at 300); 500 keep the build short and the leading components stable.
    """
    latent_dim = generator.latent_dim
    z = seed_latent(seed, latent_dim, n_samples)  # (N, latent)
    with eval_mode(generator):
        y = early_activations(generator, z, layer)  # (N, D)
        comps, std, explained = pca(y, n_components)
        coords = (y - y.mean(0)) @ comps.T  # (N, K)
        zc = (z - z.mean(0)).double()
        u = torch.linalg.lstsq(coords.double(), zc).solution.float()  # (K, latent)
        vectors = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
        probe = z[:256]
        y0 = y[: len(probe)]
        # activation change along component k per unit of latent distance along direction k
        gain = torch.stack([((early_activations(generator, probe + v, layer) - y0) @ c).mean()
                            for v, c in zip(vectors, comps, strict=True)]).abs()
    return Directions(vectors, std / gain.clamp_min(1e-6 * float(std.max())), explained)


@torch.inference_mode()
def generate(generator: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """(B, latent) -> (B, C, H, W) in [-1, 1] on the CPU, the generator in eval mode."""
    with eval_mode(generator):
        return generator(z.to(device_of(generator))).float().cpu()


def latent_point(latent_dim: int, seed_a: int, seed_b: int, t: float,
                 directions: Directions | None = None,
                 amounts: Sequence[float] = ()) -> torch.Tensor:
    """What a latent explorer shows: slerp(seed_a, seed_b, t) moved along the directions."""
    z = slerp(seed_latent(seed_a, latent_dim), seed_latent(seed_b, latent_dim), t)
    if directions is not None and len(amounts):
        z = z + directions.offset(amounts)
    return z  # (latent_dim,)


def latent_points(latent_dim: int, seed_a: int, seed_b: int, t: float, n: int,
                  directions: Directions | None = None,
                  amounts: Sequence[float] = ()) -> torch.Tensor:
    """n neighbours of `latent_point`: image i walks from seed_a + i to seed_b + i, every one
    moved by the same offset, so a direction is seen acting on several images. (n, latent)"""
    return torch.stack([latent_point(latent_dim, seed_a + i, seed_b + i, t, directions, amounts)
                        for i in range(n)])


def latent_traversal_grid(generator: nn.Module, directions: Directions | None = None,
                          seed: int = 0, n_steps: int = 7, max_sigma: float = 3.0,
                          n_components: int = 5) -> torch.Tensor:
    """One row per direction, columns from -max_sigma to +max_sigma around seed's latent."""
    directions = directions or ganspace_directions(generator, n_components)
    k = min(n_components, len(directions))
    z0 = seed_latent(seed, generator.latent_dim)
    steps = torch.linspace(-max_sigma, max_sigma, n_steps)
    z = torch.stack([z0 + s * directions.scales[i] * directions.vectors[i]
                     for i in range(k) for s in steps])  # (k * n_steps, latent)
    return viz.make_grid(generate(generator, z), nrow=n_steps)


def interpolation_grid(generator: nn.Module, seed_a: int = 0, seed_b: int = 1,
                       n_steps: int = 8) -> torch.Tensor:
    """One row: slerp from seed_a's image to seed_b's."""
    za, zb = seed_latent(seed_a, generator.latent_dim), seed_latent(seed_b, generator.latent_dim)
    z = torch.stack([slerp(za, zb, float(t)) for t in torch.linspace(0, 1, n_steps)])
    return viz.make_grid(generate(generator, z), nrow=n_steps)


# ---------------------------------------------------------------------------
# CVAE


@torch.inference_mode()
def posterior_means(cvae: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 512) -> torch.Tensor:
    """Encoder means over a dataset: uint8 or [-1, 1] (N, C, H, W), (N,) -> (N, latent) CPU."""
    device = device_of(cvae)

    def means(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = to_float(x) if x.dtype == torch.uint8 else x
        mu, _ = cvae.encode(x.to(device), y.to(device))
        return mu.float().cpu()

    with eval_mode(cvae):
        return chunked(means, images, labels, size=batch_size)


def posterior_directions(cvae: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         n_components: int = 5, limit: int = 500) -> Directions:
    """PCA of the posterior means over (at most `limit` of) the data; one slider unit is one
    standard deviation of the data along that component.

    Encoding is most of an explorer's build and grows with `limit` (64 px, one thread on a
    busy 2-core machine: 6 s for 500 images, 27 s for 2,000); 500 pin down a few components
    of a 16-32 dimensional latent.
    """
    mu = posterior_means(cvae, images[:limit], labels[:limit])
    comps, std, explained = pca(mu, n_components)
    return Directions(comps, std, explained)


@torch.inference_mode()
def cvae_images(cvae: nn.Module, label: int, z: torch.Tensor,
                directions: Directions | None = None,
                amounts: Sequence[float] = ()) -> torch.Tensor:
    """Decode latents z (B, latent) of one class, moved along the directions -> (B, C, H, W)."""
    if directions is not None and len(amounts):
        z = z + directions.offset(amounts)
    labels = torch.full((len(z),), int(label), dtype=torch.long)
    with eval_mode(cvae):
        return cvae.sample(labels, z=z).float().cpu()


def class_grid(cvae: nn.Module, n_per_class: int = 8, seed: int = 0,
               directions: Directions | None = None,
               amounts: Sequence[float] = ()) -> torch.Tensor:
    """One row per class, the same latents in every column (so a column is one "style")."""
    z = seed_latent(seed, cvae.latent_dim, n_per_class)
    images = torch.cat([cvae_images(cvae, k, z, directions, amounts)
                        for k in range(cvae.num_classes)])
    return viz.make_grid(images, nrow=n_per_class)


def class_traversal_grid(cvae: nn.Module, directions: Directions, label: int = 0,
                         seed: int = 0, n_steps: int = 7, max_sigma: float = 2.0) -> torch.Tensor:
    """One row per direction for one class, columns from -max_sigma to +max_sigma."""
    z0 = seed_latent(seed, cvae.latent_dim)
    steps = torch.linspace(-max_sigma, max_sigma, n_steps)
    z = torch.stack([z0 + s * directions.scales[i] * directions.vectors[i]
                     for i in range(len(directions)) for s in steps])
    return viz.make_grid(cvae_images(cvae, label, z), nrow=n_steps)


# ---------------------------------------------------------------------------
# DDPM


ALL_CLASSES = -1  # a label that cycles over the classes (0, 1, 2, ...)
# The explorers' sampler: DPM-Solver++(2M) at 10 steps scored within 6% of DDIM-50's
# Inception FID on the real cats (docs/quality.md), at a fifth of the network calls.
FAST_SAMPLER, FAST_STEPS = "dpm++2m", 10
# A slider on a CPU starts at 5: a step of the 32 px ddpm_cats UNet takes 75-90 ms of one core,
# so 10 (0.9 s) missed the 0.5 s an update may take. Five solve the same ODE from the same
# noise in coarser steps: the same image, softer; the steps slider adds the detail.
CPU_STEPS = 5


def fast_sampler(model: nn.Module) -> str:
    """DPM-Solver++(2M) for a diffusion model; Euler, its only solver, for a flow model."""
    return "euler" if model.prediction == "flow" else FAST_SAMPLER


def ddpm_images(model: nn.Module, seed: int = 0, n: int = 4, steps: int | None = FAST_STEPS,
                guidance_scale: float = 1.0, label: int | None = None,
                sampler: str | None = None, eta: float | None = None) -> torch.Tensor:
    """Samples from the noise a seed stands for -> (n, C, H, W) in [-1, 1] on the CPU.

    The seed fixes every random draw (x_T and the sampler's noise). label None or
    ALL_CLASSES cycles over the classes of a conditional model. steps: None for samplers
    that take every timestep ("ddpm"); sampler: None for `fast_sampler(model)`; eta: None
    for the model's own.
    """
    labels = None
    if model.num_classes > 0 and label is not None and label != ALL_CLASSES:
        labels = torch.full((n,), int(label), dtype=torch.long)
    with eval_mode(model):
        out = model.sample(n, labels=labels, sampler=sampler or fast_sampler(model),
                           steps=None if steps is None else int(steps), eta=eta,
                           guidance_scale=float(guidance_scale),
                           generator=torch.Generator().manual_seed(int(seed)))
    return out.float().cpu()


def ddpm_grid(model: nn.Module, seed: int = 0, n: int = 8, steps: int = FAST_STEPS,
              guidance_scales: Sequence[float] = (1.0,), label: int | None = None,
              sampler: str | None = None) -> torch.Tensor:
    """One row per guidance scale, the same starting noise in every row."""
    images = torch.cat([ddpm_images(model, seed, n, steps, w, label, sampler)
                        for w in guidance_scales])
    return viz.make_grid(images, nrow=n)


def guidance_grid(model: nn.Module, seed: int = 0, n: int = 8, steps: int = FAST_STEPS,
                  guidance_scales: Sequence[float] = (1.0,),
                  class_names: Sequence[str] | None = None, sampler: str | None = None):
    """`ddpm_grid` with its rows labelled by guidance scale -> a PIL image; the columns of a
    conditional model cycle over the classes (named in the first row's caption)."""
    grid = ddpm_grid(model, seed, n, steps, guidance_scales, sampler=sampler)
    rows = viz.label_rows(grid, [f"guidance {w:g}" for w in guidance_scales], min_width=512)
    if model.num_classes == 0:
        return rows
    names = list(class_names or range(model.num_classes))
    columns = ", ".join(str(names[i % model.num_classes]) for i in range(n))
    return viz.with_caption(rows, f"columns: {columns}", min_width=512)
