"""Command line.

  python -m lib train CONFIG [--set k=v ...] [--out DIR]
                  [--features F] [--inception-weights PATH] [--download]
  python -m lib train --resume RUN_DIR [--set trainer.k=v ...] [--resume-with CONFIG] [--out DIR]
  python -m lib evaluate RUN_DIR [--samples N] [--features inception|classifier]
                  [--inception-weights PATH] [--download]
  python -m lib notebooks [--preset demo|gpu|FILE] [--only NAME ...] [-p key=value ...]
  python -m lib demo      (the whole notebook suite on embedded data, then the report's path)

On several GPUs (or CPU processes): `torchrun --nproc_per_node=N -m lib train CONFIG`.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path

from lib.config import ConfigError, load_config

# torch, torchmetrics and papermill are imported by the subcommands that use them, so that
# `--help` and a mistyped option answer at once instead of after seconds of imports.


def presets_hint() -> str:
    """Where the JSON presets live and their names, for a config that was not found."""
    folder = Path(__file__).resolve().parent.parent / "configs"
    names = sorted(p.name for p in folder.glob("*.json") if not p.name.startswith("notebooks_"))
    return (f"presets live in {folder}: {', '.join(names)}" if names
            else "give a path to a JSON config such as configs/dcgan_demo.json")


INTERRUPTED = 130  # the shell's code for a Ctrl-C


def describe_os_error(e: OSError) -> str:
    """One line: the path, what the system said, and what to do about it."""
    if e.filename is None:
        return str(e)
    where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
    if isinstance(e, PermissionError) or e.errno == errno.EROFS:
        todo = ("not writable by this user: give a writable folder (--out DIR; a read-only "
                "run continues with --resume RUN --out DIR) or change its permissions")
    elif e.errno == errno.ENOSPC:
        todo = "the disk is full: free space or give another --out"
    elif isinstance(e, FileNotFoundError):
        todo = "check the path"
    else:
        todo = "check the path and that its folders are folders"
    return f"{where}: {e.strerror or e} ({todo})"


def _evaluation_overrides(args: argparse.Namespace) -> list[str]:
    """train's evaluation flags as the --set overrides they abbreviate."""
    overrides = list(args.set or [])
    if args.features:
        overrides.append(f"trainer.features={args.features}")
    if args.inception_weights:
        overrides.append(f"trainer.inception_weights={args.inception_weights}")
    if args.download:
        overrides.append("trainer.inception_download=true")
    return overrides


def cmd_train(args: argparse.Namespace) -> None:
    args.set = _evaluation_overrides(args)
    if args.resume:
        if args.config:
            raise ConfigError(f"give a CONFIG or --resume RUN_DIR, not both (got {args.config} "
                              f"and --resume {args.resume}); change a resumed run with --set "
                              f"or --resume-with")
        from lib.training.loop import resume

        out = resume(args.resume, out_root=args.out, overrides=args.set,
                     config=args.resume_with)
    else:
        if args.resume_with:
            raise ConfigError(f"--resume-with {args.resume_with} goes with --resume RUN_DIR")
        if not args.config:
            raise ConfigError(f"train needs a CONFIG file (or --resume RUN_DIR); "
                              f"{presets_hint()}")
        if not Path(args.config).is_file():
            raise ConfigError(f"{args.config}: config file not found; {presets_hint()}")
        cfg = load_config(args.config, args.set)  # a mistake answers here, before torch loads
        from lib.training.loop import train

        out = train(cfg, out_root=args.out or "outputs")
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun: one line, from rank 0
        print(out)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from lib.metrics import protocol_summary
    from lib.training.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(args.run_dir, args.samples, args.features,
                                 inception_weights=args.inception_weights, download=args.download)
    interval = (f" [{result['fid_low']:.3g}, {result['fid_high']:.3g}]"
                if "fid_low" in result else "")
    print(f"step {result['step']}: FID {result['fid']:.4g}{interval}, "
          f"diversity {result['diversity']:.3g}")
    print(f"protocol: {protocol_summary(result.get('protocol'))}")
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    if result.get("metrics_file"):
        print(result["metrics_file"])


def _echo(line: str) -> None:
    print(line, flush=True)


def cmd_notebooks(args: argparse.Namespace) -> None:
    from lib.runner import run_notebooks

    run_notebooks(args.only, args.preset, args.param, args.out, echo=_echo, jobs=args.jobs)


def cmd_demo(args: argparse.Namespace) -> None:
    """The notebook suite with the demo preset on embedded data; per-notebook timings."""
    from lib.runner import run_notebooks

    t0 = time.monotonic()
    results = run_notebooks(None, "demo", args.param, args.out, echo=_echo, jobs=args.jobs)
    print("\ndemo timings")
    for r in results:
        print(f"  {r.notebook:<20} {r.seconds:6.1f} s")
    print(f"  {'total':<20} {time.monotonic() - t0:6.1f} s")
    print(f"report: {(Path(args.out) / 'report' / 'report.html').resolve()}")


def _evaluation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", choices=["auto", "classifier", "inception"],
                   help="feature network for FID/KID (default: the config's trainer.features)")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="a local Inception weights file (.pth state dict or TorchScript .pt)")
    p.add_argument("--download", action="store_true",
                   help="if no Inception weights file is found, download the standard one once")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model from a JSON config")
    p.add_argument("config", nargs="?", help="JSON config, e.g. configs/dcgan_demo.json")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override a config value (repeatable), e.g. trainer.epochs=2")
    p.add_argument("--out", help="folder that receives the run folder (default: outputs; "
                                 "with --resume: continue in place unless given)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last.pt; with --out, in a copy "
                        "under OUT (for read-only folders such as Kaggle inputs)")
    p.add_argument("--resume-with", metavar="CONFIG",
                   help="with --resume: the config asked for now (how torchrun gets a "
                        "notebook's) instead of the checkpoint's own; its trainer fields apply, "
                        "its model and data must be the run's")
    _evaluation_flags(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="score a run's final weights into RUN_DIR/metrics.json")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--samples", type=int, help="generated images to score (default: the "
                   "config's trainer.eval_samples)")
    _evaluation_flags(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("notebooks", help="execute the notebook suite with papermill")
    p.add_argument("--preset", default="demo",
                   help="parameter preset: demo, gpu or a JSON file (notebook -> parameters)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks")
    p.add_argument("-p", "--param", action="append", metavar="[NOTEBOOK.]KEY=VALUE",
                   help="override a notebook parameter (repeatable), e.g. -p epochs=1")
    p.add_argument("--out", default="outputs",
                   help="outputs folder: run folders, notebooks/ (executed copies), report/")
    _jobs_flag(p)
    p.set_defaults(func=cmd_notebooks)
    p = sub.add_parser("demo", help="run the notebook suite on embedded data (demo preset)")
    p.add_argument("-p", "--param", action="append", metavar="[NOTEBOOK.]KEY=VALUE")
    p.add_argument("--out", default="outputs")
    _jobs_flag(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _jobs_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, metavar="N",
                   help="notebooks run at once before the report (default: all of them "
                        "without a GPU, 1 beside one)")


def errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """(mistakes the user can fix: exit 2, failures of a run: exit 1); imports torch."""
    from lib.core.checkpoint import CheckpointError
    from lib.core.device import DeviceError
    from lib.core.rundir import RunFolderError
    from lib.data import DatasetError
    from lib.metrics import MetricsError
    from lib.runner import NotebookFailed, RunnerError
    from lib.training.guard import DivergenceError

    return ((DatasetError, CheckpointError, DeviceError, MetricsError, RunnerError,
             RunFolderError, FileNotFoundError), (DivergenceError, NotebookFailed))


def run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors end here, before torch
    try:
        args.func(args)
    except ConfigError as e:  # raised before torch loads: the classes below would import it
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        user_errors, run_errors = errors()  # already imported by the command that raised
        if isinstance(e, user_errors):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, run_errors):
            print(f"error: {e}", file=sys.stderr)
            return 1
        if isinstance(e, OSError):  # a read-only or missing folder: the path, not a traceback
            print(f"error: {describe_os_error(e)}", file=sys.stderr)
            return 2
        raise
    return 0


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C at any moment, the seconds of imports included: one line and the shell's code
    try:
        return run(argv)
    except KeyboardInterrupt as e:  # training already said what it saved (Interrupted)
        if not str(e):
            print("interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
