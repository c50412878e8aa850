"""Which EMA schedule for a run of this length: one DCGAN training run, several moving averages
of G kept side by side, each scored with Inception FID on quality.py's protocol.

    python benchmarks/ema_schedules.py --data /path/to/cats --steps 800 --train-seed 0

The run is the strong preset's step as benchmarks/quality.py's ablation trains it (its
sizing, `--image-size`, batch 128; `--option` adds overrides), with batches from the
project's Batches; its step decays the lr as the loop's does (the presets' 0.9999977 a
step: 0.2% over 800 steps). After every step each schedule folds G
in with its own decay, min(decay, 1 - (1 + step) ** -power) (lib.families.base.EMA). At
the end every average,
and the trained G itself, samples `--n` images with standing BatchNorm statistics, from
the same noise quality.py scores with, against the same reference (half A of the
distinct images). One run, so the schedules share everything but the averaging: their
differences are the schedule's, while a second `--train-seed` shows how far a run moves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402  (benchmarks/quality.py: its protocol, sizing and helpers)

from lib.core import viz  # noqa: E402
from lib.families.base import EMA, Parts, fixed_generator, local  # noqa: E402
from lib.training.batches import Batches  # noqa: E402

SCHEDULES = ["0.999:0.5", "0.999:0.6", "0.999:0.75", "0.999:0.85"]  # decay:warm-up power


def parse_schedule(text: str) -> tuple[float, float]:
    decay, _, power = text.partition(":")
    try:
        return float(decay), float(power or 0)
    except ValueError:
        raise SystemExit(f"--schedule {text!r}: expected DECAY:POWER, e.g. 0.999:0.6") from None


def train_with_averages(cfg, data, schedules: dict[str, tuple[float, float]]) -> tuple:
    """The trained Parts and one EMA per schedule, after cfg.total_steps steps."""
    engine = quality.setup_engine(cfg.trainer)
    family = quality.FAMILIES[cfg.family]
    torch.manual_seed(cfg.trainer.seed)
    parts = family.build(cfg, data, engine)
    averages = {name: EMA({"generator": parts.nets["generator"]}, decay, power)
                for name, (decay, power) in schedules.items()}
    sampler = Batches(data, cfg.trainer.batch_size, engine, cfg.trainer.seed)
    t0 = time.perf_counter()
    for step in range(1, cfg.total_steps + 1):
        x, y = sampler.next()
        family.step(parts, x, y, step, engine, cfg)
        for ema in averages.values():
            ema.update(parts.nets, step)
        if step % 100 == 0 or step == cfg.total_steps:
            print(f"step {step}/{cfg.total_steps} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return family, parts, averages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the cat faces folder")
    p.add_argument("--data-root", type=Path, default=quality.ROOT / "data")
    p.add_argument("--out", type=Path, default=quality.ROOT / "outputs" / "ema_schedules")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--n", type=int, default=500, help="images per side of every FID")
    p.add_argument("--seed", type=int, default=0, help="splits the data, draws the samples")
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--schedule", dest="schedules", action="append", default=[],
                   help=f"DECAY:POWER (repeatable; default {' '.join(SCHEDULES)})")
    p.add_argument("--option", dest="options", action="append", default=[],
                   help="a config override on top of the strong preset's options")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # kept by training's choose_threads
    schedules = {f"EMA {s}": parse_schedule(s) for s in args.schedules or SCHEDULES}
    cfg = quality.load_config(quality.ROOT / quality.MODELS["dcgan"][0], [
        *quality.base_overrides("ema_schedules", args), *quality.MODELS["dcgan"][1],
        *[o for o in quality.STRONG if not o.startswith("trainer.ema_")], *args.options,
        "trainer.epochs=1", f"trainer.iterations_per_epoch={args.steps}",
        f"trainer.seed={args.train_seed}"])

    data, _, _, counts, evaluator = quality.reference(args.data, args.image_size, args.n,
                                                     args.seed, args.data_root)
    family, parts, averages = train_with_averages(cfg, data, schedules)

    args.out.mkdir(parents=True, exist_ok=True)
    standing = family.standing(cfg)
    rows = {}
    for name, G in {"trained G (no EMA)": local(parts.nets["generator"]),
                    **{k: ema.averages["generator"] for k, ema in averages.items()}}.items():
        sampling = Parts(nets={"generator": G}, optimizers={}, schedulers={}, specs={},
                         standing=standing)
        fake = quality.to_uint8(family.sample(sampling, args.n, None,
                                              fixed_generator(args.seed + 2)))
        grid = args.out / f"{quality.slug(name)}_seed{args.train_seed}.png"
        viz.save_png(viz.make_grid(fake[:64], nrow=8), grid, scale=2)
        decay = averages[name].decay_at(args.steps) if name in averages else None
        rows[name] = {**evaluator.evaluate(fake), "decay_at_end": decay, "grid": str(grid)}
        print(f"[{name}] FID {rows[name]['fid']:.1f}", flush=True)

    lines = ["| G | FID (95% interval) | KID ± std | diversity | decay at the last step |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {quality._scores(r)} | {quality._f(r['decay_at_end'], 4)} |"
              for name, r in rows.items()]
    text = ("\n".join(lines) + f"\n\nFID protocol: "
            f"{quality.protocol_summary(next(iter(rows.values()))['protocol'])}; "
            f"{args.steps} steps at batch {cfg.trainer.batch_size}, train seed "
            f"{args.train_seed}; standing BatchNorm statistics; data: {counts['files']} files\n")
    print("\n" + text)
    (args.out / f"ema_schedules_seed{args.train_seed}.md").write_text(text)
    (args.out / f"ema_schedules_seed{args.train_seed}.json").write_text(
        json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
