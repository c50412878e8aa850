"""Nothing lost: exact resume after SIGKILL, atomic checkpoints, time budget,
divergence rollback, safe loading, unsupported GPUs, and clear config errors."""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib.config import Config, ConfigError, apply_override, load_config
from lib.core import checkpoint, device
from lib.core.checkpoint import CheckpointError, atomic_save, load_checkpoint
from lib.core.device import DeviceError, check_cuda_arch
from lib.families import FAMILIES
from lib.training.checkpoints import rng_state
from lib.training.distributed import launch
from lib.training.evaluation import rebuild
from lib.training.guard import DivergenceError, Guard
from lib.training.loop import resume, train
from lib.training.tracking import read_history

ROOT = Path(__file__).resolve().parents[1]
WALL_CLOCK = {"images_per_sec", "train_seconds"}  # the only fields allowed to differ


def tiny_config(tmp_path: Path, **trainer) -> Path:
    """12 steps of a 16 px DCGAN: checkpoints at 4, 8, 12; history and snapshots every 2."""
    raw = json.loads((ROOT / "configs" / "dcgan_demo.json").read_text())
    raw["name"] = "run"
    raw["data"] = {"dataset": "digits", "image_size": 16, "root": str(tmp_path / "data")}
    raw["generator"]["args"] = {"latent_dim": 8, "hidden_dim": 8}
    raw["discriminator"]["args"] = {"hidden_dim": 8}
    raw["generator_lr_scheduler"] = {"gamma": 0.9}
    raw["wandb"] = {"mode": "disabled"}
    raw["trainer"] = {"epochs": 3, "iterations_per_epoch": 4, "batch_size": 8,
                      "save_period": 1, "log_every_step": 2, "deterministic": True,
                      "ema_decay": 0.9, "device": "cpu",
                      "eval_samples": 0, **trainer}  # evaluation: test_metrics.py
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(raw))
    return path


def assert_same_state(a, b, where="ckpt"):
    """Bitwise equality of nested checkpoint contents, wall-clock counters aside."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k not in WALL_CLOCK:
                assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_same_run(run: Path, ref: Path) -> None:
    a, b = load_checkpoint(run / "checkpoints" / "last.pt"), load_checkpoint(
        ref / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 12
    for key in ("nets", "ema", "optimizers", "schedulers", "rng", "counters", "guard"):
        assert_same_state(a[key], b[key], key)
    strip = [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in read_history(run)]
    assert strip == [{k: v for k, v in r.items() if k not in WALL_CLOCK}
                     for r in read_history(ref)]
    assert [r["step"] for r in strip if "event" not in r] == [2, 4, 6, 8, 10, 12]
    pngs = sorted(p.name for p in (ref / "samples").glob("*.png"))
    assert pngs == sorted(p.name for p in (run / "samples").glob("*.png"))
    for name in pngs:
        assert (run / "samples" / name).read_bytes() == (ref / "samples" / name).read_bytes()


def child(tmp_path: Path, prelude: str, *args: str) -> subprocess.Popen:
    """`python -m lib ARGS` in a fresh process, after `prelude` patched it."""
    script = tmp_path / f"child_{len(list(tmp_path.glob('child_*.py')))}.py"
    script.write_text(textwrap.dedent(prelude) + "\nfrom lib.__main__ import main\n"
                      "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}  # tiny tensors: threads only add contention
    return subprocess.Popen([sys.executable, str(script), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lib", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------
# Exact resume after SIGKILL

HANG_AFTER_SECOND_CHECKPOINT = """
    import os, sys, time
    from pathlib import Path
    import lib.training.session

    real_save, periodic = lib.training.session.atomic_save, []

    def save(obj, path):
        if path.name == "last.pt" and len(periodic) == 2:  # step 12: history/snapshots ran on
            (path.parents[1] / "KILL_ME").write_text(str(os.getpid()))
            time.sleep(600)
        real_save(obj, path)
        if path.name.startswith("step_"):
            periodic.append(path)

    lib.training.session.atomic_save = save
"""


def test_sigkilled_run_resumes_bitwise_from_a_read_only_copy(tmp_path):
    config = tiny_config(tmp_path)
    killed = child(tmp_path, HANG_AFTER_SECOND_CHECKPOINT, "train", str(config),
                   "--out", str(tmp_path / "a"))
    reference = child(tmp_path, "import sys", "train", str(config), "--out", str(tmp_path / "c"))
    marker, deadline = tmp_path / "a" / "run" / "KILL_ME", time.monotonic() + 500
    while not marker.exists():
        assert killed.poll() is None, killed.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert reference.wait() == 0, reference.communicate()
    source = tmp_path / "a" / "run"
    marker.unlink()
    assert load_checkpoint(source / "checkpoints" / "last.pt")["step"] == 8
    assert [r["step"] for r in read_history(source)][-1] == 12  # work a resume must redo

    before = tree_digest(source)
    out = cli("train", "--resume", str(source), "--out", str(tmp_path / "b"))
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip().splitlines()[-1]) == tmp_path / "b" / "run"
    assert tree_digest(source) == before  # the source is only read (a Kaggle input)
    assert_same_run(tmp_path / "b" / "run", tmp_path / "c" / "run")
    for name in ("evolution.gif", "final_grid.png", "config.json"):
        assert (tmp_path / "b" / "run" / name).exists()


def test_time_budget_stops_cleanly_and_resume_is_exact(tmp_path, capsys):
    config = tiny_config(tmp_path)
    ref = train(load_config(config), out_root=tmp_path / "ref", progress=False)
    run = train(load_config(config, ["trainer.max_minutes=1e-5"]), out_root=tmp_path / "cut",
                progress=False)
    message = capsys.readouterr().out.strip().splitlines()
    assert message[-1].startswith("time budget of ")
    assert f"resume with: python -m lib train --resume {run}" in message[-1]
    summary = json.loads((run / "summary.json").read_text())
    assert not summary["finished"] and summary["step"] < 12
    assert (run / "evolution.gif").exists() and (run / "final_grid.png").exists()

    assert resume(run, overrides=["trainer.max_minutes=0"], progress=False) == run
    assert json.loads((run / "summary.json").read_text())["finished"]
    assert_same_run(run, ref)


def test_a_budget_stop_is_scored_before_it_saves(tmp_path, monkeypatch):
    """The preset scores only at its last step: a session cut by its budget gets a score too."""
    calls = stub_evaluation(monkeypatch, {})
    run = train(load_config(tiny_config(tmp_path, eval_samples=8, max_minutes=1e-5)),
                out_root=tmp_path, progress=False)
    stopped = json.loads((run / "summary.json").read_text())["step"]
    assert stopped < 12 and len(calls) == 1
    assert [r["step"] for r in read_history(run) if "fid" in r] == [stopped]
    assert load_checkpoint(run / "checkpoints" / "best.pt")["step"] == stopped


# ---------------------------------------------------------------------------
# Atomic checkpoints

DIE_HALFWAY_THROUGH_STEP_8 = """
    import io, os, signal, sys
    import torch

    real_save = torch.save

    def save(obj, f):
        if isinstance(obj, dict) and obj.get("step") == 8:
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f)

    torch.save = save
"""


def test_kill_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    config = tiny_config(tmp_path)
    proc = child(tmp_path, DIE_HALFWAY_THROUGH_STEP_8, "train", str(config),
                 "--out", str(tmp_path))
    assert proc.wait(timeout=600) == -signal.SIGKILL, proc.communicate()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert list(ckpt_dir.glob(".last.pt.*.tmp"))  # the half-written file, never renamed
    assert load_checkpoint(ckpt_dir / "last.pt")["step"] == 4

    out = cli("train", "--resume", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    assert load_checkpoint(ckpt_dir / "last.pt")["step"] == 12
    assert not list(ckpt_dir.glob("*.tmp"))
    assert sorted(p.name for p in ckpt_dir.glob("step_*.pt")) == [
        "step_0000004.pt", "step_0000008.pt", "step_0000012.pt"]


KILL_MID_WRITE_OF = """
    import io, os, signal, sys
    import torch
    import lib.training.session

    real_save, real_atomic, armed = torch.save, lib.training.session.atomic_save, []

    def save(obj, f):  # half the file on disk, then the kill
        if armed:
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f)

    def atomic(obj, path):
        if path.name == {name!r} and obj["step"] >= {step}:
            armed.append(path)
        return real_atomic(obj, path)

    torch.save, lib.training.session.atomic_save = save, atomic
"""


@pytest.mark.parametrize("name, step, trainer", [
    ("step_0000008.pt", 8, {}),
    # the first score is always the best so far: a write that happens whatever the scores
    ("best.pt", 4, {"eval_samples": 32, "eval_every": 4, "features": "classifier"}),
])
def test_kill_during_a_periodic_or_best_write_resumes_bitwise(tmp_path, name, step, trainer):
    config = tiny_config(tmp_path, **trainer)
    proc = child(tmp_path, KILL_MID_WRITE_OF.format(name=name, step=step), "train",
                 str(config), "--out", str(tmp_path / "a"))
    reference = child(tmp_path, "import sys", "train", str(config), "--out", str(tmp_path / "c"))
    assert proc.wait(timeout=600) == -signal.SIGKILL, proc.communicate()
    assert reference.wait(timeout=600) == 0, reference.communicate()
    run, ref = tmp_path / "a" / "run", tmp_path / "c" / "run"
    assert list((run / "checkpoints").glob(f".{name}.*.tmp"))  # the torn write, never renamed
    killed_at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]

    out = cli("train", "--resume", str(run))
    assert out.returncode == 0, out.stderr
    assert_same_run(run, ref)
    assert not list((run / "checkpoints").glob("*.tmp"))
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (ref / "checkpoints").iterdir())
    for again in [name] + ["best.pt"] * (name == "best.pt"):
        a = load_checkpoint(run / "checkpoints" / again)
        b = load_checkpoint(ref / "checkpoints" / again)
        assert a["step"] == b["step"]
        for key in ("nets", "ema", "optimizers", "rng", "guard"):
            assert_same_state(a[key], b[key], f"{again}.{key}")
    if name == "best.pt":
        assert killed_at < 12 and any("fid" in r for r in read_history(run))


INTERRUPT_AT_STEP_6 = """
    import dataclasses, os, sys, time
    from pathlib import Path
    from lib.families import FAMILIES

    real = FAMILIES["dcgan"]

    def step(parts, x, y, step, engine, cfg):
        logs = real.step(parts, x, y, step, engine, cfg)
        if step == 6:  # the test presses Ctrl-C now, mid-step
            Path({marker!r}).write_text(str(os.getpid()))
            time.sleep(3)
        return logs

    FAMILIES["dcgan"] = dataclasses.replace(real, step=step)
"""


def test_ctrl_c_saves_the_step_prints_the_resume_command_and_resumes_bitwise(tmp_path):
    config, marker = tiny_config(tmp_path), tmp_path / "PRESS_CTRL_C"
    proc = child(tmp_path, INTERRUPT_AT_STEP_6.format(marker=str(marker)), "train",
                 str(config), "--out", str(tmp_path / "a"))
    reference = child(tmp_path, "import sys", "train", str(config), "--out", str(tmp_path / "c"))
    deadline = time.monotonic() + 500
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=600)
    run = tmp_path / "a" / "run"
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted after step 6/12, last.pt saved; resume with: python -m lib train "
        f"--resume {run}")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6
    assert not (run / ".lock").exists()
    assert reference.wait() == 0, reference.communicate()

    out = cli("train", "--resume", str(run))
    assert out.returncode == 0, out.stderr
    assert_same_run(run, tmp_path / "c" / "run")


def test_failure_between_write_and_rename_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    entries = {k: {} for k in checkpoint.REQUIRED if k != "step"}  # the keys load_checkpoint needs
    entries["counters"] = {"images_seen": 0, "train_seconds": 0.0}
    sampler = {"perm": torch.arange(4), "pos": 0, "gen": torch.Generator().get_state()}
    entries["rng"] = rng_state(SimpleNamespace(state_dict=lambda: sampler))
    atomic_save({"format_version": 1, "step": 1, "w": torch.ones(3), **entries}, path)

    def broken_replace(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(checkpoint.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk vanished"):
        atomic_save({"format_version": 1, "step": 2, "w": torch.zeros(3), **entries}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_keeps_only_the_last_periodic_checkpoints(tmp_path):
    run = train(load_config(tiny_config(tmp_path, keep_checkpoints=2)), out_root=tmp_path,
                progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.pt", "standing.pt", "step_0000008.pt", "step_0000012.pt"]


# ---------------------------------------------------------------------------
# Divergence guard


def poison_generator(monkeypatch, steps, once=True):
    """Fill a generator weight with NaN before the steps in `steps` (each once, or always)."""
    real, done = FAMILIES["dcgan"], set()

    def step(parts, x, y, step, engine, cfg):
        if step in steps and not (once and step in done):
            done.add(step)
            with torch.no_grad():
                next(parts.nets["generator"].parameters()).fill_(float("nan"))
        return real.step(parts, x, y, step, engine, cfg)

    monkeypatch.setitem(FAMILIES, "dcgan", dataclasses.replace(real, step=step))


def test_nan_loss_rolls_back_and_training_continues(tmp_path, monkeypatch):
    poison_generator(monkeypatch, {6})
    run = train(load_config(tiny_config(tmp_path)), out_root=tmp_path, progress=False)
    history = read_history(run)
    events = [r for r in history if "event" in r]
    assert len(events) == 1 and events[0]["event"] == "rollback"
    assert events[0]["step"] == events[0]["to_step"] == 4 and events[0]["diverged_at"] == 6
    assert "non-finite" in events[0]["reason"] and events[0]["lr_scale"] == 0.5
    logged = [r for r in history if "event" not in r]
    assert [r["step"] for r in logged] == [2, 4, 6, 8, 10, 12]
    assert logged[1]["lr_discriminator"] == 2e-4 and logged[2]["lr_discriminator"] == 1e-4
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 12 and ckpt["guard"]["rollbacks"] == 1
    assert all(torch.isfinite(w).all() for w in ckpt["nets"]["generator"].values())
    assert json.loads((run / "summary.json").read_text())["finished"]


def test_run_stops_with_a_clear_error_after_max_rollbacks(tmp_path, monkeypatch):
    poison_generator(monkeypatch, {5}, once=False)
    cfg = load_config(tiny_config(tmp_path, max_rollbacks=2))
    with pytest.raises(DivergenceError, match=r"non-finite .*2 rollback\(s\).*max_rollbacks"):
        train(cfg, out_root=tmp_path, progress=False)
    events = [r["event"] for r in read_history(tmp_path / "run") if "event" in r]
    assert events == ["rollback", "rollback", "stopped"]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")  # still the good one
    assert ckpt["step"] == 4
    assert all(torch.isfinite(w).all() for w in ckpt["nets"]["generator"].values())


def test_collapse_event_below_the_fraction():
    cfg = load_config(ROOT / "configs" / "dcgan_demo.json",
                      ["trainer.collapse_fraction=0.4"]).trainer
    guard = Guard(cfg)
    assert guard.collapse(0.9) is None and guard.collapse(float("nan")) is None
    event = guard.collapse(0.1)
    assert event["event"] == "collapse" and event["threshold"] == 0.4
    assert "diversity 0.1 is below" in event["message"]


def stub_evaluation(monkeypatch, scores: dict[int, float], key: str = "diversity"):
    """Evaluation that reports `key` = `scores[step]` (1.0 otherwise), each entry once."""
    import lib.training.loop
    import lib.training.session

    evaluator = type("StubEvaluator", (), {"features": "stub", "num_samples": 8, "complete": True,
                                           "seconds_per_image": None, "cache_files": [],
                                           "cache_dir": None})()
    monkeypatch.setattr(lib.training.loop, "make_evaluator", lambda *a, **k: evaluator)
    calls = []

    def evaluate(family, parts, evaluator, engine, seed):
        step = len(calls)
        calls.append(step)
        return {"fid": 100.0 - step, key: scores.pop(4 * (step + 1), 1.0)}

    monkeypatch.setattr(lib.training.session, "evaluate_parts", evaluate)
    return calls


def test_collapse_during_training_is_logged_as_an_event(tmp_path, monkeypatch):
    stub_evaluation(monkeypatch, {8: 0.05})
    cfg = load_config(tiny_config(tmp_path, eval_every=4, eval_samples=8,
                                  collapse_fraction=0.3))
    run = train(cfg, out_root=tmp_path, progress=False)
    events = [r for r in read_history(run) if "event" in r]
    assert [(e["event"], e["step"], e["diversity"]) for e in events] == [("collapse", 8, 0.05)]
    assert json.loads((run / "summary.json").read_text())["rollbacks"] == 0


def test_collapse_rolls_back_when_configured(tmp_path, monkeypatch):
    calls = stub_evaluation(monkeypatch, {8: 0.05})
    cfg = load_config(tiny_config(tmp_path, eval_every=4, eval_samples=8,
                                  collapse_fraction=0.3, collapse_rollback=True))
    run = train(cfg, out_root=tmp_path, progress=False)
    events = [r for r in read_history(run) if "event" in r]
    # the collapse record went with the steps the rollback undid; its reason remains
    assert [e["event"] for e in events] == ["rollback"] and events[0]["to_step"] == 4
    assert events[0]["reason"].startswith("diversity 0.05 is below 0.3")
    assert len(calls) == 4  # steps 4, 8 (collapsed), 8 again, 12
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 12


def test_label_collapse_event_below_the_minimum():
    cfg = load_config(ROOT / "configs" / "cvae_demo.json",
                      ["trainer.label_sensitivity_min=0.2"]).trainer
    guard = Guard(cfg)
    assert guard.label_collapse(0.9) is None and guard.label_collapse(float("nan")) is None
    event = guard.label_collapse(0.02)
    assert event["event"] == "label_collapse" and event["threshold"] == 0.2
    assert "label sensitivity 0.02 is below 0.2" in event["message"]
    assert guard.collapses({"diversity": 0.9, "label_sensitivity": 0.02}) == [event]
    assert guard.collapses({"fid": 3.0}) == []  # an unconditional model: nothing to judge
    off = Guard(dataclasses.replace(cfg, label_sensitivity_min=0.0))
    assert off.label_collapse(0.0) is None


def test_label_collapse_during_training_is_logged_as_an_event(tmp_path, monkeypatch):
    stub_evaluation(monkeypatch, {8: 0.01}, key="label_sensitivity")  # ignored at step 8
    run = train(load_config(tiny_config(tmp_path, eval_every=4, eval_samples=8)),
                out_root=tmp_path, progress=False)
    events = [r for r in read_history(run) if "event" in r]
    assert [(e["event"], e["step"], e["label_sensitivity"]) for e in events] == [
        ("label_collapse", 8, 0.01)]
    assert events[0]["threshold"] == 0.1  # trainer.label_sensitivity_min's default


# ---------------------------------------------------------------------------
# Safe loading


class RunsCode:
    """Pickles as a call to os.system: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    run = tmp_path / "run"
    evil = run / "checkpoints" / "last.pt"
    evil.parent.mkdir(parents=True)
    torch.save({"format_version": 1, "config": {}, "payload": RunsCode(tmp_path / "pwned")},
               evil)

    with pytest.raises(CheckpointError, match=r"last\.pt: refused - it holds objects .*posix"):
        load_checkpoint(evil)
    out = cli("train", "--resume", str(run))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(evil) in out.stderr and "refused" in out.stderr
    assert not (tmp_path / "pwned").exists()


def test_junk_file_is_a_checkpoint_error(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: refused - not a weights-only torch"):
        load_checkpoint(junk)
    junk.write_bytes(b"")
    with pytest.raises(CheckpointError, match="junk.pt: unreadable or truncated"):
        load_checkpoint(junk)


# ---------------------------------------------------------------------------
# Devices the installed torch cannot drive


def fake_gpu(monkeypatch, capability, arch_list, name):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)


CU128 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


def test_p100_under_a_build_without_sm60_names_the_fix(monkeypatch):
    fake_gpu(monkeypatch, (6, 0), CU128, "Tesla P100-PCIE-16GB")
    with pytest.raises(DeviceError) as e:
        check_cuda_arch(torch.device("cuda", 0))
    message = str(e.value)
    assert "Tesla P100-PCIE-16GB (sm_60) is not supported" in message
    assert "T4 x2" in message and "sm_60 kernels" in message


@pytest.mark.parametrize("capability, name", [((7, 5), "T4"), ((8, 9), "L4"), ((9, 0), "H100")])
def test_supported_gpus_pass(monkeypatch, capability, name):
    fake_gpu(monkeypatch, capability, CU128, name)  # sm_89 runs sm_86 code
    check_cuda_arch(torch.device("cuda", 0))
    fake_gpu(monkeypatch, capability, ["sm_60", "compute_70"], name)  # newer GPU through PTX
    check_cuda_arch(torch.device("cuda", 0))


def test_cli_reports_the_unsupported_gpu_in_one_line(tmp_path, monkeypatch, capsys):
    fake_gpu(monkeypatch, (6, 0), CU128, "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(device, "pick_device", lambda name: torch.device("cuda", 0))
    from lib.__main__ import main

    assert main(["train", str(tiny_config(tmp_path)), "--set", "trainer.device=auto"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Tesla P100") and "T4 x2" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------
# Clear errors for user mistakes


@pytest.mark.parametrize("args, expected", [
    (["train", "--resume", "{tmp}/nowhere"], "nowhere: not a run folder to resume"),
    (["train", "configs/dcgan_demo.json", "--resume", "{tmp}"], "not both"),
    (["train", "{tmp}/missing.json"], "missing.json: config file not found"),
    (["train", "configs/dcgan_demo.json", "--set", "trainer.epochs"], "must look like"),
    (["train", "configs/dcgan_demo.json", "--set", "data.image_size=12", "--set",
      "data.root={tmp}"], "power-of-two"),
    (["train", "configs/dcgan_demo.json", "--set", "generator.args.hidden_dim=0"],
     "generator.args.hidden_dim: must be >= 1"),
    (["train", "configs/dcgan_demo.json", "--set", "trainer.device=cuda:x"], "trainer.device"),
])
def test_cli_mistakes_are_one_line(tmp_path, capsys, monkeypatch, args, expected):
    from lib.__main__ import main

    monkeypatch.chdir(ROOT)
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1


def test_read_only_run_needs_out(tmp_path, monkeypatch):
    run = train(load_config(tiny_config(tmp_path, epochs=1)), out_root=tmp_path, progress=False)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: mode != os.W_OK and real_access(p, mode))
    with pytest.raises(CheckpointError, match="read-only; resume into a new folder with --out"):
        resume(run, progress=False)


def test_resume_takes_trainer_fields_and_names_a_changed_data_field(tmp_path):
    """The one resume rule, as a notebook resumes (its whole config) and as it hands a
    resume to torchrun: the trainer fields apply, a data field must be the run's."""
    config = tiny_config(tmp_path, epochs=1)
    run = train(load_config(config), out_root=tmp_path, progress=False)
    changed = load_config(config, ["data.image_size=32", "trainer.epochs=2"])
    message = r"data\.image_size: the run in .* was trained with 16, now 32"
    with pytest.raises(ConfigError, match=message):
        train(changed, resume=run, progress=False)
    with pytest.raises(ConfigError, match=message):  # before any process starts
        launch(changed, 2, resume=run)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4  # nothing trained
    assert train(load_config(config, ["trainer.epochs=2"]), resume=run, progress=False) == run
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8
    assert json.loads((run / "config.json").read_text())["trainer"]["epochs"] == 2


def test_resume_refuses_a_checkpoint_that_does_not_fit(tmp_path):
    run = train(load_config(tiny_config(tmp_path, epochs=1)), out_root=tmp_path, progress=False)
    # the one resume rule: a model field differing from the checkpoint's is named
    with pytest.raises(ConfigError, match=r"generator\.args\.hidden_dim: the run in .* was "
                                          r"trained with 8, now 16"):
        resume(run, overrides=["generator.args.hidden_dim=16"], progress=False)
    # weights that do not fit the specs a checkpoint carries are refused, naming the file
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    ckpt["models"]["generator"]["args"]["hidden_dim"] = 16
    atomic_save(ckpt, run / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt: does not match this config"):
        rebuild(run)


# ---------------------------------------------------------------------------
# Random mutations of valid configs: only ConfigError, never another exception

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=6)
VALID = [json.loads((ROOT / "configs" / name).read_text())
         for name in ("dcgan_demo.json", "dcgan_train.json")]


def paths(node, prefix=()):
    """Every key path of a nested dict, sections included."""
    for key, value in node.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from paths(value, (*prefix, key))


@st.composite
def mutated(draw):
    """A shipped config with 1-3 random edits, plus one `--set`-style override."""
    raw = json.loads(json.dumps(draw(st.sampled_from(VALID))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(paths(raw)) or [("name",)]))
        parent = raw
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["set", "delete", "add"]))
        if op == "set":
            parent[path[-1]] = draw(JSON)
        elif op == "delete":
            parent.pop(path[-1], None)
        else:
            parent[draw(st.text(max_size=8))] = draw(JSON)
    known = [".".join(p) for p in paths(raw)] or ["name"]
    key = draw(st.sampled_from(known) | st.text(max_size=12))
    value = draw(JSON.map(json.dumps) | st.text(max_size=8))
    return raw, f"{key}={value}" if draw(st.booleans()) else value


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_mutated_configs_raise_only_config_errors(case):
    raw, override = case
    try:
        apply_override(raw, override, "mutated.json")
        cfg = Config.from_dict(raw, "mutated.json")
    except ConfigError as e:
        assert str(e).startswith("mutated.json: ")
        return
    assert cfg.family == "dcgan" and cfg.total_steps >= 1
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # round-trips


def test_a_generator_not_yet_diverse_has_not_collapsed():
    """Low diversity before any evaluation read it healthy is a G still drawing its first
    blobs (the demo's DCGAN: 0.11 at step 100, then 0.56): no event until it falls back."""
    guard = Guard(load_config(ROOT / "configs" / "dcgan_demo.json").trainer)
    assert guard.collapse(0.11) is None and guard.collapse(0.2) is None
    assert guard.collapse(0.56) is None
    assert guard.collapse(0.1)["event"] == "collapse"
    resumed = Guard(guard.cfg)
    resumed.load_state_dict(guard.state_dict())  # a resumed run remembers it was diverse
    assert resumed.collapse(0.1)["event"] == "collapse"
