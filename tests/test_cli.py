"""The command line answers --help at once, keeps its usage layout, and says where presets are."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.__main__ import build_parser, main

ROOT = Path(__file__).resolve().parent.parent

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


# ---------------------------------------------------------------------------
# Values the command line takes that its config fields bound: the same bounds


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Two steps of a tiny DCGAN on the embedded digits."""
    tmp = tmp_path_factory.mktemp("cli")
    assert main(["train", "configs/dcgan_demo.json", "--out", str(tmp), "--set", "name=run",
                 "--set", f"data.root={tmp / 'data'}", "--set", "data.image_size=8",
                 "--set", "generator.args.hidden_dim=4", "--set",
                 "discriminator.args.hidden_dim=4", "--set", "trainer.epochs=1", "--set",
                 "trainer.iterations_per_epoch=2", "--set", "trainer.batch_size=4", "--set",
                 "trainer.eval_samples=0", "--set", "wandb.mode=disabled"]) == 0
    return tmp / "run"


@pytest.mark.parametrize("samples", [None, "0", "-5", "1", "1000000000"])
def test_evaluate_samples_out_of_bounds_is_one_line(run, capsys, samples):
    capsys.readouterr()
    flag = [] if samples is None else ["--samples", samples]  # None: the run's 0
    assert main(["evaluate", str(run), *flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: evaluate: {samples or 0} samples; give --samples N with N "
                          "in [2, 100,000]") and len(err.splitlines()) == 1
    assert not (run / "metrics.json").exists()


# ---------------------------------------------------------------------------
# Notebook presets: the config loader's one-line errors


@pytest.mark.parametrize("text, words", [
    ('{"02_dcgan": {"epochs": 1},}', "not a valid JSON preset (Expecting property name"),
    ('[{"02_dcgan": {"epochs": 1}}]', "expected a JSON object {notebook: {parameter: value}} "
                                      "at the top, got a list"),
    (b"\xff\xfe{}", "not a valid JSON preset ('utf-8' codec can't decode"),
])
def test_bad_notebook_preset_is_one_line(tmp_path, capsys, text, words):
    bad = tmp_path / "bad.json"
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["notebooks", "--preset", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: {words}") and len(err.splitlines()) == 1


CONFIG_ERROR_PROBE = """
import sys
from lib.__main__ import main
code = main(["train", sys.argv[1]])
print("exit", code, "torch loaded:", "torch" in sys.modules)
"""


def test_config_error_answers_before_torch_loads(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"type": "UNet"}, "trainer": {"epochs": "x"}}')
    out = subprocess.run([sys.executable, "-c", CONFIG_ERROR_PROBE, str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["exit", "2", "torch", "loaded:", "False"], out.stderr
    assert out.stderr.splitlines() == [f"error: {bad}: trainer.epochs: expected an integer, "
                                       "got 'x'"]


def test_ctrl_c_while_torch_imports_is_one_line_and_exit_130(tmp_path):
    # a stand-in torch whose import is interrupted, as a Ctrl-C in the first seconds would
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise KeyboardInterrupt\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    for argv in (["train", "configs/dcgan_demo.json"], ["evaluate", str(tmp_path)]):
        out = subprocess.run([sys.executable, "-m", "lib", *argv], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 130 and out.stderr == "interrupted\n", (argv, out.stderr)
