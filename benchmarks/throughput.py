"""Throughput: the project's training step against a tutorial-style loop, side by side.

(a) the tutorial loop, written out here: torchvision ImageFolder over JPEGs,
    DataLoader(num_workers=2), fp32, NCHW, Sigmoid + BCE, the reference's D and G steps;
(b) the project's DCGAN step: device-resident uint8 data, channels_last, logits,
    frozen D during the G step, autocast where the device gains from it
    (and, with --compile, torch.compile).
Both at batch 128 on 64x64 images. Prints images/s, their ratio, FLOPs per
iteration (torch.utils.flop_counter), achieved FLOP/s and its fraction of the
machine's measured matmul peak in the same dtype; then the CVAE and DDPM steps
against the project's own plain-fp32 NCHW path.

    python benchmarks/throughput.py [--iters 12] [--images 3000] [--compile]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.config import Config, DataConfig, ModelSpec, TrainerConfig  # noqa: E402
from lib.data import make_shapes  # noqa: E402
from lib.device import Engine, pick_amp_dtype, pick_device  # noqa: E402
from lib.families import FAMILIES  # noqa: E402
from lib.training.loop import BatchSampler  # noqa: E402

BATCH = 128
FAMILY_BATCH_CPU = 16  # CVAE/DDPM comparisons on a CPU: minutes, not half an hour
SIZE = 64


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype, n=2048, reps=10) -> float:
    """Measured FLOP/s of a large square matmul: the machine's practical ceiling."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def write_jpegs(root: Path, n: int) -> Path:
    folder = root / "jpegs" / "all"
    folder.mkdir(parents=True)
    images = make_shapes(SIZE, n=n, seed=1).images.permute(0, 2, 3, 1).numpy()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)
    return folder.parent


# --- (a) the tutorial loop -------------------------------------------------

def tutorial_models(device):
    """pytorch/examples dcgan: Generator and Discriminator with the final Sigmoid."""
    from lib.models.dcgan import Discriminator, Generator

    G = Generator(latent_dim=100, hidden_dim=64, n_channels=3, image_size=SIZE)
    D = Discriminator(n_channels=3, hidden_dim=64, image_size=SIZE)
    D = nn.Sequential(D, nn.Sigmoid())
    return G.to(device), D.to(device)


def tutorial_loop(folder: Path, device, iters: int, warmup: int) -> float:
    import torchvision.datasets as dset
    import torchvision.transforms as transforms

    dataset = dset.ImageFolder(root=str(folder), transform=transforms.Compose([
        transforms.Resize(SIZE), transforms.CenterCrop(SIZE), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True,
                                         num_workers=2, drop_last=True,
                                         persistent_workers=True)
    netG, netD = tutorial_models(device)
    criterion = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def batches():
        while True:
            yield from loader

    it = batches()
    t0 = None
    for i in range(warmup + iters):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        real = next(it)[0].to(device)
        b = real.size(0)
        # the reference's D step: real, then fake, two backward passes, one update
        netD.zero_grad()
        label = torch.full((b,), 1.0, device=device)
        errD_real = criterion(netD(real).view(-1), label)
        errD_real.backward()
        noise = torch.randn(b, 100, 1, 1, device=device)
        fake = netG(noise)
        label.fill_(0.0)
        errD_fake = criterion(netD(fake.detach()).view(-1), label)
        errD_fake.backward()
        optD.step()
        # the reference's G step (D's weight gradients computed and thrown away)
        netG.zero_grad()
        label.fill_(1.0)
        errG = criterion(netD(fake).view(-1), label)
        errG.backward()
        optG.step()
    sync(device)
    return BATCH * iters / (time.perf_counter() - t0)


# --- (b) the project's step --------------------------------------------------

def project_setup(cfg: Config, engine: Engine, data):
    family = FAMILIES[cfg.family]
    torch.manual_seed(0)
    parts = family.build(cfg, data, engine)
    sampler = BatchSampler(data, cfg.trainer.batch_size, engine, seed=0)
    return family, parts, sampler


def time_project(cfg: Config, engine: Engine, data, iters: int, warmup: int,
                 count_flops: bool = True) -> tuple[float, float | None]:
    """(images/s, FLOPs per iteration) of the project's training step.

    FLOPs are counted on eager modules only: the counter's module hooks would make a
    compiled model recompile, and compiling does not change the arithmetic.
    """
    family, parts, sampler = project_setup(cfg, engine, data)

    def one(step):
        x, y = sampler.next()
        family.step(parts, x, y, step, engine, cfg)

    for i in range(warmup):
        one(i + 1)
    sync(engine.device)
    t0 = time.perf_counter()
    for i in range(iters):
        one(warmup + i + 1)
    sync(engine.device)
    ips = cfg.trainer.batch_size * iters / (time.perf_counter() - t0)
    if not count_flops:
        return ips, None
    with FlopCounterMode(display=False) as counter:
        one(warmup + iters + 1)
    return ips, counter.get_total_flops()


def dcgan_config(compile_: bool) -> Config:
    return Config(
        data=DataConfig(dataset="shapes", image_size=SIZE),
        generator=ModelSpec("Generator", {"latent_dim": 100, "hidden_dim": 64}),
        discriminator=ModelSpec("Discriminator", {"hidden_dim": 64}),
        trainer=TrainerConfig(batch_size=BATCH, compile=compile_))


def family_configs(batch: int) -> dict[str, Config]:
    """CVAE and DDPM at 64x64 from their GPU presets, when those families exist."""
    from lib.config import load_config

    out = {}
    for family, preset in (("cvae", "configs/cvae_artbench64.json"),
                           ("ddpm", "configs/ddpm_cats.json")):
        path = Path(__file__).resolve().parents[1] / preset
        if family in FAMILIES and path.exists():
            cfg = load_config(path)
            out[family] = replace(cfg, data=DataConfig(dataset="shapes", image_size=SIZE),
                                  trainer=replace(cfg.trainer, batch_size=batch))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--json", help="write the figures to this file too")
    args = parser.parse_args()

    device = pick_device("auto")
    amp = pick_amp_dtype("auto", device)
    dtype = amp or torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, autocast {dtype}")
    peak = matmul_peak(device, dtype)
    peak32 = peak if dtype == torch.float32 else matmul_peak(device, torch.float32)
    print(f"matmul peak: {peak / 1e9:,.0f} GFLOP/s in {dtype} ({peak32 / 1e9:,.0f} in fp32)")
    results = {"device": str(device), "dtype": str(dtype), "peak_flops": peak}

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_jpegs(Path(tmp), args.images)
        base = tutorial_loop(folder, device, args.iters, args.warmup)
    print(f"\n(a) tutorial loop (ImageFolder + DataLoader(2 workers), fp32, NCHW, Sigmoid+BCE): "
          f"{base:8.1f} images/s")
    results["tutorial_ips"] = base

    data = make_shapes(SIZE, n=args.images, seed=1)
    variants = [("project", False)] + ([("project + compile", True)] if args.compile else [])
    flops = None
    for name, compile_ in variants:
        cfg = dcgan_config(compile_)
        engine = Engine(device, amp, channels_last=True, compile=compile_)
        ips, counted = time_project(cfg, engine, data, args.iters, args.warmup,
                                    count_flops=not compile_)
        flops = counted or flops  # the compiled step does the eager step's arithmetic
        achieved = flops / BATCH * ips
        print(f"(b) {name:<18} {ips:8.1f} images/s = {ips / base:.2f}x the tutorial; "
              f"{flops / 1e9:.1f} GFLOP/iteration, {achieved / 1e9:,.0f} GFLOP/s "
              f"= {achieved / peak:.0%} of the matmul peak")
        results[name] = {"ips": ips, "speedup": ips / base, "flops_per_iter": flops,
                         "peak_fraction": achieved / peak}
        if device.type == "cuda":
            minutes = 100_000 * BATCH / ips / 60
            print(f"    course project's 100k-iteration cats run projected at {minutes:.1f} min")
            results[name]["projected_100k_minutes"] = minutes

    # the 64 px DDPM UNet costs ~31 GFLOP per image: at batch 128 a CPU needs ~40 s a step
    family_batch = BATCH if device.type == "cuda" else FAMILY_BATCH_CPU
    for family, cfg in family_configs(family_batch).items():
        row = {}
        for label, engine in (("plain fp32 NCHW", Engine(device, None, channels_last=False)),
                              ("project", Engine(device, amp, channels_last=True))):
            ips, flops = time_project(cfg, engine, data, max(4, args.iters // 2), 2)
            row[label] = ips
            print(f"{family:<5} {label:<16} {ips:8.1f} images/s, "
                  f"{flops / 1e9:.1f} GFLOP/iteration, "
                  f"{flops / family_batch * ips / peak:.0%} of peak (batch {family_batch})")
        print(f"{family:<5} speedup {row['project'] / row['plain fp32 NCHW']:.2f}x")
        results[family] = row

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
