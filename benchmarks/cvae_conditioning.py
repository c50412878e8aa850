"""Does a CVAE's sample follow its label? A plain training loop that prints, four times, the
label sensitivity (lib.metrics.label_sensitivity), how often a classifier of the real data
reads a sample as its class, and the mean neighbouring-pixel difference of samples against
the data's (speckle shows as a larger value).

    python benchmarks/cvae_conditioning.py --data shapes --image-size 16 --steps 2000 \\
        latent_dim=128 hidden_dim=16 embed_dim=32 kl_weight=0.5 kl_warmup_steps=5000 \\
        label_every_stage=false

Trailing `name=value` pairs are CVAE arguments (JSON values). One thread: it is sized for
a shared CPU. The numbers quoted in configs and tests came from this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.data import load_dataset, to_float, to_uint8  # noqa: E402
from lib.metrics import label_sensitivity  # noqa: E402
from lib.metrics.classifier import load_classifier  # noqa: E402
from lib.models.cvae import CVAE  # noqa: E402


def speckle(x: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels of [-1, 1] images."""
    return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
                 + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


@torch.inference_mode()
def score(model: CVAE, clf, real: torch.Tensor) -> dict:
    model.eval()
    k, m = model.num_classes, 8
    z = torch.randn(m, model.latent_dim, generator=torch.Generator().manual_seed(1))
    grid = model.sample(torch.arange(k).repeat_interleave(m), z=z.repeat(k, 1))
    labels = torch.arange(400) % k
    samples = model.sample(labels, generator=torch.Generator().manual_seed(2))
    model.train()
    return {"label_sensitivity": label_sensitivity(to_uint8(grid).view(k, m, *grid.shape[1:])),
            "class_read": (clf.logits(to_uint8(samples)).argmax(1) == labels).float().mean().item(),
            "speckle": speckle(samples), "speckle_data": speckle(real[:400])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="data")
    parser.add_argument("args", nargs="*", help="CVAE arguments, name=value")
    a = parser.parse_args()
    kwargs = {k: json.loads(v) for k, v in (item.split("=", 1) for item in a.args)}
    torch.set_num_threads(1)

    data = load_dataset(a.data, a.image_size, root=a.root)
    clf, accuracy, _ = load_classifier(data, Path(a.root) / "cache")
    torch.manual_seed(a.seed)
    model = CVAE(image_size=a.image_size, n_channels=data.channels,
                 num_classes=data.num_classes, **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    x_all, y_all = to_float(data.images), data.labels
    gen = torch.Generator().manual_seed(a.seed)
    print(f"{a.data} {a.image_size}px, classifier held-out accuracy {accuracy:.3f}, {kwargs}")
    t0 = time.time()
    for step in range(1, a.steps + 1):
        idx = torch.randint(len(x_all), (a.batch_size,), generator=gen)
        out = model(x_all[idx], y_all[idx], kl_weight=model.kl_weight_at(step))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        if step % max(1, a.steps // 4) == 0:
            s = score(model, clf, x_all)
            print(f"step {step} kl_weight {model.kl_weight_at(step):.3f} "
                  f"recon {out['recon']:.1f} kl {out['kl']:.1f} "
                  + " ".join(f"{k} {v:.3f}" for k, v in s.items())
                  + f" ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
