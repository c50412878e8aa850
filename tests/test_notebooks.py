"""The notebook suite: structure, the runner's parameter plumbing, the report, and every
notebook executed through the runner with smoke parameters."""

import ast
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from lib import notebook as nb
from lib.config import ConfigError, load_config
from lib.data import ImageData, duplicate_groups
from lib.notebook import datastats, report
from lib.notebook.params import field_of, preset_fields
from lib.runner import (
    NOTEBOOKS,
    RunnerError,
    declared_parameters,
    parse_overrides,
    plan,
    run_notebooks,
    together,
)

NOTEBOOK_DIR = Path("notebooks")
RUN_FILES = ["config.json", "history.jsonl", "summary.json", "checkpoints/last.pt",
             "evolution.gif", "final_grid.png"]


def error_outputs(path: Path) -> list[str]:
    book = nbformat.read(path, as_version=4)
    return [f"{o.ename}: {o.evalue}" for c in book.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.output_type == "error"]


# ---------------------------------------------------------------------------
# Structure of the committed notebooks


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean_with_a_literal_parameters_cell(name):
    book = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be parameters"
    assert book.metadata.kernelspec.get("language") == "python"  # papermill needs it
    names = []
    for stmt in ast.parse(code[0].source).body:
        assert isinstance(stmt, ast.AnnAssign), ast.unparse(stmt)  # annotated, for --help
        ast.literal_eval(stmt.value)  # literals only: derived values go in the next cell
        names.append(stmt.target.id)
    # papermill's parser skips lines it cannot read (e.g. a comment containing "=")
    declared = declared_parameters(NOTEBOOK_DIR / f"{name}.ipynb")
    assert list(declared) == names
    assert all(p["inferred_type_name"] != "None" for p in declared.values())  # --help-notebook
    for cell in code:
        assert not cell.outputs and cell.execution_count is None, "commit without outputs"


# ---------------------------------------------------------------------------
# Runner plumbing (no kernel)


def test_overrides_go_to_every_declaring_notebook_or_one_by_name():
    layers = [parse_overrides(["epochs=2", "02_dcgan.epochs=5", "name=x"])]
    params = plan(["01_data_exploration", "02_dcgan"], layers, NOTEBOOK_DIR)
    assert params["02_dcgan"] == {"epochs": 5, "name": "x"}
    assert params["01_data_exploration"] == {}  # it declares neither


def test_python_spellings_of_booleans_and_none_are_values_not_strings():
    """`-p resume=False` as papermill reads it: the string "False" would resume."""
    parsed = parse_overrides(["resume=False", "dedupe=True", "name=None", "epochs=2",
                              "02_dcgan.resume=false", "data_path=Falsehood"])
    assert parsed == {"*": {"resume": False, "dedupe": True, "name": None, "epochs": 2,
                            "data_path": "Falsehood"}, "02_dcgan": {"resume": False}}


def test_unknown_parameter_or_notebook_is_an_error_naming_it():
    with pytest.raises(RunnerError, match="epoch"):
        plan(["02_dcgan"], [parse_overrides(["epoch=2"])], NOTEBOOK_DIR)
    with pytest.raises(RunnerError, match="02_dcgan has no parameter 'per_class'"):
        plan(["02_dcgan"], [parse_overrides(["02_dcgan.per_class=2"])], NOTEBOOK_DIR)
    with pytest.raises(RunnerError, match="02_gan"):
        parse_overrides(["02_gan.epochs=1"])
    with pytest.raises(RunnerError, match="unknown notebook"):
        run_notebooks(["06_nothing"])


@pytest.mark.parametrize("preset", ["demo", "gpu"])
def test_presets_name_only_declared_parameters(preset):
    from lib.runner import load_preset

    plan(list(NOTEBOOKS), [load_preset(preset)], NOTEBOOK_DIR)


def test_parameters_map_onto_config_fields_by_their_names():
    cfg = nb.config_from_parameters("configs/dcgan_demo.json", dataset="shapes",
                                    image_size=16, epochs=3, wandb_mode="disabled",
                                    data_root=Path("/d"), generator_optimizer_lr=1e-3)
    assert (cfg.data.dataset, cfg.data.image_size, cfg.trainer.epochs) == ("shapes", 16, 3)
    assert (cfg.wandb.mode, cfg.data.root) == ("disabled", "/d")
    assert (cfg.generator_optimizer.lr, cfg.discriminator_optimizer.lr) == (1e-3, 2e-4)
    cvae = nb.config_from_parameters("cvae_demo", kl_weight=0.5, lr=1e-3, trainer_seed=3)
    assert (cvae.model.args["kl_weight"], cvae.optimizer.lr, cvae.trainer.seed) == (0.5, 1e-3, 3)
    with pytest.raises(ConfigError, match="unknown notebook parameter 'epoch'.* epochs,"):
        nb.config_from_parameters("configs/dcgan_demo.json", epoch=3)
    with pytest.raises(ConfigError, match="'seed' is ambiguous.*data_seed or trainer_seed"):
        nb.config_from_parameters("configs/dcgan_demo.json", seed=3)
    with pytest.raises(ConfigError, match="generator_optimizer_lr or discriminator_optimizer_lr"):
        nb.config_from_parameters("configs/dcgan_demo.json", lr=1e-3)
    # typed values go in as they are and are validated once, naming the field
    with pytest.raises(ConfigError, match="dcgan_demo.json with the notebook's parameters: "
                                          "trainer.batch_size: expected an integer"):
        nb.config_from_parameters("configs/dcgan_demo.json", batch_size="64")


def test_the_parameters_set_are_the_annotated_names_not_none():
    scope: dict = {}
    exec("preset: str = 'dcgan_demo'\nepochs: int = None\nlimit: int = None\n"
         "resume: bool = True\nhelper = 5\n", scope)
    scope["epochs"] = 3  # as papermill injects it, after the parameters cell
    assert nb.set_parameters(scope, notebook=("preset", "resume")) == {"epochs": 3}


def test_preset_changes_lists_only_what_differs():
    assert nb.preset_changes("dcgan_demo") == []
    assert nb.preset_changes("dcgan_demo", epochs=4, dataset="digits", max_minutes=0) == []
    assert nb.preset_changes("dcgan_demo", epochs=2, data_path=Path("/x")) == [
        {"field": "trainer.epochs", "preset": 4, "this run": 2},
        {"field": "data.path", "preset": None, "this run": "/x"}]


def test_a_preset_is_found_by_path_or_by_name():
    assert nb.find_preset("dcgan_train").resolve() == Path("configs/dcgan_train.json").resolve()
    assert nb.find_preset("dcgan_train.json").name == "dcgan_train.json"
    with pytest.raises(ConfigError, match="dcgan_trian.*dcgan_train") as e:
        nb.find_preset("dcgan_trian")
    assert "notebooks_demo" not in str(e.value)  # runner presets are not training presets


# ---------------------------------------------------------------------------
# The notebooks' own parameters and config cells, run without a kernel

TRAINING = {"02_dcgan": "dcgan", "03_cvae": "cvae", "04_ddpm": "ddpm"}
CONTROLS = {"preset", "resume", "resume_from", "gpus", "out_root", "data_root", "explore_steps"}


def notebook_config(notebook: str, tmp_path: Path, **params):
    """The config a notebook builds: its parameters cell, then `params` (as papermill injects
    them, after that cell), then its config cell."""
    book = nbformat.read(NOTEBOOK_DIR / f"{notebook}.ipynb", as_version=4)
    code = [c.source for c in book.cells if c.cell_type == "code"]
    scope: dict = {}
    exec(code[0], scope)
    scope.update(out_root=str(tmp_path / "out"), data_root=str(tmp_path / "data"), **params)
    exec(next(src for src in code if "config_from_parameters" in src), scope)
    return scope["cfg"]


def without_root(cfg) -> dict:
    d = cfg.to_dict()
    d["data"].pop("root")
    return d


@pytest.mark.parametrize("name,preset", [
    ("02_dcgan", "dcgan_train"), ("02_dcgan", "configs/dcgan_train.json"),
    ("03_cvae", "cvae_mnist"), ("04_ddpm", "ddpm_cats")])
def test_a_preset_alone_gives_exactly_its_run(tmp_path, name, preset):
    cfg = notebook_config(name, tmp_path, preset=preset)
    assert without_root(cfg) == without_root(load_config(nb.find_preset(preset)))
    if "dcgan_train" in preset:  # the course project's run
        t = cfg.trainer
        assert (t.epochs, t.iterations_per_epoch, t.batch_size) == (100, 1000, 128)
        assert cfg.name == "dcgan_train" and cfg.data.dataset == "cats"
        assert (cfg.wandb.project, cfg.wandb.mode) == ("dl2-gan-generation", "auto")


@pytest.mark.parametrize("name", TRAINING)
def test_the_demo_preset_runs_the_demo_configs(tmp_path, name):
    from lib.runner import load_preset

    layers = load_preset("demo")
    cfg = notebook_config(name, tmp_path, **{**layers.get("*", {}), **layers[name]})
    demo = load_config(f"configs/{TRAINING[name]}_demo.json")
    assert without_root(cfg) == without_root(demo)


# a value for each config parameter that differs from every preset's
SET_VALUES = {"name": "x1", "dataset": "shapes", "data_path": "/somewhere", "image_size": 16,
              "dedupe": True, "limit": 7, "epochs": 3, "iterations_per_epoch": 5,
              "batch_size": 8, "log_every_step": 2, "eval_every": 0, "eval_samples": 0,
              "features": "inception", "inception_weights": "/w.pt",
              "inception_download": True, "max_minutes": 1.5, "wandb_mode": "disabled",
              "kl_weight": 0.5, "sample_steps": 3}


@pytest.mark.parametrize("name", TRAINING)
def test_every_parameter_set_reaches_its_config_field(tmp_path, name):
    declared = set(declared_parameters(NOTEBOOK_DIR / f"{name}.ipynb"))
    given = {k: SET_VALUES[k] for k in declared - CONTROLS}
    cfg = notebook_config(name, tmp_path, **given)
    fields = preset_fields(cfg.to_dict())
    for key, value in given.items():
        assert fields[field_of(key, fields, name)] == value, key


@pytest.mark.parametrize("name", TRAINING)
def test_the_config_cell_shows_only_what_the_parameters_change(tmp_path, name, capsys):
    notebook_config(name, tmp_path)  # the preset as it is: nothing shown
    assert capsys.readouterr().out == ""
    notebook_config(name, tmp_path, epochs=7)
    shown = capsys.readouterr().out  # nb.table's bundle, printed outside a kernel
    assert "| trainer.epochs |" in shown and "| 7 |" in shown and "data.root" not in shown


def test_the_parameters_the_docs_name_exist_in_the_notebooks():
    """docs/kaggle.md and the README tell users to set `name=value`: each name must exist."""
    declared = {n: set(declared_parameters(NOTEBOOK_DIR / f"{n}.ipynb")) for n in NOTEBOOKS}
    for doc in ("docs/kaggle.md", "README.md"):
        text = Path(doc).read_text()
        named = set(re.findall(r"`([a-z_]+)=[^`]*`", text))  # not WANDB_MODE=, an env variable
        named |= set(re.findall(r"-p (?:\w+\.)?([a-z_]+)=", text))  # python -m lib notebooks
        assert named, doc
        missing = {p for p in named if not any(p in d for d in declared.values())}
        assert not missing, f"{doc} names parameters no notebook has: {missing}"
    for param in ("preset", "data_path", "features", "eval_every", "inception_weights",
                  "inception_download", "resume_from", "max_minutes", "gpus", "wandb_mode"):
        assert param in declared["02_dcgan"], param


# ---------------------------------------------------------------------------
# resume_from: a run from a read-only input, continued in out_root


def read_only(folder: Path, on: bool = True) -> None:
    """r--r--r-- files and r-x folders, as a Kaggle input is (or back to writable)."""
    for path in [folder, *folder.rglob("*")]:
        mode = (0o555 if path.is_dir() else 0o444) if on else (0o755 if path.is_dir() else 0o644)
        path.chmod(mode)


def test_resume_from_a_read_only_run_continues_a_writable_copy(tmp_path, tiny_overrides):
    cfg = load_config("configs/dcgan_demo.json", tiny_overrides + ["wandb.mode=disabled"])
    source = nb.train_or_resume(cfg, tmp_path / "input" / "outputs", progress=False)
    read_only(source)
    try:
        before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
        cfg.trainer.epochs = 2  # the next session asks for more steps
        with pytest.raises(ConfigError, match="resume=True"):
            nb.train_or_resume(cfg, tmp_path / "working", resume=False,
                               resume_from=tmp_path / "input")
        # the attached output as a whole: the run folder is found below it by name
        run = nb.train_or_resume(cfg, tmp_path / "working", resume_from=tmp_path / "input",
                                 progress=False)
        assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before
    finally:
        read_only(source, on=False)
    assert run == tmp_path / "working" / cfg.name
    records = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "event" not in r] == [2, 4, 6, 8]
    for path in [run / "history.jsonl", run / "config.json", *run.glob("samples/*.png")]:
        assert os.stat(path).st_mode & stat.S_IWUSR, path  # not the source's r--r--r--
    assert (run / "samples" / "step_0000008.png").is_file()


def test_resume_from_names_what_it_could_not_find(tmp_path):
    cfg = load_config("configs/dcgan_demo.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no run folder 'dcgan_demo' below it"):
        nb.train_or_resume(cfg, tmp_path / "out", resume_from=tmp_path / "empty")
    with pytest.raises(ConfigError, match="no such folder"):
        nb.train_or_resume(cfg, tmp_path / "out", resume_from=tmp_path / "nowhere")


# ---------------------------------------------------------------------------
# Data statistics and the report on hand-made inputs


def test_datastats_on_a_tiny_labelled_set():
    images = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
    images[3:] = 255
    data = ImageData(images, torch.tensor([0, 0, 0, 1, 1, 1]), ["dark", "light"], "tiny")
    assert datastats.class_counts(data) == {"dark": 3, "light": 3}
    (stats,) = datastats.channel_stats(data)
    assert (stats["model_min"], stats["model_max"], stats["model_mean"]) == (-1.0, 1.0, 0.0)
    assert datastats.overview(data)["imbalance"] == 1.0
    mean = datastats.mean_images(data)
    assert mean.width >= 256
    assert datastats.class_samples(data, per_class=4).height > 0


def test_datastats_reports_exact_duplicates():
    gen = torch.Generator().manual_seed(0)
    distinct = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=gen)
    images = distinct[[0, 1, 0, 2, 0, 3, 1, 4]]  # image 0 three times, image 1 twice
    data = ImageData(images, None, None, "tiny")
    groups = duplicate_groups(images)
    assert groups == [[0, 2, 4], [1, 6]]  # largest first
    assert datastats.duplicates(data, groups) == {
        "images": 8, "distinct": 5, "duplicates": 3, "duplicate_share": 0.375,
        "repeated_images": 2, "largest_group": 3}
    assert datastats.duplicate_rows(groups, show=2) == [
        {"copies": 3, "indices": "0, 2, ..."}, {"copies": 2, "indices": "1, 6"}]
    figure = datastats.duplicates_figure(data, groups, per_group=3)
    assert figure.width >= 256 and figure.height > 0
    unique = ImageData(distinct, None, None, "tiny")
    assert datastats.duplicates(unique)["duplicates"] == 0
    assert datastats.duplicates_figure(unique, []) is None


def fake_run(root: Path, name: str, family: str, metrics: dict | None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": {"dataset": "digits",
                                                          "image_size": 16}}))
    (run / "summary.json").write_text(json.dumps(
        {"step": 8, "total_steps": 8, "finished": True, "family": family,
         "images_seen": 128, "train_seconds": 2.0}))
    history = [{"step": 4, "loss": 1.0, "train_seconds": 1.0},
               {"step": 8, "loss": 0.5, "train_seconds": 2.0, **(metrics or {})}]
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return run


def test_report_shows_dash_for_runs_without_metrics(tmp_path):
    fake_run(tmp_path, "a_gan", "dcgan", {"fid": 12.5, "kid": 0.01, "ssim_nearest": 0.4,
                                          "diversity": 0.9, "features": "classifier"})
    fake_run(tmp_path, "b_vae", "cvae", None)
    (tmp_path / "notebooks").mkdir()  # executed notebooks are not runs
    runs = report.load_runs(tmp_path)
    assert [r.name for r in runs] == ["a_gan", "b_vae"]
    rows = report.table_rows(runs)
    assert (rows[0]["FID"], rows[0]["features"], rows[0]["images/s"]) == ("12.5", "classifier",
                                                                         "64")
    assert rows[1]["FID"] == rows[1]["SSIM"] == rows[1]["sampling ms/image"] == "-"
    assert rows[0]["SSIM"] == "0.4 (nearest)"  # which SSIM: nearest real image vs recon
    page = report.export_html(runs, tmp_path / "report" / "report.html").read_text()
    assert "a_gan" in page and "b_vae" in page
    assert (tmp_path / "report" / "quality_vs_compute.png").is_file()


def test_report_shows_the_uncertainty_of_fid_and_kid(tmp_path):
    fake_run(tmp_path, "a_vae", "cvae", {"fid": 40.0, "fid_low": 36.5, "fid_high": 44.0,
                                         "kid": 2.0, "kid_std": 0.5, "ssim_recon": 0.8,
                                         "ssim_nearest": 0.3})
    row = report.table_rows(report.load_runs(tmp_path))[0]
    assert (row["FID"], row["KID"], row["SSIM"]) == ("40 [36.5, 44]", "2 ± 0.5", "0.8 (recon)")


# ---------------------------------------------------------------------------
# The suite, executed


def test_every_notebook_runs_through_the_runner(executed_suite):
    names, out, ran, lines = executed_suite
    assert ran == names
    assert sum(" ok in " in line for line in lines) == len(names)
    for name in names:
        executed = out / "notebooks" / f"{name}.ipynb"
        assert executed.is_file() and error_outputs(executed) == [], name
    runs = report.find_runs(out)
    families = {n.split("_")[1] for n in names if n[:2] in ("02", "03", "04")}
    assert {report.load_run(r).family for r in runs} == families
    for run in runs:
        for name in RUN_FILES:
            assert (run / name).is_file(), (run.name, name)
        assert json.loads((run / "summary.json").read_text())["step"] == 4
    page = (out / "report" / "report.html").read_text()
    assert all(run.name in page for run in runs)
    assert page.count("data:image/gif;base64") >= len(runs)


def test_notebooks_side_by_side_keep_suite_order_and_the_first_failure():
    """Several at once: results in suite order; a failure is raised once the others that
    were running have ended, and nothing starts after it."""
    import threading
    import time as clock

    ended, both_running = [], threading.Barrier(2, timeout=10)

    def run(name):
        if name in ("a", "b"):
            both_running.wait()  # a and b are truly side by side, or this times out
        clock.sleep(0.05 if name == "a" else 0)
        if name == "c":
            raise RuntimeError("c failed")
        ended.append(name)
        return name

    assert together(run, ["a", "b"], jobs=2) == ["a", "b"]
    ended.clear()
    both_running.reset()
    with pytest.raises(RuntimeError, match="c failed"):
        together(run, ["c", "a", "b", "d"], jobs=1)
    assert ended == []  # one at a time: nothing after the failure
    with pytest.raises(RuntimeError, match="c failed"):
        together(lambda n: run(n) if n != "a" else clock.sleep(0.2) or ended.append(n),
                 ["a", "c", "d"], jobs=2)
    assert "a" in ended and "d" not in ended  # a, running, ended; d never started


def test_a_failing_notebook_stops_the_run_naming_notebook_and_cell(tmp_path):
    out = tmp_path / "outputs"
    good = out / "notebooks" / "01_data_exploration.ipynb"  # an earlier run's good copy
    good.parent.mkdir(parents=True)
    good.write_text("the last good copy")
    proc = subprocess.run(
        [sys.executable, "-m", "lib", "notebooks", "--only", "01_data_exploration", "05_report",
         "--out", str(out), "-p", f"data_root={tmp_path / 'data'}",
         "-p", "01_data_exploration.dataset=no_such_dataset"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "notebook 01_data_exploration failed in cell" in proc.stderr
    assert "no_such_dataset" in proc.stderr
    assert "[1/2] 01_data_exploration ..." in proc.stdout
    assert "05_report" not in proc.stdout  # the run stopped at the failure
    failed = out / "notebooks" / "01_data_exploration.failed.ipynb"
    assert any("no_such_dataset" in e for e in error_outputs(failed))
    assert good.read_text() == "the last good copy"  # not overwritten by the failed run
    assert not (out / "notebooks" / "01_data_exploration.running.ipynb").exists()
    assert f"partly executed copy: {failed}" in proc.stderr
    assert f"last good executed copy (an earlier run), kept: {good}" in proc.stderr


def test_every_executed_notebook_exports_to_a_clean_page(executed_suite):
    from nbconvert import HTMLExporter

    names, out, _, _ = executed_suite
    for name in names:
        book = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        page, _ = HTMLExporter().from_notebook_node(book)
        (out / "notebooks" / f"{name}.html").write_text(page)  # to look at after a failure
        outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
        assert not re.findall(r"\w*Warning\b", page), name  # FutureWarning, UserWarning...
        widgets = [o for o in outputs
                   if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert widgets == [], name  # a saved widget shows as nothing in the page
        sources = "".join(c.source for c in book.cells if c.cell_type == "code")
        gifs = page.count("data:image/gif;base64,")
        if name == "05_report":
            assert gifs >= len(names) - 2, name  # one run per training notebook, at least
        else:
            assert gifs == sources.count('.gif"'), name  # every GIF shown, none missing
        if name in ("02_dcgan", "03_cvae", "04_ddpm"):
            assert gifs > 0 and re.search(r"4/4 \[", page), name  # the bar as plain text
