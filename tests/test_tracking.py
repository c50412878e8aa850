import json
import socket

import pytest

from lib.config import WandbConfig
from lib.training import tracking
from lib.training.tracking import (
    Tracker,
    read_history,
    truncate_history,
    wandb_mode,
    wandb_reachable,
)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(tracking, "wandb_reachable", lambda *a: True)  # never the real network


def test_mode_is_decided_before_init(clean_env, monkeypatch, tmp_path):
    assert wandb_mode(WandbConfig()) == "offline"  # no key anywhere: never a login prompt
    assert wandb_mode(WandbConfig(mode="disabled")) == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(WandbConfig()) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment wins over the config
    assert wandb_mode(WandbConfig(mode="online")) == "offline"


def test_netrc_key_counts_as_logged_in(clean_env, monkeypatch, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode(WandbConfig()) == "online"


def test_wandb_failure_is_a_warning_not_a_stop(clean_env, monkeypatch, tmp_path):
    import wandb

    def broken_init(**_):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(UserWarning, match="network unreachable"):
        tracker = Tracker(tmp_path, WandbConfig(mode="offline"), "run", {})
    tracker.log({"loss": 1.5, "nan": float("nan")}, step=3)
    tracker.finish()
    assert read_history(tmp_path) == [{"step": 3, "loss": 1.5, "nan": "nan"}]


def test_truncate_history_keeps_earlier_steps(tmp_path):
    (tmp_path / "history.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (10, 20, 30)))
    truncate_history(tmp_path, 20)
    assert [r["step"] for r in read_history(tmp_path)] == [10, 20]


def test_a_key_without_internet_logs_offline(clean_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(tracking, "wandb_reachable", lambda *a: False)
    with pytest.warns(UserWarning, match="cannot be reached"):
        assert wandb_mode(WandbConfig()) == "offline"
    assert wandb_mode(WandbConfig(mode="online")) == "online"  # asked for: not second-guessed


def test_reachability_probe_is_one_short_connection(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        assert wandb_reachable(timeout=2.0)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")  # closed now
    assert not wandb_reachable(timeout=2.0)


def test_offline_wandb_prints_nothing(clean_env, tmp_path, capfd):
    tracker = Tracker(tmp_path, WandbConfig(mode="offline"), "run", {"a": 1})
    tracker.log({"loss": 1.0}, step=1)
    tracker.finish()
    out, err = capfd.readouterr()
    assert "wandb" not in out + err, (out, err)
    assert list((tmp_path / "wandb").glob("offline-run-*"))  # it did log, quietly
