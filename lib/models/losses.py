"""GAN losses on D's logits, as small pure functions.

"bce": the reference DCGAN's (Goodfellow et al. 2014, non-saturating form):
D minimises -log D(x) - log(1 - D(G(z))), G minimises -log D(G(z)), with
D = sigmoid(logits) folded into BCE-with-logits (no saturating log(sigmoid)).
"hinge": the SN-GAN / BigGAN loss (Lim & Ye 2017, Miyato et al. 2018):
D minimises relu(1 - D(x)) + relu(1 + D(G(z))), G minimises -D(G(z)) on raw logits.
Each term is a mean over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_LOSSES = ("bce", "hinge")


def _unknown(kind: str) -> ValueError:
    return ValueError(f"unknown GAN loss {kind!r}; choose one of {list(GAN_LOSSES)}")


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's loss from its logits on a real and a fake batch, (B,) each -> a scalar."""
    if kind == "bce":
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    raise _unknown(kind)


def g_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """G's loss from D's logits on its fakes, (B,) -> a scalar."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if kind == "hinge":
        return -fake_logits.mean()
    raise _unknown(kind)
