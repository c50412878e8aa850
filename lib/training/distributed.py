"""Several GPUs from a notebook: `launch` runs `python -m lib train` under torchrun.

A notebook's kernel is one process; DistributedDataParallel needs one process per
GPU. `launch` starts them with PyTorch's own launcher (`python -m
torch.distributed.run`, i.e. torchrun) as a subprocess, streams its output into
the cell as it comes (progress bar included), and returns the run folder, which
the notebook then reads like any other. See docs/distributed.md.
"""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from lib.config import Config, load_config
from lib.core import usable_cores
from lib.training.resume import check_resume, default_run_name, resumable

REPO_ROOT = Path(__file__).resolve().parent.parent


class LaunchError(RuntimeError):
    """torchrun failed; the message carries the end of its output."""


def torchrun_command(train_args: list[str], nproc: int) -> list[str]:
    """`python -m lib train ...train_args` on nproc processes through torchrun."""
    # --standalone: a local rendezvous on a free port, nothing to configure
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "lib", "train", *train_args]


def _stream(cmd: list[str], env: dict, tail_chars: int = 20000) -> tuple[int, str]:
    """Run `cmd`, copying its stdout and stderr to ours as bytes arrive; (exit code, tail)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    try:
        # chunks, not lines: tqdm redraws its bar with "\r", without newlines
        while chunk := os.read(proc.stdout.fileno(), 4096):
            text = decoder.decode(chunk)
            sys.stdout.write(text)
            sys.stdout.flush()
            tail = (tail + text)[-tail_chars:]
        return proc.wait(), tail
    except BaseException:  # an interrupted cell must not leave training processes behind
        proc.terminate()
        proc.wait()
        raise


def launch(config: str | Path | Config, nproc: int,
           overrides: list[str] | None = None, out_root: str | Path = "outputs",
           resume: str | Path | None = None) -> Path:
    """Train with DistributedDataParallel on `nproc` processes; return the run folder.

    One process per GPU (Kaggle's "GPU T4 x2": nproc=2), or CPU processes over gloo
    where there is no GPU. `trainer.batch_size` is per process: each step sees
    nproc x batch_size images. `overrides` are `section.field=value` strings, as `--set`.
    `resume`: continue that run folder in place instead, by the one resume rule (the
    checkpoint's config with this config's trainer fields; lib.training.resume.resume_config).
    The processes get the config once, as a JSON file (each loads last.pt once).
    """
    if nproc < 1:
        raise ValueError(f"nproc={nproc}: need at least one process")
    gpus = torch.cuda.device_count()
    if gpus and nproc > gpus:
        raise ValueError(f"nproc={nproc} but only {gpus} GPU(s) are visible; use nproc<={gpus} "
                         "(on Kaggle choose the 'GPU T4 x2' accelerator for two)")
    if isinstance(config, Config) and overrides:
        raise ValueError("overrides go with a config file; change the Config itself")
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    out_root = Path(out_root).resolve()
    if resume is not None:  # a changed model or data field fails here, before any process
        run_dir = resumable(Path(resume).resolve()).root
        check_resume(run_dir, cfg)
    else:  # the run's name is decided here: the run folder is known without reading output
        cfg = replace(cfg, name=cfg.name or default_run_name(cfg))
        run_dir = out_root / cfg.name
    with tempfile.TemporaryDirectory(prefix="launch_") as tmp:
        config_path = Path(tmp) / "config.json"
        cfg.save(config_path)  # the one copy of the config the processes read
        train_args = (["--resume", str(run_dir), "--resume-with", str(config_path)]
                      if resume is not None else [str(config_path), "--out", str(out_root)])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                          env.get("PYTHONPATH")]))
        # torchrun would set 1 thread per process and warn; CPU ranks share the cores
        env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // nproc)))
        code, tail = _stream(torchrun_command(train_args, nproc), env)
    if code != 0:
        # `python -m lib` reports a user error as one "error: ..." line per rank
        errors = dict.fromkeys(line for line in tail.splitlines() if line.startswith("error: "))
        raise LaunchError(f"torchrun with {nproc} processes exited with code {code} "
                          f"(run folder {run_dir})" + "".join(f"\n{e}" for e in errors)
                          + f"\nthe end of its output:\n{tail[-3000:]}")
    return run_dir
