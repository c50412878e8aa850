"""Milliseconds per explorer update, and seconds to build each explorer (untrained
weights: same cost), on the device a notebook's `nb.trained_model` would pick.

An update is what a slider move costs: render the grid from the controls' values
and encode it as the PNG the Image widget receives. Prints the median (and the
slowest) over --updates moves of each control kind, with the split between the
model and the PNG encoding, and the machine's load: on a shared CPU the figures
depend on it. "cpu" is the median CPU time of the updating thread (the explorers render
on one thread on a CPU): what an update costs when it has a core, as it does beside one
other busy process on 2 cores, whatever else loads the machine. Every move goes to a new
setting: the DDPM explorer's cache of past renders is never what is timed. The explorers
set their own torch threads on CPU (`explore.interactive_threads`); --threads sets the
session's count around them.

Targets (issue 29): DCGAN-64 and CVAE <= 50 ms an update on 2 CPU cores, the 32 px
ddpm_cats UNet <= 500 ms on CPU, any explorer built in <= 2 s on CPU.

    python benchmarks/widgets.py [--updates 20] [--device auto] [--threads N]
                                 [--dcgan-samples 4] [--cvae-samples N] [--ddpm-steps N]
                                 [--ddpm-sampler dpm++2m] [--ddpm-samples N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.core.device import pick_device  # noqa: E402
from lib.models.cvae import CVAE  # noqa: E402
from lib.models.dcgan import Generator  # noqa: E402
from lib.models.ddpm import DDPM  # noqa: E402
from lib.notebook.widgets import class_explorer, ddpm_explorer, latent_explorer, to_png  # noqa: E402


def time_updates(explorer, moves: list[tuple[str, object]]) -> dict[str, float]:
    """Set each (control, value) in turn; time the update it triggers and its PNG part."""
    totals, cpus, pngs = [], [], []
    for name, value in moves:
        t0 = time.thread_time()
        explorer.controls[name].value = value  # fires the observer: the real update path
        cpus.append(1000 * (time.thread_time() - t0))
        totals.append(explorer.last_ms)
        grid = explorer.render()  # the DDPM explorer answers this one from its cache
        t0 = time.perf_counter()
        to_png(grid)
        pngs.append(1000 * (time.perf_counter() - t0))
    png = statistics.median(pngs)
    return {"median_ms": statistics.median(totals), "min_ms": min(totals), "max_ms": max(totals),
            "render_ms": statistics.median(totals) - png, "png_ms": png,
            "cpu_ms": statistics.median(cpus)}


def built(name: str, make):
    """make() -> an explorer, timed; a GPU's queue is drained before the clock stops."""
    t0 = time.perf_counter()
    explorer = make()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    print(f"{name}: built in {time.perf_counter() - t0:.2f} s")
    return explorer


def report(name: str, stats: dict[str, float]) -> None:
    # the minimum is the cost on an idle machine; median and max show what contention adds
    print(f"{name:<34} {stats['median_ms']:8.1f} ms/update (min {stats['min_ms']:6.1f}, "
          f"max {stats['max_ms']:6.1f}; model {stats['render_ms']:6.1f}, "
          f"png {stats['png_ms']:5.1f}; cpu {stats['cpu_ms']:6.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one) | cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="the session's torch threads (0: torch's default)")
    parser.add_argument("--dcgan-samples", type=int, default=4, help="images in the DCGAN grid")
    parser.add_argument("--cvae-samples", type=int, default=None,
                        help="images in the CVAE grid (default: the explorer's, 4 on CPU)")
    parser.add_argument("--ddpm-steps", type=int, default=None,
                        help="sampler steps (default: the explorer's, 5 on CPU, 10 on a GPU)")
    parser.add_argument("--ddpm-sampler", default="dpm++2m")
    parser.add_argument("--ddpm-samples", type=int, default=None,
                        help="images per DDPM update (default: the explorer's, 1 on CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.updates
    device = pick_device(args.device)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads in the "
          f"session, {os.cpu_count()} CPUs, load average (1, 5, 15 min) {load}")

    generator = Generator(image_size=64).to(device)  # the reference DCGAN, 3.6 M parameters
    explorer = built("latent_explorer (DCGAN-64, GANSpace on 500 samples)",
                     lambda: latent_explorer(generator, n_samples=args.dcgan_samples))
    k = args.dcgan_samples
    report(f"  DCGAN-64 seed ({k} images)",
           time_updates(explorer, [("seed", i + 1) for i in range(n)]))
    report(f"  DCGAN-64 PC slider ({k} images)", time_updates(
        explorer, [("pc0", -3 + 6 * i / max(n - 1, 1)) for i in range(n)]))
    report(f"  DCGAN-64 slerp t ({k} images)",
           time_updates(explorer, [("t", i / n) for i in range(n)]))

    cvae = CVAE(image_size=64, n_channels=3, num_classes=10, latent_dim=32,
                hidden_dim=32).to(device)
    images = torch.randint(0, 256, (500, 3, 64, 64), dtype=torch.uint8)
    labels = torch.arange(500) % 10
    explorer = built("class_explorer (CVAE-64, 500 images encoded)",
                     lambda: class_explorer(cvae, images, labels, n_samples=args.cvae_samples))
    k = args.cvae_samples or (8 if device.type == "cuda" else 4)
    report(f"  CVAE-64 class ({k} images)", time_updates(
        explorer, [("label", (i + 1) % 10) for i in range(n)]))
    report(f"  CVAE-64 PC slider ({k} images)", time_updates(
        explorer, [("pc0", -3 + 6 * i / max(n - 1, 1)) for i in range(n)]))

    # the ddpm_cats preset's UNet (configs/ddpm_cats.json), at 32 px
    ddpm = DDPM(image_size=32, n_channels=3, num_classes=0, base_channels=64,
                channel_mults=[1, 2, 2, 4], num_res_blocks=2, timesteps=1000,
                dropout=0.1).to(device)
    explorer = built("ddpm_explorer (ddpm_cats UNet at 32 px)",
                     lambda: ddpm_explorer(ddpm, n_samples=args.ddpm_samples,
                                           steps=args.ddpm_steps, sampler=args.ddpm_sampler))
    steps = explorer.controls["steps"].value
    shown = (f"{args.ddpm_samples} image(s)" if args.ddpm_samples
             else "the explorer's default: 1 image on CPU, 4 on a GPU")
    stats = time_updates(explorer, [("seed", i + 1) for i in range(min(n, 5))])
    report(f"  DDPM-32 seed ({steps} {args.ddpm_sampler} steps, {shown})", stats)
    print(f"  DDPM: {stats['render_ms'] / steps:.1f} ms per sampler step; "
          "its sliders update on release, revisited settings come from a cache")


if __name__ == "__main__":
    main()
