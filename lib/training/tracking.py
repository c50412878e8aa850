"""Experiment tracking: a local history.jsonl always, wandb when it can.

wandb is decided before `wandb.init` is ever called (a notebook would otherwise
hang at a login prompt): `WANDB_MODE` wins, then the config's `wandb.mode`;
"auto" means online when an API key is available (environment, ~/.netrc or a
Kaggle secret) and wandb's server answers within a second, offline otherwise
(with a key but no internet, `init` would retry for ~90 s). Any wandb failure
becomes one warning and tracking carries on locally: wandb is never a reason
for training to stop. Offline, wandb prints nothing: its banner and run summary
went to stderr, which Jupyter paints like errors; the run syncs later with
`wandb sync <run folder>/wandb/offline-run-*`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import warnings
from pathlib import Path
from urllib.parse import urlparse

from lib.config import WandbConfig
from lib.core.checkpoint import atomic_write_text
from lib.core.rundir import RunDir


def kaggle_secret(name: str) -> str | None:
    """A Kaggle notebook secret, or None outside Kaggle or when it is not attached."""
    if not os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return None
    try:
        from kaggle_secrets import UserSecretsClient

        return UserSecretsClient().get_secret(name)
    except Exception:  # the client raises a plain Exception when the secret is not attached
        return None


def _has_netrc_key() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


WANDB_HOST = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 1.0


def wandb_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether wandb's server (WANDB_BASE_URL, else api.wandb.ai) accepts a TCP connection.

    A Kaggle notebook with its internet switched off fails this at once (no DNS).
    """
    url = urlparse(os.environ.get("WANDB_BASE_URL") or WANDB_HOST)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _online_if_reachable() -> str:
    if wandb_reachable():
        return "online"
    warnings.warn("wandb: an API key is set but wandb's server cannot be reached (internet "
                  "off?); logging offline: sync later with `wandb sync <run>/wandb`",
                  stacklevel=3)
    return "offline"


def wandb_mode(cfg: WandbConfig) -> str:
    """"online", "offline" or "disabled"; "auto" is online only with a key and a network
    (probed with one short TCP connection)."""
    mode = os.environ.get("WANDB_MODE") or cfg.mode
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true"):
        mode = "disabled"
    if mode in ("disabled", "offline", "online"):
        return mode
    if mode == "dryrun":
        return "offline"
    if os.environ.get("WANDB_API_KEY") or _has_netrc_key():
        return _online_if_reachable()
    key = kaggle_secret("WANDB_API_KEY")
    if key:
        os.environ["WANDB_API_KEY"] = key
        return _online_if_reachable()
    return "offline"


def wandb_settings(mode: str):
    """Offline: silent (nothing worth reading goes to the screen) and no console capture.
    Online: quiet (the run's URL, warnings and errors still show)."""
    import wandb

    if mode == "offline":
        return wandb.Settings(silent=True, console="off")
    return wandb.Settings(quiet=True)


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the fact visible
    return value


class Tracker:
    """Appends one JSON object per logged step to history.jsonl and mirrors it to wandb."""

    def __init__(self, run_dir: Path, cfg: WandbConfig, run_name: str, config: dict,
                 enabled: bool = True):
        self.history_path = RunDir(run_dir).history
        self.enabled = enabled  # False on DDP ranks other than 0
        self.mode = wandb_mode(cfg) if enabled else "disabled"
        self._wandb = None
        if self.mode != "disabled":
            try:
                import wandb

                self._wandb = wandb.init(project=cfg.project, entity=cfg.entity, name=run_name,
                                         config=config, dir=str(run_dir), mode=self.mode,
                                         resume="allow", id=_wandb_id(run_dir),
                                         settings=wandb_settings(self.mode))
            except Exception as e:
                self._warn(e)

    def _warn(self, error: Exception) -> None:
        warnings.warn(f"wandb disabled for this run ({type(error).__name__}: {error}); "
                      f"history.jsonl keeps everything", stacklevel=3)
        self._wandb = None

    def log(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in record.items()}}
        with self.history_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            try:
                numbers = {k: v for k, v in record.items()  # metadata stays in history.jsonl
                           if k != "step" and isinstance(v, int | float)}
                self._wandb.log(numbers, step=step)
            except Exception as e:
                self._warn(e)

    def finish(self) -> None:
        if self._wandb is not None:
            try:
                self._wandb.finish()
            except Exception as e:
                self._warn(e)


def _wandb_id(run_dir: Path) -> str:
    """A stable wandb run id per run folder, so a resumed run continues the same wandb run."""
    id_file = RunDir(run_dir).wandb_id
    if id_file.exists():
        return id_file.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return run_id


def read_history(run_dir: str | Path) -> list[dict]:
    """All records of a run's history.jsonl (empty if there is none yet); a line that is
    not a JSON object with a step (torn by a kill mid-append, or edited) is dropped and
    reported on stderr."""
    path = RunDir(run_dir).history
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # a kill mid-append tears the last line
            record = None
        if isinstance(record, dict) and type(record.get("step")) is int:
            records.append(record)
        else:
            print(f"warning: {path}:{number}: dropped a torn or damaged line "
                  f"({line[:60]!r}); a resume rewrites the history without it",
                  file=sys.stderr)
    return records


def truncate_history(run_dir: str | Path, last_step: int) -> None:
    """Drop records logged after `last_step` (they belong to work a resume will redo).

    Rewritten whole or not at all: the history cannot be regenerated."""
    path = RunDir(run_dir).history
    if path.exists():
        kept = [r for r in read_history(run_dir) if r["step"] <= last_step]
        atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), path)
