"""benchmarks/conditional.py: the CVAE and class-conditional DDPM rows of the ablation, and
a check that every benchmark script still imports (a moved name broke one unnoticed)."""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_script_imports(script):
    module = load(script)
    assert callable(getattr(module, "main", None))


def test_variants_compare_the_label_wiring_at_equal_steps(tmp_path):
    conditional = load("conditional")
    args = SimpleNamespace(image_size=16, data_root=tmp_path, steps=300, seed=0, set=[])
    for dataset in ("digits", "shapes"):
        configs = {v: conditional.variant_config(v, dataset, args) for v in conditional.VARIANTS}
        assert {(c.total_steps, c.data.dataset, c.data.image_size, c.trainer.eval_samples)
                for c in configs.values()} == {(300, dataset, 16, 0)}
        stages = {v: c.model.args.get("label_every_stage", True)
                  for v, c in configs.items() if c.family == "cvae"}
        assert sorted(stages.values()) == [False, True]
        ddpm = [c for c in configs.values() if c.family == "ddpm"]
        assert len(ddpm) == 1 and ddpm[0].model.args["cond_drop_prob"] > 0  # CFG can apply
        assert conditional.guidance_scales(ddpm[0], [2.0]) == {
            "no guidance (scale 1)": 1.0, "guidance 1.5 (the preset's)": 1.5, "guidance 2": 2.0}


def test_a_toy_run_scores_every_row_with_class_accuracy(tmp_path):
    conditional = load("conditional")
    assert conditional.main(["--data", "digits", "--steps", "2", "--n", "40", "--threads", "1",
                             "--out", str(tmp_path / "out"),
                             "--data-root", str(tmp_path / "root")]) == 0
    rows = json.loads((tmp_path / "out" / "conditional.json").read_text())["digits"]
    assert list(rows) == ["real vs real (half B)",
                          "cvae, label at the decoder input only",
                          "cvae, label at every decoder stage (default)",
                          "ddpm class-conditional, no guidance (scale 1)",
                          "ddpm class-conditional, guidance 1.5 (the preset's)"]
    assert rows["real vs real (half B)"]["class_accuracy"] > 0.8  # the classifier's ceiling
    for name, row in rows.items():
        assert 0 <= row["class_accuracy"] <= 1 and row["fid"] >= 0
        assert ("label_sensitivity" in row) == name.startswith("cvae"), name
        assert row["protocol"]["features"] == "classifier"
    for name in list(rows)[1:]:
        assert Path(rows[name]["run_dir"]).is_dir() and rows[name]["steps"] == 2
    ddpm_run = Path(rows["ddpm class-conditional, guidance 1.5 (the preset's)"]["run_dir"])
    assert {p.name for p in ddpm_run.glob("scored*.png")} == {"scored_guidance1.png",
                                                              "scored_guidance1.5.png"}
    text = (tmp_path / "out" / "conditional.md").read_text()
    assert "FID protocol: classifier" in text and "| class accuracy |" in text
