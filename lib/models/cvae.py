"""Class-conditional VAE (Kingma & Welling 2014; Sohn et al. 2015) for small images.

Encoder: stride-2 convolutions (4/2/1 -> GroupNorm -> LeakyReLU) halve the image
until it is 4x4 (32, 64 px) or odd (28 px stops at 7x7), then one linear layer
gives the posterior's mean and log-variance. Decoder: the mirror image, from a
linear projection of [z, class embedding] through transposed convolutions to a
Tanh, so images live in [-1, 1] like every model of the project. With
`label_every_stage` (the default) the class embedding is also concatenated, as
constant channels, to the input of every transposed convolution: a label seen
only once, beside a large z, is a signal the decoder learns to ignore (measured on
shapes with a 128-d latent: every class row of the grid showed the same image).

The loss is the negative ELBO with a weight on the KL term, and both terms are
reduced the same way - summed over their elements (pixels, latent dimensions),
averaged over the batch - so `loss`, `recon` and `kl` are "per image" numbers
that do not change with the batch size or with how the batch is split.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

RECON_LOSSES = ("mse", "bce")


def _num_stages(image_size: int) -> int:
    """Halvings from image_size down to 4x4, or to the first odd size (28 -> 14 -> 7)."""
    if image_size < 8 or image_size % 2:
        raise ValueError(f"CVAE needs an even image_size >= 8 (e.g. 28, 32 or 64), got "
                         f"{image_size}; set data.image_size accordingly")
    stages, size = 0, image_size
    while size % 2 == 0 and size > 4:
        size //= 2
        stages += 1
    return stages


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm rather than BatchNorm: statistics per image, so the network computes the
    # same function in train and eval mode and for any batch size, and a rescaled loss
    # cannot interact with batch statistics (the course project's BatchNorm instability).
    return nn.GroupNorm(math.gcd(8, channels), channels)


class CVAE(nn.Module):
    def __init__(self, image_size: int = 32, n_channels: int = 1, num_classes: int = 10,
                 latent_dim: int = 32, hidden_dim: int = 32, embed_dim: int = 16,
                 recon_loss: str = "mse", kl_weight: float = 1.0,
                 kl_warmup_steps: int = 0, label_every_stage: bool = True):
        super().__init__()
        if num_classes < 1:
            raise ValueError("CVAE needs labelled data (num_classes >= 1); choose a dataset "
                             "with classes (digits, shapes, mnist, artbench) or class folders")
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss={recon_loss!r}; valid choices: {', '.join(RECON_LOSSES)}")
        if kl_weight < 0 or kl_warmup_steps < 0:
            raise ValueError(f"kl_weight ({kl_weight}) and kl_warmup_steps ({kl_warmup_steps}) "
                             "must be >= 0")
        self.image_size, self.n_channels, self.num_classes = image_size, n_channels, num_classes
        self.latent_dim, self.recon_loss = latent_dim, recon_loss
        self.label_every_stage = label_every_stage
        # kl_weight 1.0: both terms are per-image sums, so 1 is the exact ELBO (BCE) or a
        # Gaussian decoder's of variance 1/2 (MSE); why and what was measured: docs/quality.md
        self.kl_weight, self.kl_warmup_steps = kl_weight, kl_warmup_steps

        stages = _num_stages(image_size)
        self.bottom = image_size >> stages  # 4 for 32/64 px, 7 for 28 px
        # One learned class embedding serves both networks. The encoder gets it broadcast
        # as extra input channels, so every convolution can separate "what class" from
        # "how it is drawn" and z is free to carry only the latter; the decoder gets it
        # concatenated to z, and (label_every_stage) as extra channels at every resolution.
        self.embed = nn.Embedding(num_classes, embed_dim)

        widths = [hidden_dim * 2**i for i in range(stages)]  # e.g. 32, 64, 128
        layers, c_in = [], n_channels + embed_dim
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 4, 2, 1), _norm(w), nn.LeakyReLU(0.2, True)]
            c_in = w
        self.encoder = nn.Sequential(*layers)
        flat = widths[-1] * self.bottom**2
        self.to_stats = nn.Linear(flat, 2 * latent_dim)  # -> (mu, logvar)

        self.from_latent = nn.Linear(latent_dim + embed_dim, flat)
        extra = embed_dim if label_every_stage else 0  # label channels into each ConvT
        layers = []
        for w_in, w_out in zip(widths[::-1], widths[-2::-1], strict=False):
            layers += [nn.ConvTranspose2d(w_in + extra, w_out, 4, 2, 1), _norm(w_out),
                       nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[0] + extra, n_channels, 4, 2, 1)]
        self.decoder = nn.Sequential(*layers)

    # -- the two halves -------------------------------------------------------------

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) in [-1, 1], (B,) int64 -> posterior mean and log-variance, (B, latent)."""
        b, _, h, w = x.shape
        e = self.embed(labels)[:, :, None, None].expand(b, -1, h, w)  # (B, E, H, W)
        feats = self.encoder(torch.cat([x, e.to(x.dtype)], 1))  # (B, width, bottom, bottom)
        mu, logvar = self.to_stats(feats.flatten(1)).chunk(2, dim=1)
        return mu, logvar

    def _decode_raw(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Pre-Tanh decoder output, (B, C, H, W); the BCE loss reads logits from it."""
        e = self.embed(labels).to(z.dtype)  # (B, E)
        h = self.from_latent(torch.cat([z, e], 1))
        h = h.view(z.shape[0], -1, self.bottom, self.bottom)  # (B, width, bottom, bottom)
        for layer in self.decoder:
            if self.label_every_stage and isinstance(layer, nn.ConvTranspose2d):
                e_map = e[:, :, None, None].expand(-1, -1, *h.shape[-2:])  # (B, E, h, w)
                h = torch.cat([h, e_map], 1)
            h = layer(h)
        return h

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, latent), (B,) int64 -> images (B, C, H, W) in [-1, 1]."""
        return torch.tanh(self._decode_raw(z, labels))

    # -- training ---------------------------------------------------------------------

    def kl_weight_at(self, step: int) -> float:
        """The KL weight at a training step: linear warm-up from 0 over kl_warmup_steps."""
        if self.kl_warmup_steps <= 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, max(step, 0) / self.kl_warmup_steps)

    def recon_error(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-image reconstruction loss (B,), summed over pixels and channels."""
        raw, x = raw.float(), x.float()
        if self.recon_loss == "mse":
            err = (torch.tanh(raw) - x).square()
        else:
            # tanh(r) = 2 sigmoid(2r) - 1, so 2r are exactly the logits of the decoded image
            # mapped to [0, 1]: BCE stays stable (with logits) and matches `decode`.
            err = F.binary_cross_entropy_with_logits(2 * raw, (x + 1) / 2, reduction="none")
        return err.flatten(1).sum(1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor,
                kl_weight: float | None = None) -> dict[str, torch.Tensor]:
        """Negative ELBO terms for a batch of [-1, 1] images and their class labels.

        Reduction (the same for both terms, so one number means one thing):
        - `recon`: MSE or BCE summed over channels and pixels, averaged over the batch;
        - `kl`: KL(q(z|x,y) || N(0, I)) summed over latent dims, averaged over the batch;
        - `loss` = recon + kl_weight * kl  (kl_weight defaults to self.kl_weight).
        """
        w = self.kl_weight if kl_weight is None else kl_weight
        mu, logvar = self.encode(x, labels)
        mu, logvar = mu.float(), logvar.float()
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterisation trick
        raw = self._decode_raw(z, labels)
        recon = self.recon_error(raw, x).mean()
        kl = (0.5 * (mu.square() + logvar.exp() - 1 - logvar)).sum(1).mean()
        return {"loss": recon + w * kl, "recon": recon, "kl": kl}

    # -- using a trained model ----------------------------------------------------------

    def _device(self) -> torch.device:
        return self.embed.weight.device

    @torch.inference_mode()
    def sample(self, labels: torch.Tensor, z: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images of the given classes (B,) from prior noise z (B, latent) -> (B, C, H, W).

        z is drawn from N(0, I) with `generator` (a CPU generator) when not given.
        """
        labels = labels.to(self._device())
        if z is None:
            z = torch.randn(len(labels), self.latent_dim, generator=generator)
        return self.decode(z.to(self._device(), torch.float32), labels)

    @torch.inference_mode()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: (B, C, H, W) in [-1, 1] -> (B, C, H, W) in [-1, 1]."""
        mu, _ = self.encode(x.to(self._device()), labels.to(self._device()))
        return self.decode(mu, labels.to(self._device()))
