"""Training's intra-op threads: the cores this process may use, less those other processes
hold; an OMP_NUM_THREADS already set is kept; and OpenMP's threads sleep instead of spinning."""

import os
import subprocess
import sys

import pytest
import torch

from lib.core import device
from lib.core.device import choose_threads


@pytest.fixture
def two_cores(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "TORCH_THREADS", 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    yield
    torch.set_num_threads(threads)


# (processes running elsewhere, threads chosen, a line said)
CASES = [(0, 2, False), (1, 1, True), (2, 1, True), (7, 1, True)]


@pytest.mark.parametrize(("others", "threads", "said"), CASES)
def test_threads_leave_the_cores_other_processes_hold(two_cores, monkeypatch, capsys,
                                                      others, threads, said):
    monkeypatch.setattr(device, "others_running", lambda: others)
    choose_threads()
    assert torch.get_num_threads() == threads
    out = capsys.readouterr().out
    assert out == (f"torch threads: 1 instead of 2 ({others} other processes running on 2 "
                   "cores)\n" if said else "")


def test_a_thread_count_in_the_environment_is_kept(two_cores, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(device, "others_running", lambda: 0)
    torch.set_num_threads(1)
    choose_threads()
    assert torch.get_num_threads() == 1 and capsys.readouterr().out == ""


def test_others_running_counts_a_busy_process():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        counts = [device.others_running() for _ in range(20)]
    finally:
        busy.kill()
        busy.wait()
    assert max(counts) >= 1


def test_importing_lib_makes_openmp_threads_sleep_when_waiting():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    # set by `import lib` itself, before any torch import reads it
    probe = "import lib, os, sys; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.split() == ["PASSIVE", "False"], out.stderr
