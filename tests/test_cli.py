"""The command line answers --help at once, keeps its usage layout, and says where presets are."""

import subprocess
import sys

from lib.__main__ import build_parser, main

HELP_IMPORTS = """
import runpy, sys
sys.argv = ["python -m lib", "--help"]
try:
    runpy.run_module("lib", run_name="__main__")
except SystemExit:
    pass
print("heavy:", sorted(m for m in ("torch", "torchmetrics", "papermill", "matplotlib")
                       if m in sys.modules))
"""


def test_help_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", HELP_IMPORTS], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage: python -m lib" in out.stdout and "heavy: []" in out.stdout


def test_help_keeps_one_usage_line_per_command():
    text = build_parser().format_help()
    lines = text.splitlines()
    for command in ("train", "evaluate", "notebooks", "demo"):
        assert any(line.startswith(f"  python -m lib {command}") for line in lines), text


def test_missing_config_names_the_presets(tmp_path, capsys):
    assert main(["train", str(tmp_path / "dcgan.json")]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and "configs" in err and "dcgan_demo.json" in err
    assert len(err.splitlines()) == 1
