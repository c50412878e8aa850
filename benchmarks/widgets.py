"""Milliseconds per explorer update on 64x64 models (untrained weights: same cost).

An update is what a slider move costs: render the grid from the controls' values
and encode it as the PNG the Image widget receives. Prints the median (and the
slowest) over --updates moves of each control kind, with the split between the
model (render) and the PNG encoding.

    python benchmarks/widgets.py [--updates 20] [--threads N] [--ddpm-steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.models.cvae import CVAE  # noqa: E402
from lib.models.dcgan import Generator  # noqa: E402
from lib.models.ddpm import DDPM  # noqa: E402
from lib.widgets import class_explorer, ddpm_explorer, latent_explorer, to_png  # noqa: E402


def time_updates(explorer, moves: list[tuple[str, object]]) -> dict[str, float]:
    """Set each (control, value) in turn; time the update it triggers and its two parts."""
    totals, renders, pngs = [], [], []
    for name, value in moves:
        explorer.controls[name].value = value  # fires the observer: the real update path
        totals.append(explorer.last_ms)
        t0 = time.perf_counter()
        grid = explorer.render()
        t1 = time.perf_counter()
        to_png(grid)
        t2 = time.perf_counter()
        renders.append(1000 * (t1 - t0))
        pngs.append(1000 * (t2 - t1))
    return {"median_ms": statistics.median(totals), "max_ms": max(totals),
            "render_ms": statistics.median(renders), "png_ms": statistics.median(pngs)}


def report(name: str, stats: dict[str, float]) -> None:
    print(f"{name:<34} {stats['median_ms']:8.1f} ms/update (max {stats['max_ms']:6.1f}; "
          f"model {stats['render_ms']:6.1f}, png {stats['png_ms']:5.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--ddpm-steps", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.updates
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, 64x64 models")

    generator = Generator(image_size=64)  # the reference DCGAN, 3.6 M parameters
    t0 = time.perf_counter()
    explorer = latent_explorer(generator)
    print(f"latent_explorer: built in {time.perf_counter() - t0:.1f} s (GANSpace, 1000 samples)")
    report("  DCGAN-64 seed", time_updates(explorer, [("seed", i + 1) for i in range(n)]))
    report("  DCGAN-64 PC slider", time_updates(
        explorer, [("pc0", -3 + 6 * i / max(n - 1, 1)) for i in range(n)]))
    report("  DCGAN-64 slerp t", time_updates(explorer, [("t", i / n) for i in range(n)]))

    cvae = CVAE(image_size=64, n_channels=3, num_classes=10, latent_dim=32, hidden_dim=32)
    images = torch.randint(0, 256, (500, 3, 64, 64), dtype=torch.uint8)
    labels = torch.arange(500) % 10
    t0 = time.perf_counter()
    explorer = class_explorer(cvae, images, labels, n_samples=8)
    print(f"class_explorer: built in {time.perf_counter() - t0:.1f} s (500 images encoded)")
    report("  CVAE-64 class (8 images)", time_updates(
        explorer, [("label", (i + 1) % 10) for i in range(n)]))
    report("  CVAE-64 PC slider (8 images)", time_updates(
        explorer, [("pc0", -3 + 6 * i / max(n - 1, 1)) for i in range(n)]))

    ddpm = DDPM(image_size=64, n_channels=3, num_classes=10, base_channels=32,
                channel_mults=[1, 2, 2, 2], num_res_blocks=1, timesteps=1000)
    explorer = ddpm_explorer(ddpm, n_samples=1, steps=args.ddpm_steps)
    moves = [("seed", i + 1) for i in range(min(n, 3))]
    stats = time_updates(explorer, moves)
    report(f"  DDPM-64 seed ({args.ddpm_steps} DDIM steps, 1 image)", stats)
    print(f"  DDPM: {stats['render_ms'] / args.ddpm_steps:.1f} ms per DDIM step; "
          "its sliders update on release")


if __name__ == "__main__":
    main()
