"""Throughput: the project's DCGAN step against the reference training loop, side by side.

(a) the reference: what pytorch/examples `dcgan/main.py` does, statement for statement
    (checked against the script itself, see README "Speed"): ImageFolder over JPEGs with its
    Resize / CenterCrop / ToTensor / Normalize, DataLoader(shuffle=True, num_workers=2) whose
    workers restart every epoch, its Generator and Discriminator (Sigmoid in D) with
    nn.BCELoss, D on real then on fake.detach(), the G step re-running netD(fake), the five
    `.item()` of the line it prints every step, its image grids every 100 iterations and
    its two checkpoints at the end of every epoch;
(b) the project's step: device-resident uint8 data, channels_last, logits, D frozen during
    the G step, autocast where the device gains from it, fused Adam on GPUs, no host sync.
Both at batch 128 on 64x64 images unless told otherwise. Rows are timed interleaved
(round-robin over the rows, `--rounds` times `--iters` iterations each; the median is
reported), so a busy machine's load falls on every row alike. Prints images/s, the ratio
to the reference, FLOPs per iteration (torch.utils.flop_counter) and the fraction of the
measured matmul peak.

`--options` adds one row per speed option switched off (or on) against the project's
defaults; `--compile` adds torch.compile and, on CUDA, CUDA graphs
(compile_mode="reduce-overhead"); `--layers` times every convolution alone and compares
their sum (the kernel limit) with the measured iteration. CVAE and DDPM are compared with
the project's own plain-fp32 NCHW path unless `--no-families`.

    python benchmarks/throughput.py [--iters 8] [--rounds 3] [--images 3000] [--jpegs DIR]
        [--options] [--compile] [--layers] [--no-families] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
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

from lib.config import Config, DataConfig, ModelSpec, TrainerConfig, load_config  # noqa: E402
from lib.core.device import (  # noqa: E402
    Engine,
    configure_backends,
    make_optimizer,
    pick_amp_dtype,
    pick_device,
)
from lib.data import ImageData, make_shapes  # noqa: E402
from lib.families import FAMILIES  # noqa: E402
from lib.training.batches import Batches  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NZ = 100  # the reference's latent size, ngf = ndf = 64
FULL_RUN_ITERATIONS = 100_000  # the course project's cats run: 100 epochs x 1000


def sync(device: torch.device) -> None:
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


def write_jpegs(root: Path, n: int, size: int) -> Path:
    """n JPEGs in an ImageFolder layout (root/all/*.jpg); returns root."""
    folder = root / "all"
    folder.mkdir(parents=True)
    images = make_shapes(size, n=n, seed=1).images.permute(0, 2, 3, 1).numpy()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def reference_dataset(folder: Path, size: int):
    import torchvision.datasets as dset
    import torchvision.transforms as transforms

    return dset.ImageFolder(root=str(folder), transform=transforms.Compose([
        transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))


# --- (a) the reference loop -------------------------------------------------

class ReferenceLoop:
    """pytorch/examples dcgan/main.py, one iteration per `step()`.

    lib.models.dcgan's Generator and Discriminator are the reference's layers with its
    weights_init; the reference's D ends in a Sigmoid, added here.
    """

    def __init__(self, folder: Path, device: torch.device, batch: int, size: int, out: Path,
                 workers: int = 2):
        import torchvision.utils as vutils

        from lib.models.dcgan import Discriminator, Generator

        self.vutils, self.device, self.out = vutils, device, out
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as the reference sets it
        self.loader = torch.utils.data.DataLoader(reference_dataset(folder, size),
                                                  batch_size=batch, shuffle=True,
                                                  num_workers=workers)
        self.netG = Generator(latent_dim=NZ, hidden_dim=64, n_channels=3,
                              image_size=size).to(device)
        self.netD = nn.Sequential(Discriminator(n_channels=3, hidden_dim=64, image_size=size),
                                  nn.Sigmoid()).to(device)
        self.criterion = nn.BCELoss()
        self.fixed_noise = torch.randn(batch, NZ, 1, 1, device=device)
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.epoch, self.batches = 0, enumerate(self.loader)
        self.log = (out / "reference_log.txt").open("w")  # the lines it prints

    def next_batch(self):
        try:
            return next(self.batches)
        except StopIteration:  # the reference's end of epoch: two checkpoints
            torch.save(self.netG.state_dict(), self.out / f"netG_epoch_{self.epoch}.pth")
            torch.save(self.netD.state_dict(), self.out / f"netD_epoch_{self.epoch}.pth")
            self.epoch += 1
            self.batches = enumerate(self.loader)  # new workers decode every JPEG again
            return next(self.batches)

    def step(self) -> int:
        netD, netG, criterion, device = self.netD, self.netG, self.criterion, self.device
        i, data = self.next_batch()
        # (1) update D: maximize log(D(x)) + log(1 - D(G(z))), real then fake
        netD.zero_grad()
        real_cpu = data[0].to(device)
        batch_size = real_cpu.size(0)
        label = torch.full((batch_size,), 1, dtype=real_cpu.dtype, device=device)
        output = netD(real_cpu).view(-1)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = output.mean().item()
        noise = torch.randn(batch_size, NZ, 1, 1, device=device)
        fake = netG(noise)
        label.fill_(0)
        output = netD(fake.detach()).view(-1)
        errD_fake = criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.mean().item()
        errD = errD_real + errD_fake
        self.optD.step()
        # (2) update G: maximize log(D(G(z))), D's weight gradients computed and discarded
        netG.zero_grad()
        label.fill_(1)
        output = netD(fake).view(-1)
        errG = criterion(output, label)
        errG.backward()
        D_G_z2 = output.mean().item()
        self.optG.step()
        print(f"[{self.epoch}][{i}/{len(self.loader)}] Loss_D: {errD.item():.4f} "
              f"Loss_G: {errG.item():.4f} D(x): {D_x:.4f} D(G(z)): {D_G_z1:.4f} / {D_G_z2:.4f}",
              file=self.log)
        if i % 100 == 0:
            self.vutils.save_image(real_cpu, self.out / "real_samples.png", normalize=True)
            fake = netG(self.fixed_noise)
            self.vutils.save_image(fake.detach(), self.out / f"fake_samples_{self.epoch}.png",
                                   normalize=True)
        return batch_size


# --- (b) the project's step --------------------------------------------------

class ProjectStep:
    """family.step on batches drawn as the training loop draws them.

    fused: None = make_optimizer's choice (fused on CUDA). host_sync: read every logged
    number back each step, as a loop printing its losses does. loader: batches from a
    DataLoader (host memory, pinned on CUDA) instead of the device-resident data.
    """

    def __init__(self, cfg: Config, engine: Engine, data: ImageData, fused: bool | None = None,
                 host_sync: bool = False, loader=None):
        self.family, self.cfg, self.engine = FAMILIES[cfg.family], cfg, engine
        torch.manual_seed(0)
        self.parts = self.family.build(cfg, data, engine)
        if fused is not None:
            self.parts.optimizers = {name: rebuilt(opt, self.parts.nets[name], engine, fused)
                                     for name, opt in self.parts.optimizers.items()}
        self.sampler = Batches(data, cfg.trainer.batch_size, engine, seed=0)
        self.host_sync, self.loader, self.n = host_sync, loader, 0
        self.batches = iter(loader) if loader is not None else None
        self.logged: dict[str, float] = {}

    def next_batch(self):
        if self.loader is None:
            return self.sampler.next()
        try:
            images, _ = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            images, _ = next(self.batches)
        x = images.to(self.engine.device, non_blocking=True)  # [-1, 1] floats from the loader
        layout = torch.channels_last if self.engine.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=layout), None

    def step(self) -> int:
        self.n += 1
        x, y = self.next_batch()
        logs = self.family.step(self.parts, x, y, self.n, self.engine, self.cfg)
        if self.host_sync:
            self.logged = {k: float(v) for k, v in logs.items()}
        return x.shape[0]


def rebuilt(opt: torch.optim.Optimizer, net: nn.Module, engine: Engine, fused: bool):
    group = opt.param_groups[0]
    return make_optimizer(net.parameters(), group["lr"], group["betas"], group["weight_decay"],
                          engine.device, fused=fused)


def dcgan_config(batch: int, size: int) -> Config:
    return Config(
        data=DataConfig(dataset="shapes", image_size=size),
        generator=ModelSpec("Generator", {"latent_dim": NZ, "hidden_dim": 64}),
        discriminator=ModelSpec("Discriminator", {"hidden_dim": 64}),
        trainer=TrainerConfig(batch_size=batch))


def family_configs(batch: int, size: int) -> dict[str, Config]:
    """CVAE and DDPM from their 64 px GPU presets, on shapes data of this size."""
    out = {}
    for family, preset in (("cvae", "configs/cvae_artbench64.json"),
                           ("ddpm", "configs/ddpm_cats.json")):
        cfg = load_config(REPO / preset)
        out[family] = replace(cfg, data=DataConfig(dataset="shapes", image_size=size),
                              trainer=replace(cfg.trainer, batch_size=batch))
    return out


# --- timing -------------------------------------------------------------------

def measure(rows: dict, device, iters: int, rounds: int, warmup: int) -> dict[str, list]:
    """images/s of every row, `rounds` times, the rows interleaved within each round."""
    for row in rows.values():
        for _ in range(warmup):
            row.step()
    speeds = {name: [] for name in rows}
    for _ in range(rounds):
        for name, row in rows.items():
            sync(device)
            t0, images = time.perf_counter(), 0
            for _ in range(iters):
                images += row.step()
            sync(device)
            speeds[name].append(images / (time.perf_counter() - t0))
    return speeds


def flops_per_step(row) -> float:
    with FlopCounterMode(display=False) as counter:
        row.step()
    return counter.get_total_flops()


def cudagraph_skips() -> int:
    """How often inductor fell back from CUDA graphs (each time it also warns why)."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


# --- the kernel limit ------------------------------------------------------------

def conv_inputs(net: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    """Every convolution of `net` with the input it sees on `x`, in forward order."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, inp, out: seen.append((m, inp[0].detach())))
             for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


def kernel_seconds(conv: nn.Module, x: torch.Tensor, dtype, device, reps: int) -> dict:
    """Median seconds of the three kernels of one layer: forward, input grad, weight grad."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    w = conv.weight.detach().to(dtype)
    x = x.to(dtype)
    geometry = (conv.stride, conv.padding, conv.dilation, transposed,
                getattr(conv, "output_padding", (0, 0)), conv.groups)
    y = torch.ops.aten.convolution(x, w, None, *geometry)
    grad = torch.randn_like(y)
    kernels = {
        "forward": lambda: torch.ops.aten.convolution(x, w, None, *geometry),
        "input grad": lambda: torch.ops.aten.convolution_backward(
            grad, x, w, None, *geometry, [True, False, False]),
        "weight grad": lambda: torch.ops.aten.convolution_backward(
            grad, x, w, None, *geometry, [False, True, False]),
    }
    out = {}
    for name, run in kernels.items():
        run()
        times = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def kernel_limit(row: ProjectStep, reps: int) -> tuple[float, float, list]:
    """Seconds per iteration the convolutions alone need: (project, reference, per layer).

    Per iteration D runs forward three times (real, fake, fake again in the G step) and
    G once. Backward: D's weight gradients twice (its real and fake passes; the reference
    a third time in the G step), D's input gradients in all three passes except where the
    input is data (layer 1 of the real and the detached fake pass); G's weight gradients
    once, its input gradients except for the noise.
    """
    G, D = (row.parts.nets[k] for k in ("generator", "discriminator"))  # eager, unwrapped
    engine, batch = row.engine, row.cfg.trainer.batch_size
    dtype = engine.amp_dtype or torch.float32
    noise = torch.randn(batch, G.latent_dim, device=engine.device)
    fake = G(noise).detach()
    layers = []
    for net_name, net, x in (("G", G, noise), ("D", D, fake)):
        for i, (conv, inp) in enumerate(conv_inputs(net, x)):
            t = kernel_seconds(conv, inp, dtype, engine.device, reps)
            first = i == 0
            if net_name == "D":
                need = {"forward": 3, "weight grad": 2, "input grad": 1 if first else 3}
            else:
                need = {"forward": 1, "weight grad": 1, "input grad": 0 if first else 1}
            layers.append((f"{net_name}{i + 1}", t, need))
    project = sum(t[k] * n for _, t, need in layers for k, n in need.items())
    reference = project + sum(t["weight grad"] for name, t, _ in layers if name[0] == "D")
    return project, reference, layers


def report_kernel_limit(row: ProjectStep, speeds: dict, reps: int, results: dict) -> None:
    project_s, reference_s, layers = kernel_limit(row, reps)
    batch = row.cfg.trainer.batch_size
    print(f"\n{'layer':<6}{'forward':>10}{'input grad':>12}{'weight grad':>13}  (ms)")
    for name, t, _ in layers:
        print(f"{name:<6}{t['forward'] * 1e3:10.1f}{t['input grad'] * 1e3:12.1f}"
              f"{t['weight grad'] * 1e3:13.1f}")
    measured = {label: batch / statistics.median(speeds[label])
                for label in ("reference (dcgan/main.py)", "project")}
    for label, conv_s in (("project", project_s), ("reference (dcgan/main.py)", reference_s)):
        print(f"{label}: convolutions alone {conv_s:.3f} s/iteration (at most "
              f"{batch / conv_s:.1f} images/s); measured {measured[label]:.3f} s: "
              f"{conv_s / measured[label]:.0%} of the iteration in conv kernels")
    print(f"project's kernel limit / reference's measured speed: "
          f"{measured['reference (dcgan/main.py)'] / project_s:.2f}x")
    results["kernel_limit"] = {
        "project_conv_seconds": project_s, "reference_conv_seconds": reference_s,
        "measured_seconds": measured,
        "layers": {name: t for name, t, _ in layers}}


def dcgan_rows(args, device, amp, data, folder: Path) -> dict:
    """The project's row, then one row per speed option changed from its default."""
    cfg = dcgan_config(args.batch, args.size)

    def engine(**changes) -> Engine:
        base = dict(device=device, amp_dtype=amp, channels_last=True,
                    compile_backend=args.compile_backend)
        return Engine(**{**base, **changes})

    rows = {"project": ProjectStep(cfg, engine(), data)}
    if args.options:
        other = torch.float32 if amp is not None else torch.bfloat16
        loader = torch.utils.data.DataLoader(
            reference_dataset(folder, args.size), batch_size=args.batch, shuffle=True,
            num_workers=2, drop_last=True, persistent_workers=True,
            pin_memory=device.type == "cuda")
        rows.update({
            "- channels_last": ProjectStep(cfg, engine(channels_last=False), data),
            ("- fused Adam" if device.type == "cuda" else "+ fused Adam (CPU kernel)"):
                ProjectStep(cfg, engine(), data, fused=device.type != "cuda"),
            f"precision {'fp32' if other == torch.float32 else 'bf16'}":
                ProjectStep(cfg, engine(amp_dtype=None if amp else other), data),
            "+ host sync every step": ProjectStep(cfg, engine(), data, host_sync=True),
            "- resident data (DataLoader)": ProjectStep(cfg, engine(), data, loader=loader),
        })
    if args.compile:
        rows["+ compile"] = ProjectStep(cfg, engine(compile=True), data)
        if device.type == "cuda":  # CUDA graphs; on a CPU the mode adds nothing
            rows["+ compile reduce-overhead"] = ProjectStep(
                cfg, engine(compile=True, compile_mode="reduce-overhead"), data)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=8, help="iterations per row and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=3000, help="synthetic JPEGs to write")
    parser.add_argument("--jpegs", type=Path, help="an ImageFolder root of real JPEGs instead")
    parser.add_argument("--options", action="store_true", help="time each speed option")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--compile-backend", default="inductor",
                        help="'eager' checks the compile rows in seconds (no code generation)")
    parser.add_argument("--layers", action="store_true",
                        help="time every convolution alone: the step's kernel limit")
    parser.add_argument("--no-families", action="store_true", help="skip CVAE and DDPM")
    parser.add_argument("--family-batch", type=int, help="CVAE/DDPM batch (default: GPU 128, "
                        "CPU 16: a 64 px DDPM step at 128 takes a CPU ~40 s)")
    parser.add_argument("--json", type=Path, help="write the figures to this file too")
    args = parser.parse_args(argv)

    device = pick_device("auto")
    configure_backends(device, deterministic=False)  # what setup_engine does for training
    amp = pick_amp_dtype("auto", device)
    dtype = amp or torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, autocast {dtype}, batch {args.batch}, "
          f"{args.size}x{args.size}, {args.rounds} rounds x {args.iters} iterations per row")
    peak = matmul_peak(device, dtype)
    print(f"matmul peak: {peak / 1e9:,.0f} GFLOP/s in {dtype}")
    results = {"device": str(device), "device_name": name, "dtype": str(dtype),
               "torch": torch.__version__, "batch": args.batch, "size": args.size,
               "peak_flops": peak, "rows": {}}

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.jpegs or write_jpegs(Path(tmp) / "jpegs", args.images, args.size)
        data = make_shapes(args.size, n=max(args.images, 2 * args.batch), seed=1)
        rows = {"reference (dcgan/main.py)": ReferenceLoop(folder, device, args.batch,
                                                          args.size, Path(tmp))}
        rows.update(dcgan_rows(args, device, amp, data, folder))
        speeds = measure(rows, device, args.iters, args.rounds, args.warmup)
        flops = {label: flops_per_step(rows[label])
                 for label in ("reference (dcgan/main.py)", "project")}
        skips = cudagraph_skips() if args.compile else 0
        project_row = rows["project"]
        del rows  # DataLoader workers end here, before the temporary JPEGs go
    report_rows(speeds, flops, peak, args, device, results)
    if args.layers:
        report_kernel_limit(project_row, speeds, max(3, args.rounds), results)
    if args.compile and device.type == "cuda":
        print(f"CUDA graph fallbacks (inductor cudagraph_skips): {skips}")
        results["cudagraph_skips"] = skips

    if not args.no_families:
        family_batch = args.family_batch or (128 if device.type == "cuda" else 16)
        for family, cfg in family_configs(family_batch, args.size).items():
            rows = {"plain fp32 NCHW": ProjectStep(cfg, Engine(device, None, False), data),
                    "project": ProjectStep(cfg, Engine(device, amp, channels_last=True), data)}
            fam = measure(rows, device, max(2, args.iters // 2), args.rounds, 1)
            ips = {label: statistics.median(v) for label, v in fam.items()}
            counted = flops_per_step(rows["project"])
            print(f"{family:<5} plain fp32 NCHW {ips['plain fp32 NCHW']:8.1f}, project "
                  f"{ips['project']:8.1f} images/s = {ips['project'] / ips['plain fp32 NCHW']:.2f}x"
                  f"; {counted / 1e9:.1f} GFLOP/iteration (batch {family_batch})")
            results[family] = {**ips, "batch": family_batch, "flops_per_iter": counted}

    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def report_rows(speeds: dict, flops: dict, peak: float, args, device, results: dict) -> None:
    ref_label = "reference (dcgan/main.py)"
    ref = statistics.median(speeds[ref_label])
    project = statistics.median(speeds["project"])
    print(f"\n{'row':<34}{'images/s':>10}{'min-max':>16}{'vs ref':>9}{'vs project':>12}")
    for label, values in speeds.items():
        ips = statistics.median(values)
        print(f"{label:<34}{ips:10.1f}{f'{min(values):.1f}-{max(values):.1f}':>16}"
              f"{ips / ref:8.2f}x{ips / project:11.2f}x")
        row = {"ips": ips, "runs": values, "vs_reference": ips / ref, "vs_project": ips / project}
        if device.type == "cuda":
            row["projected_100k_minutes"] = FULL_RUN_ITERATIONS * args.batch / ips / 60
        results["rows"][label] = row
    for label, counted in flops.items():
        ips = statistics.median(speeds[label])
        achieved = counted / args.batch * ips
        print(f"{label}: {counted / 1e9:.1f} GFLOP/iteration, {achieved / 1e9:,.0f} GFLOP/s "
              f"= {achieved / peak:.0%} of the matmul peak")
        results["rows"][label]["flops_per_iter"] = counted
    print(f"\nproject / reference: {project / ref:.2f}x")
    results["speedup"] = project / ref
    if device.type == "cuda":
        best = max(results["rows"].items(), key=lambda kv: kv[1]["ips"])
        print(f"course project's {FULL_RUN_ITERATIONS:,}-iteration run at batch {args.batch}: "
              f"{results['rows']['project']['projected_100k_minutes']:.1f} min with the "
              f"project's defaults, {best[1]['projected_100k_minutes']:.1f} min with {best[0]}")


if __name__ == "__main__":
    main()
