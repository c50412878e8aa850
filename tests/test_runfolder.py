"""The run folder: never silently reused, claimed atomically, locked while written, named
inside the output root; read-only inputs and damaged folders reported, not tracebacks."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import lib.config
import lib.training.evaluation as evaluation
import lib.training.resume as state
from lib.__main__ import main
from lib.config import ConfigError, load_config
from lib.core.checkpoint import CheckpointError, atomic_save, load_checkpoint
from lib.core.rundir import RunDir, RunFolderError, check_name, claim_new, lock, unlock
from lib.training.loop import resume, train
from lib.training.tracking import read_history

pytestmark = pytest.mark.usefixtures("one_thread")

DCGAN, CVAE = "configs/dcgan_demo.json", "configs/cvae_demo.json"
ROOT = Path(__file__).resolve().parents[1]


def tiny(tiny_overrides, *more):
    return load_config(DCGAN, [*tiny_overrides, "name=run", "wandb.mode=disabled",
                               "data.image_size=16", "generator.args.hidden_dim=8",
                               "discriminator.args.hidden_dim=8", *more])


# ---------------------------------------------------------------------------
# Claims and names


def test_rerun_goes_to_a_fresh_folder_and_leaves_the_old_one(tmp_path, tiny_overrides, capsys):
    first = train(tiny(tiny_overrides), out_root=tmp_path / "out", progress=False)
    before = (first / "history.jsonl").read_bytes()
    second = train(tiny(tiny_overrides), out_root=tmp_path / "out", progress=False)
    assert (first.name, second.name) == ("run", "run-2")
    assert (first / "history.jsonl").read_bytes() == before  # not appended to
    assert [r["step"] for r in read_history(second)] == [2, 4]
    err = capsys.readouterr().err
    assert f"{first} already exists; this run goes to {second}" in err
    assert f"--resume {first}" in err
    assert not (first / ".lock").exists() and not (second / ".lock").exists()  # released


def test_concurrent_claims_of_one_name_get_distinct_folders(tmp_path):
    got, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        got.append(claim_new(tmp_path, "same").root.name)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(["same"] + [f"same-{i}" for i in range(2, 9)])


@pytest.mark.parametrize("name", ["..", ".", "/tmp/abs", "a/../..", "a/b", "", "a\\b"])
def test_names_that_leave_the_output_root_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match=r"^name: .* is not a folder name"):
        check_name(name)
    with pytest.raises(ConfigError, match=r"^name: "):
        claim_new(tmp_path / "out", name)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_refuses_a_name_outside_out_before_training(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", DCGAN, "--set", "name=..", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: name: '..' is not a folder name") and len(err.splitlines()) == 1
    assert not (tmp_path / "checkpoints").exists() and not out.exists()


def test_lock_of_a_live_process_is_refused_a_dead_ones_taken_over(tmp_path):
    run = RunDir(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = os.uname().nodename
        run.lock_file.write_text(f"{other.pid} {host}")
        with pytest.raises(RunFolderError, match=rf"in use by process {other.pid}"):
            lock(run)
    finally:
        other.kill()
        other.wait()
    lock(run)  # its pid is dead now: a stale lock, taken over
    assert run.lock_file.read_text().split()[0] == str(os.getpid())
    lock(run)  # this process's own (a train() that raised in a notebook)
    unlock(run)
    assert not run.lock_file.exists()


def test_resume_of_a_folder_in_use_is_refused(tmp_path, tiny_overrides):
    run = train(tiny(tiny_overrides), out_root=tmp_path, progress=False)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(f"{other.pid} {os.uname().nodename}")
        with pytest.raises(RunFolderError, match="in use by process"):
            resume(run, overrides=["trainer.epochs=2"], progress=False)
    finally:
        other.kill()
        other.wait()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4  # untouched


# ---------------------------------------------------------------------------
# Damaged or foreign contents


def test_torn_history_line_is_dropped_reported_and_resume_continues(tmp_path, tiny_overrides,
                                                                    capsys):
    run = train(tiny(tiny_overrides), out_root=tmp_path, progress=False)
    with (run / "history.jsonl").open("a") as f:
        f.write('{"step": 6, "loss_d": 0.')  # a kill mid-append
    assert [r["step"] for r in read_history(run)] == [2, 4]
    assert "history.jsonl:3: dropped a torn or damaged line" in capsys.readouterr().err
    assert resume(run, overrides=["trainer.epochs=2"], progress=False) == run
    assert [r["step"] for r in read_history(run)] == [2, 4, 6, 8]
    assert all(json.loads(line) for line in (run / "history.jsonl").read_text().splitlines())


def test_checkpoint_of_another_family_in_a_run_folder_is_refused(tmp_path, tiny_overrides):
    dcgan = train(tiny(tiny_overrides), out_root=tmp_path, progress=False)
    cvae = train(load_config(CVAE, [*tiny_overrides, "wandb.mode=disabled", "name=cvae"]),
                 out_root=tmp_path, progress=False)
    shutil.copyfile(cvae / "checkpoints" / "last.pt", dcgan / "checkpoints" / "last.pt")
    config, history = (dcgan / "config.json").read_bytes(), (dcgan / "history.jsonl").read_bytes()
    message = r"last\.pt: a cvae checkpoint in a dcgan run folder"
    with pytest.raises(CheckpointError, match=message):
        resume(dcgan, progress=False)
    with pytest.raises(CheckpointError, match=message):  # a notebook's resume, its own config
        train(tiny(tiny_overrides), resume=dcgan, progress=False)
    assert (dcgan / "config.json").read_bytes() == config
    assert (dcgan / "history.jsonl").read_bytes() == history


def test_history_line_that_is_not_an_object_is_dropped_and_resume_continues(
        tmp_path, tiny_overrides, capsys):
    run = train(tiny(tiny_overrides), out_root=tmp_path, progress=False)
    with (run / "history.jsonl").open("a") as f:
        f.write('[1, 2]\n{"loss_d": 1.0}\n')  # valid JSON, not a record
    assert [r["step"] for r in read_history(run)] == [2, 4]
    err = capsys.readouterr().err
    assert ":3: dropped a torn or damaged line ('[1, 2]')" in err and ":4: dropped" in err
    assert resume(run, overrides=["trainer.epochs=2"], progress=False) == run
    assert [r["step"] for r in read_history(run)] == [2, 4, 6, 8]


# ---------------------------------------------------------------------------
# Kills at a chosen moment (a subprocess that SIGKILLs itself there: no sleep race)


def killed_cli(tmp_path: Path, prelude: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m lib ARGS` in a fresh process that `prelude` arranged to kill."""
    script = tmp_path / "killed.py"
    script.write_text("import os, signal, sys\n" + textwrap.dedent(prelude)
                      + "\nfrom lib.__main__ import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


# The kill lands just after a file named *history.jsonl* is opened for writing: what that
# open truncates is gone, nothing new is written yet (audit hooks run before the open).
KILL_AT_HISTORY_WRITE = """
    def hook(event, args):
        if event != "open" or "history.jsonl" not in os.path.basename(str(args[0])):
            return
        mode, flags = args[1] or "", args[2]
        if "w" in mode or flags & os.O_TRUNC:
            os.truncate(args[0], 0)
        if "w" in mode or "+" in mode or flags & (os.O_WRONLY | os.O_RDWR):
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
"""


def test_kill_while_a_resume_rewrites_the_history_keeps_it_whole(tmp_path, tiny_overrides):
    run = train(tiny(tiny_overrides), out_root=tmp_path, progress=False)
    with (run / "history.jsonl").open("a") as f:
        f.write('{"step": 6, "loss_d": 0.5}\n')  # logged after last.pt: the resume drops it
    before = (run / "history.jsonl").read_bytes()
    out = killed_cli(tmp_path, KILL_AT_HISTORY_WRITE, "train", "--resume", str(run),
                     "--set", "trainer.epochs=2")
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert (run / "history.jsonl").read_bytes() == before
    assert resume(run, overrides=["trainer.epochs=2"], progress=False) == run
    assert [r["step"] for r in read_history(run)] == [2, 4, 6, 8]
    assert not list(run.glob(".*.tmp"))


KILL_AT_THIRD_COPIED_FILE = """
    import shutil

    real, calls = shutil.copyfile, []

    def copyfile(a, b):
        calls.append(a)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(a, b)

    shutil.copyfile = copyfile
"""


def test_kill_during_a_resume_copy_leaves_nothing_and_the_retry_takes_the_name(
        tmp_path, tiny_overrides, capsys):
    source = train(tiny(tiny_overrides), out_root=tmp_path / "input", progress=False)
    out = tmp_path / "working"
    killed = killed_cli(tmp_path, KILL_AT_THIRD_COPIED_FILE, "train", "--resume", str(source),
                        "--out", str(out), "--set", "trainer.epochs=2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not RunDir(out / "run").has_checkpoint()
    copy = resume(source, out_root=out, overrides=["trainer.epochs=2"], progress=False)
    assert copy == out / "run" and sorted(out.iterdir()) == [copy]  # no run-2, no .copy-*
    assert "already exists" not in capsys.readouterr().err
    assert [r["step"] for r in read_history(copy)] == [2, 4, 6, 8]


def test_a_resume_reads_last_pt_once_and_validates_one_config(tmp_path, tiny_overrides,
                                                               monkeypatch):
    run = train(tiny(tiny_overrides), out_root=tmp_path, progress=False)
    last = run / "checkpoints" / "last.pt"
    loads, checks = [], []
    real_load, real_validate = torch.load, lib.config.validate

    def counted_load(f, *args, **kwargs):
        loads.append(f)
        return real_load(f, *args, **kwargs)

    def counted_validate(*args):
        checks.append(args)
        real_validate(*args)

    monkeypatch.setattr(torch, "load", counted_load)
    monkeypatch.setattr(lib.config, "validate", counted_validate)
    resume(run, overrides=["trainer.epochs=2"], progress=False)  # the CLI's --resume
    assert (loads.count(last), len(checks)) == (1, 1)  # the checkpoint's config + the override
    cfg = tiny(tiny_overrides, "trainer.epochs=3")  # a notebook's: validated where it is made
    loads.clear(), checks.clear()
    train(cfg, resume=run, progress=False)
    assert (loads.count(last), len(checks)) == (1, 0)
    assert load_checkpoint(last)["step"] == 12


# ---------------------------------------------------------------------------
# Read-only inputs


def read_only(folder):
    for p in folder.rglob("*"):
        p.chmod(0o444 if p.is_file() else 0o555)
    folder.chmod(0o555)


def writable(folder):
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_resume_from_a_read_only_run_makes_a_writable_copy(tmp_path, tiny_overrides):
    source = train(tiny(tiny_overrides), out_root=tmp_path / "input", progress=False)
    read_only(source)
    try:
        copy = resume(source, out_root=tmp_path / "working", overrides=["trainer.epochs=2"],
                      progress=False)
    finally:
        writable(source)
    assert copy == tmp_path / "working" / "run"
    assert load_checkpoint(copy / "checkpoints" / "last.pt")["step"] == 8
    for p in [copy, *copy.rglob("*")]:
        assert p.stat().st_mode & stat.S_IWUSR, p


def test_failed_copy_leaves_no_half_made_run(tmp_path, tiny_overrides, monkeypatch, capsys):
    source = train(tiny(tiny_overrides), out_root=tmp_path / "input", progress=False)
    calls, real = [], shutil.copyfile

    def flaky(a, b):
        calls.append(a)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(b))
        return real(a, b)

    monkeypatch.setattr(state.shutil, "copyfile", flaky)
    out = tmp_path / "working"
    assert main(["train", "--resume", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device (the disk is full" in err and len(err.splitlines()) == 1
    assert list(out.iterdir()) == []  # neither the claimed folder nor the temporary copy


def test_cli_names_the_path_it_cannot_write(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["train", DCGAN, "--out", str(blocker / "out"), "--set",
                 f"data.root={tmp_path / 'data'}", "--set", "trainer.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {blocker / 'out'}: Not a directory") and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_permission_error_is_one_line_with_what_to_do(monkeypatch, capsys):
    import lib.training.loop

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/kaggle/input/run/history.jsonl")

    monkeypatch.setattr(lib.training.loop, "train", denied)
    assert main(["train", DCGAN]) == 2
    err = capsys.readouterr().err
    assert err == ("error: /kaggle/input/run/history.jsonl: Permission denied (not writable by "
                   "this user: give a writable folder (--out DIR; a read-only run continues "
                   "with --resume RUN --out DIR) or change its permissions)\n")


def test_evaluate_on_a_read_only_run_says_where_the_scores_went(tmp_path, tiny_overrides,
                                                                monkeypatch, capsys):
    run = train(tiny(tiny_overrides), out_root=tmp_path, progress=False)
    stub = type("Stub", (), {"features": "stub", "num_samples": 8})()
    monkeypatch.setattr(evaluation, "make_evaluator", lambda *a, **k: stub)
    monkeypatch.setattr(evaluation, "evaluate_parts", lambda *a: {
        "fid": 12.5, "diversity": 0.5, "features": "stub", "n_fake": 8, "n_real": 8,
        "warnings": []})
    (run / "metrics.json").mkdir()  # unwritable as a file, even for root
    assert main(["evaluate", str(run), "--samples", "8"]) == 0
    out = capsys.readouterr().out
    assert "step 4: FID 12.5" in out
    assert f"warning: {run / 'metrics.json'} not written" in out and "read-only" in out
    assert not out.strip().splitlines()[-1].endswith("metrics.json")


def test_unwritable_metrics_cache_falls_back_with_a_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "data"
    blocker.write_text("a file where data.root/cache would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    with pytest.warns(UserWarning, match=r"data/cache is not writable .* goes to .*user/genlab"):
        got = evaluation.writable_cache(blocker / "cache")
    assert got == tmp_path / "user" / "genlab" and got.is_dir()
    assert evaluation.writable_cache(tmp_path / "fine") == tmp_path / "fine"


def test_notebook_refuses_a_name_outside_out_root(tmp_path, tiny_overrides):
    from lib.notebook import train_or_resume

    cfg = tiny(tiny_overrides, "name=..")  # config.py lets '.' and '..' through
    with pytest.raises(ConfigError, match="^name: '..' is not a folder name"):
        train_or_resume(cfg, tmp_path / "out")
    assert not (tmp_path / "checkpoints").exists()


# ---------------------------------------------------------------------------
# evaluate: the scores written into a run folder are that run's


def test_evaluate_refuses_a_checkpoint_of_another_family(tmp_path, tiny_overrides, capsys):
    dcgan = train(tiny(tiny_overrides), out_root=tmp_path, progress=False)
    cvae = train(load_config(CVAE, [*tiny_overrides, "wandb.mode=disabled", "name=cvae"]),
                 out_root=tmp_path, progress=False)
    shutil.copyfile(cvae / "checkpoints" / "last.pt", dcgan / "checkpoints" / "last.pt")
    assert main(["evaluate", str(dcgan), "--samples", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {dcgan / 'checkpoints' / 'last.pt'}: a cvae checkpoint in "
                          "a dcgan run folder") and len(err.splitlines()) == 1
    assert not (dcgan / "metrics.json").exists()


def test_evaluate_refuses_weights_that_are_not_finite(tmp_path, tiny_overrides, capsys):
    run = train(tiny(tiny_overrides), out_root=tmp_path, progress=False)
    last = run / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    key = next(k for k, t in ckpt["nets"]["generator"].items() if t.is_floating_point())
    ckpt["nets"]["generator"][key].fill_(float("nan"))
    atomic_save(ckpt, last)
    assert main(["evaluate", str(run), "--samples", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {last}: generator.{key} holds NaN or infinite values")
    assert len(err.splitlines()) == 1 and not (run / "metrics.json").exists()
