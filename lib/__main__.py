"""Command line: `python -m lib train CONFIG [--set k=v ...] [--out DIR] [--resume RUN_DIR]`.

On several GPUs (or CPU processes): `torchrun --nproc_per_node=N -m lib train CONFIG`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lib.checkpoint import CheckpointError, load_checkpoint
from lib.config import Config, ConfigError, apply_override, load_config
from lib.data import DatasetError
from lib.device import DeviceError

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, DeviceError, FileNotFoundError)


def cmd_train(args: argparse.Namespace) -> None:
    from lib.train import train

    if args.resume:
        run_dir = Path(args.resume)
        ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        raw = ckpt["config"]
        for item in args.set or []:
            apply_override(raw, item, f"{run_dir}/config.json")
        cfg = Config.from_dict(raw, f"{run_dir}/checkpoints/last.pt")
        out = train(cfg, resume=run_dir)
    else:
        if not args.config:
            raise ConfigError("train needs a CONFIG file (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.set)
        out = train(cfg, out_root=args.out)
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun: one line, from rank 0
        print(out)


def cmd_demo(args: argparse.Namespace) -> None:
    import time

    from lib.train import train

    timings = []
    for preset in sorted(Path("configs").glob("*_demo.json")):
        t0 = time.monotonic()
        out = train(load_config(preset, args.set), out_root=args.out)
        timings.append((preset.stem, time.monotonic() - t0, out))
    for name, seconds, out in timings:
        print(f"{name:<12} {seconds:6.1f} s  {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model from a JSON config")
    p.add_argument("config", nargs="?", help="JSON config, e.g. configs/dcgan_demo.json")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override a config value (repeatable), e.g. trainer.epochs=2")
    p.add_argument("--out", default="outputs", help="folder that receives the run folder")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("demo", help="train every configs/*_demo.json preset on embedded data")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    p.add_argument("--out", default="outputs")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
