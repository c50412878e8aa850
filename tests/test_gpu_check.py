"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check at toy size on the CPU.

On a GPU machine the same script measures the real figures; here it must run end to end
and leave the folder a person reads (summary, logs, figures, the cats run). About a
minute on a quiet 2-core machine (mostly Python start-ups: one per step).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_dry_run_writes_every_figure_and_log_into_one_folder(tmp_path):
    out = tmp_path / "gpu_check"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    ran = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run",
                          "--out", str(out)], capture_output=True, text=True, env=env,
                         timeout=900)
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["install", "env", "tests", "throughput",
                                                     "cats"]
    assert all(s["rc"] == 0 for s in summary["steps"])
    for name in ("install", "env", "tests", "throughput", "cats", "summary"):
        assert (out / f"{name}.log").is_file(), name
    # on a CPU the GPU tests are collected and skipped with their reason; none fails
    tests = summary["tests"]
    assert tests["failed"] == 0 and tests["passed"] == 0 and tests["skipped"] >= 10
    assert any("CUDA" in reason for reason in tests["skip_reasons"])
    rows = summary["throughput"]["rows"]
    for label in ("reference (dcgan/main.py)", "project", "- channels_last",
                  "+ host sync every step", "- resident data (DataLoader)", "+ compile"):
        assert rows[label]["ips"] > 0, label
    cats = summary["cats"]
    assert cats["iterations"] == 4 and cats["batch"] == 8 and cats["images_per_sec"] > 0
    minutes = 100_000 * 8 / cats["images_per_sec"] / 60  # the course run at this speed
    assert cats["projected_full_run_minutes"] == pytest.approx(minutes)
    for name in ("summary.md", "throughput.png", "throughput.json", "env.json", "tests.xml",
                 "cats_run/final_grid.png", "cats_run/history.jsonl"):
        assert (out / name).is_file(), name
    assert "project / reference" in (out / "summary.md").read_text()
    assert summary["targets"] == {}  # the GPU targets are not judged on a CPU
