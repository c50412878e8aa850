"""Scores on features and pixels: FID (exact, float64), diversity, SSIM, nearest real image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lib.data import to_unit

DIVERSITY_MAX = 2000  # pairwise distances are O(N^2): a mean over 2,000 samples is plenty


class MetricsError(ValueError):
    """Evaluation cannot run as asked; the message says what to do."""



# ---------------------------------------------------------------------------
# Scores on features (FID and KID in float64)


class ReferenceStats:
    """The real side of FID, held once in float64; `fid(fake)` is exact and cheap.

    FID's trace term tr sqrt(S_r S_f) is a sum of square roots of eigenvalues
    of S_r S_f; with A, B the centred real (m, D) and fake (n, D) features those
    are the singular values of A B^T / sqrt((m-1)(n-1)) when m, n <= D, else of
    B S_r^(1/2) / sqrt(n-1). At D = 2048 either takes a fraction of a second,
    where the general eigenvalues of S_r S_f (torchmetrics, scipy's sqrtm) take
    ~10 s on a CPU, for every bootstrap replicate.
    """

    def __init__(self, real: torch.Tensor):
        f = real.double()
        self.mu = f.mean(0)
        self.centred = f - self.mu  # (m, D)
        self.m = max(1, len(f) - 1)  # unbiased covariances, as torchmetrics and numpy
        self.trace = self.centred.square().sum() / self.m
        self._sqrt_sigma: torch.Tensor | None = None

    def sqrt_sigma(self) -> torch.Tensor:
        if self._sqrt_sigma is None:  # (D, D): only for more samples than dimensions
            sigma = self.centred.T @ self.centred / self.m
            eigenvalues, vectors = torch.linalg.eigh(sigma)
            self._sqrt_sigma = (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T
        return self._sqrt_sigma

    def fid(self, fake: torch.Tensor) -> float:
        f = fake.double()
        mu = f.mean(0)
        centred = f - mu  # (n, D)
        n = max(1, len(f) - 1)
        if max(len(f), len(self.centred)) <= f.shape[1]:
            cross = self.centred @ centred.T / math.sqrt(self.m * n)  # (m, n)
        else:
            cross = centred @ self.sqrt_sigma() / math.sqrt(n)  # (n, D)
        return float((self.mu - mu).square().sum() + self.trace + centred.square().sum() / n
                     - 2 * torch.linalg.svdvals(cross).sum())


def fid_with_interval(reference: ReferenceStats, fake: torch.Tensor, bootstrap: int,
                      seed: int) -> tuple[float, float]:
    """FID of `fake` against `reference`, and its bootstrap std.

    Resampling with replacement biases FID upward, so only the spread of the
    replicates is used: the interval is centred on the estimate.
    """
    gen = torch.Generator().manual_seed(seed)
    replicates = [reference.fid(fake[torch.randint(len(fake), (len(fake),), generator=gen)])
                  for _ in range(bootstrap)]
    std = torch.tensor(replicates).std().item() if len(replicates) > 1 else float("nan")
    return reference.fid(fake), std


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 50, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 with the cubic
    kernel (x.y / D + 1)^3, over `subsets` random subsets of each side; (mean, std).

    torchmetrics' KID, written out: its import alone took ~5 s per process, and its
    subsets come from the global RNG; these from `seed`.
    """
    gen = torch.Generator().manual_seed(seed)
    m = min(subset_size, len(real), len(fake))
    scores = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=gen)[:m]].double()
        y = fake[torch.randperm(len(fake), generator=gen)[:m]].double()
        k_xx, k_yy, k_xy = ((a @ b.T / a.shape[1] + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum())
        scores.append(within / (m * (m - 1)) - 2 * k_xy.sum() / m**2)
    scores = torch.stack(scores)
    return scores.mean().item(), scores.std(unbiased=False).item()


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets (N, D)."""
    return ReferenceStats(real).fid(fake)


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean Euclidean distance between distinct rows of (N, D) features (first 2,000 rows)."""
    f = features[:DIVERSITY_MAX].double()
    n = len(f)
    if n < 2:
        return float("nan")
    # the exact (not matmul-based) form: duplicates give 0, never sqrt of a tiny negative
    dist = torch.cdist(f, f, compute_mode="donot_use_mm_for_euclid_dist")  # (n, n), zero diagonal
    return float(dist.sum() / (n * (n - 1)))


# a channel flatter than this (in [0, 1] units) is standardised by this instead of its std
FLAT_CHANNEL_STD = 0.02


def label_sensitivity(grid: torch.Tensor) -> float:
    """How much a conditional generator's output follows its label, z held fixed, in
    structure: what a label does to a channel's brightness or contrast alone (a tint) counts
    for nothing.

    `grid` (K, M, C, H, W) uint8: the decodes of M fixed noise vectors under each of K
    labels. Each image's channels are standardised (mean 0, std 1); then the mean distance
    between decodes of one z under different labels, over the mean distance between decodes
    of different z under one label: ~0 when the label is ignored or only tints the image,
    ~1 when changing the label moves an image as far as changing its noise does, and above
    1 when the label decides more than the noise.
    """
    k, m = grid.shape[:2]
    if k < 2 or m < 2:
        raise MetricsError(f"label sensitivity needs >= 2 labels and >= 2 noise vectors, "
                           f"got a grid of {k} x {m}")
    x = to_unit(grid).double()  # (K, M, C, H, W) in [0, 1]
    mean, std = x.mean(dim=(-2, -1), keepdim=True), x.std(dim=(-2, -1), keepdim=True)
    shapes = ((x - mean) / std.clamp(min=FLAT_CHANNEL_STD)).flatten(2)  # (K, M, C*H*W)
    across_labels = sum(mean_pairwise_distance(shapes[:, j]) for j in range(m)) / m
    across_noise = sum(mean_pairwise_distance(shapes[i]) for i in range(k)) / k
    if across_noise == 0:  # the noise moves nothing: the label is all there is (or nothing)
        return math.inf if across_labels > 0 else 0.0
    return across_labels / across_noise


def ssim(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of (N, C, H, W) images in [0, 1], as torchmetrics
    computes it: an 11x11 Gaussian window (sigma 1.5) over the reflect-padded image,
    K1 = 0.01, K2 = 0.03, the mean over every pixel. Written out: torchmetrics' import
    cost ~5 s a process."""
    c, size = x.shape[1], int(3.5 * sigma + 0.5) * 2 + 1
    d = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(d / sigma) ** 2 / 2)
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(c, 1, size, size).to(x.dtype)
    pad = [(size - 1) // 2] * 4
    x, y = F.pad(x, pad, mode="reflect"), F.pad(y, pad, mode="reflect")
    mu_x, mu_y, xx, yy, xy = (F.conv2d(t, window, groups=c)
                              for t in (x, y, x * x, y * y, x * y))
    var_x, var_y = (xx - mu_x**2).clamp(min=0), (yy - mu_y**2).clamp(min=0)
    cov = xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
         / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
    return s.flatten(1).mean(1)


def ssim_pairs(a: torch.Tensor, b: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """Per-image SSIM of two uint8 (N, C, H, W) batches, in [0, 1] with data_range=1.0."""
    if a.shape != b.shape:
        raise MetricsError(f"SSIM needs batches of one shape, got {tuple(a.shape)} "
                           f"and {tuple(b.shape)}")
    return torch.cat([ssim(to_unit(x), to_unit(y))
                      for x, y in zip(a.split(chunk), b.split(chunk), strict=True)])  # (N,)


def nearest_real(fake: torch.Tensor, real: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Index of each fake image's nearest real image in pixel space (L2 on [0, 1] pixels)."""
    real_flat = to_unit(real).flatten(1)  # (M, C*H*W)
    out = []
    for x in fake.split(chunk):
        dist = torch.cdist(to_unit(x).flatten(1), real_flat)  # (chunk, M)
        out.append(dist.argmin(1))
    return torch.cat(out)  # (N,)
