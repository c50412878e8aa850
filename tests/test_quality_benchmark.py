"""benchmarks/quality.py --ablation: every variant builds a valid config that carries its option.

The end-to-end run at toy size takes minutes on a busy 2-core box (each DDPM run samples its
snapshots), so this checks the variant list and the sizing without training.
"""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def benchmark(name: str):
    """benchmarks/<name>.py as a module (registered, so that a script importing it, as
    ema_schedules imports quality, gets the same one)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quality():
    return benchmark("quality")


def args(tmp_path, batch_size=0):
    return SimpleNamespace(image_size=32, data=tmp_path / "cats", data_root=tmp_path,
                           device="cpu", seed=0, batch_size=batch_size)


def test_every_variant_builds_a_valid_config_with_its_option(quality, tmp_path):
    configs = {v: quality.ablation_config(v, args(tmp_path), 300) for v in quality.ABLATION}
    assert len(configs) == 14  # 11 GAN (reference, 5 options, all, preset, +DiffAug,
    # +RpGAN with R1/R2, +RaLSGAN) + 3 DDPM
    gan = {v: c for v, c in configs.items() if c.family == "dcgan"}
    ddpm = {v: c for v, c in configs.items() if c.family == "ddpm"}
    assert len(gan) == 11 and len(ddpm) == 3
    # equal compute: the same steps and batch within a family, one snapshot at the end
    assert {(c.total_steps, c.trainer.batch_size, c.trainer.log_every_step)
            for c in gan.values()} == {(300, 128, 300)}
    assert {(c.total_steps, c.trainer.batch_size) for c in ddpm.values()} == {(300, 64)}
    assert all(c.data.image_size == 32 and c.trainer.eval_samples == 0
               for c in configs.values())

    ref = gan["dcgan reference"]
    assert ref.gan is None and ref.trainer.ema_decay == 0
    assert ref.generator_optimizer.lr == ref.discriminator_optimizer.lr == 2e-4
    assert ref.discriminator.args == {"n_channels": 3, "hidden_dim": 64}  # the course preset
    by_option = {v.split(" + ")[1].split(" (")[0]: c for v, c in gan.items() if " + " in v}
    assert by_option["DiffAugment"].gan.augment == "color,translation,cutout"
    assert by_option["hinge loss"].gan.loss == "hinge"
    sn = by_option["spectral norm in D"]
    assert sn.gan.loss == "hinge" and sn.discriminator.args["spectral_norm"] is True
    assert sn.discriminator.args["batch_norm"] is False
    ttur = by_option["TTUR"]
    assert (ttur.discriminator_optimizer.lr, ttur.generator_optimizer.lr) == (4e-4, 1e-4)
    assert by_option["EMA of G"].trainer.ema_decay == 0.999
    assert by_option["EMA of G"].trainer.ema_power > 0  # warm-up for a short run
    combined = by_option["all of the above"]
    assert (combined.gan.loss, combined.gan.augment) == ("hinge", "color,translation,cutout")
    assert combined.discriminator.args["spectral_norm"] and combined.trainer.ema_decay > 0
    preset = gan["dcgan + the strong preset's options"]
    augmented = gan["dcgan + the strong preset's options + DiffAugment"]
    assert augmented.gan.augment == "color,translation,cutout" and not preset.gan.augment
    assert augmented.gan.loss == preset.gan.loss and augmented.trainer == preset.trainer

    objectives = {(c.model.args.get("prediction", "eps"),
                   c.model.args.get("loss_weighting", "none")) for c in ddpm.values()}
    assert objectives == {("eps", "none"), ("v", "none"), ("eps", "min_snr")}
    assert quality.SAMPLER_MODEL in ddpm
    assert {s for s, _ in quality.SAMPLERS.values()} == {"dpm++2m"}


def test_batch_size_override_and_step_sizing(quality, tmp_path):
    cfg = quality.ablation_config("dcgan reference", args(tmp_path, batch_size=8), 2)
    assert cfg.trainer.batch_size == 8 and cfg.total_steps == 2
    # 7 runs of 0.6 s a step in 25 minutes: 357 steps each, rounded down to tens
    assert quality.pick_steps(0.6, 25, 7) == 350
    assert quality.pick_steps(100.0, 1, 7) == 20  # never fewer than the floor


def test_a_curve_run_saves_and_scores_evenly_spaced_checkpoints(quality, tmp_path,
                                                                 tiny_overrides):
    """--curve K: the same training, cut into K parts that each end with a history line and a
    checkpoint; every checkpoint but the last is scored again, the last point is the row's."""
    from lib.config import load_config
    from lib.training.loop import train

    one = quality.ablation_config("dcgan reference", args(tmp_path), 1200)
    four = quality.ablation_config("dcgan reference", args(tmp_path), 1200, points=4)
    assert one.total_steps == four.total_steps == 1200
    assert (four.trainer.epochs, four.trainer.iterations_per_epoch,
            four.trainer.log_every_step, four.trainer.save_period,
            four.trainer.keep_checkpoints) == (4, 300, 300, 1, 4)  # none pruned
    assert (one.trainer.epochs, one.trainer.log_every_step) == (1, 1200)

    run = train(load_config(ROOT / "configs" / "dcgan_demo.json",
                            [*tiny_overrides, "trainer.epochs=3", "trainer.iterations_per_epoch=2",
                             "trainer.save_period=1"]),
                out_root=tmp_path, progress=False)
    scored = []

    class Evaluator:  # the score of an image batch: its mean, recorded
        def evaluate(self, fake):
            scored.append(float(fake.float().mean()))
            return {"fid": scored[-1], "diversity": 1.0 / len(scored)}

    last = {"steps": 6, "fid": -1.0, "diversity": 0.25, "kid": 0.5, "cpu_s_per_step": 2.0}
    curve = quality.score_curve(run, Evaluator(), 6, 0, None, last)
    assert [p["step"] for p in curve] == [2, 4, 6]
    assert len(scored) == 2 and scored[0] != scored[1]  # two checkpoints, two sets of weights
    assert curve[-1] == {"step": 6, "fid": -1.0, "diversity": 0.25, "kid": 0.5}
    assert all((run / f"scored_step_{step:07d}.png").is_file() for step in (2, 4))
    table = quality.curve_table({"dcgan reference": {"curve": curve}, "other": {"fid": 1.0}})
    assert "| variant | step 2 | step 4 | step 6 |" in table
    assert f"| dcgan reference | {scored[0]:.1f} / 1.00 | {scored[1]:.1f} / 0.50 | -1.0 / 0.25 |" \
        in table and "other" not in table
    assert quality.curve_table({"other": {"fid": 1.0}}) == ""


def test_merge_orders_split_runs_and_names_what_is_missing(quality, tmp_path):
    protocol = {"features": "inception", "n_fake": 10}
    row = {"fid": 50.0, "fid_low": 45.0, "fid_high": 55.0, "kid": 0.01, "kid_std": 0.001,
           "diversity": 0.9, "protocol": protocol}
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    (first / "quality.json").write_text(quality.json.dumps(
        {"rows": {"dcgan + hinge loss": row, "real vs real (half B)": row}}))
    (second / "quality.partial.json").write_text(quality.json.dumps(  # a run stopped early
        {"dcgan reference": {**row, "fid": 60.0, "steps": 100}}))
    text = quality.merge([first, second])
    body = [line for line in text.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [line.split(" | ")[0] for line in body] == [
        "| real vs real (half B)", "| dcgan reference", "| dcgan + hinge loss"]
    assert "60.0 (45.0-55.0)" in body[1] and "not measured: dcgan + DiffAugment" in text


def test_a_second_training_seed_keeps_the_reference_and_names_its_rows(quality, tmp_path):
    same = args(tmp_path)
    other = SimpleNamespace(**vars(same), train_seed=1)
    assert quality.ablation_config("dcgan reference", same, 2).trainer.seed == 0
    assert quality.ablation_config("dcgan reference", other, 2).trainer.seed == 1
    assert quality.row_name("dcgan reference", same) == "dcgan reference"
    assert quality.row_name("dcgan reference", other) == "dcgan reference, train seed 1"


def test_the_strong_preset_row_trains_what_the_preset_changes(quality, tmp_path):
    """The ablation's preset row and configs/dcgan_cats_strong.json agree on every option."""
    from lib.config import load_config

    row = quality.ablation_config("dcgan + the strong preset's options", args(tmp_path), 2)
    preset = load_config(ROOT / "configs" / "dcgan_cats_strong.json")
    course = load_config(ROOT / "configs" / "dcgan_train.json")
    assert row.gan == preset.gan and row.gan != course.gan
    for part in ("generator", "discriminator", "generator_optimizer",
                 "discriminator_optimizer"):
        assert getattr(row, part) == getattr(preset, part), part
    for field in ("ema_decay", "ema_power", "batch_size"):
        assert getattr(row.trainer, field) == getattr(preset.trainer, field), field


def test_rescore_scores_the_gan_rows_again_and_keeps_the_rest(quality, tmp_path, tiny_overrides):
    """--rescore: after a change to how GANs sample, their rows are scored again from the
    checkpoints; training columns, other rows and (once) the rows as they were are kept."""
    from lib.config import load_config
    from lib.training.loop import train

    run = train(load_config(ROOT / "configs" / "dcgan_demo.json", tiny_overrides),
                out_root=tmp_path, progress=False)
    scored = []

    class Evaluator:  # the score of an image batch: its mean, recorded
        def evaluate(self, fake):
            scored.append(fake.shape)
            return {"fid": float(fake.float().mean()), "diversity": 1.0}

    gan = {"fid": -1.0, "diversity": 0.5, "cpu_s_per_step": 0.7, "steps": 4,
           "grid": str(run / "final_grid.png")}
    other = {"fid": 30.0, "diversity": 1.0}
    folder = tmp_path / "q"
    folder.mkdir()
    saved = {"rows": {"real vs real (half B)": other, "dcgan reference": gan},
             "args": {"n": "6", "seed": "0"}}
    (folder / "quality.json").write_text(quality.json.dumps(saved))
    quality.rescore([folder], Evaluator(), 6, 0)
    rows = quality.json.loads((folder / "quality.json").read_text())["rows"]
    assert scored == [(6, 1, 16, 16)]  # the GAN row only, n images
    assert rows["real vs real (half B)"] == other
    new = rows["dcgan reference"]
    assert new["fid"] != -1.0 and new["cpu_s_per_step"] == 0.7 and new["steps"] == 4
    assert new["batchnorm"] == "standing" and new["sampled_with"] == "raw"
    assert "standing BN" in quality.ablation_table(rows)
    before = quality.json.loads((folder / "quality.before_rescore.json").read_text())
    assert before == saved
    with pytest.raises(SystemExit, match="--n 6 --seed 0"):
        quality.rescore([folder], Evaluator(), 500, 0)


def test_ema_schedules_keeps_each_average_beside_one_training_run(tmp_path, tiny_overrides):
    module = benchmark("ema_schedules")
    from lib.config import load_config
    from lib.data import load_dataset

    assert module.parse_schedule("0.999:0.6") == (0.999, 0.6)
    with pytest.raises(SystemExit, match="DECAY:POWER"):
        module.parse_schedule("fast")
    cfg = load_config(ROOT / "configs" / "dcgan_demo.json", tiny_overrides)
    data = load_dataset(cfg.data.dataset, cfg.data.image_size, root=cfg.data.root)
    family, parts, averages = module.train_with_averages(
        cfg, data, {"none": (0.0, 0.0), "slow": (0.9, 0.0), "warm": (0.9, 1.0)})
    G = parts.nets["generator"]
    for name, ema in averages.items():
        same = all(torch.equal(a, b) for a, b in zip(ema.averages["generator"].parameters(),
                                                     G.parameters(), strict=True))
        assert same == (name == "none"), name  # decay 0 is the trained G, the others lag it
    # power 1: 1 - 1/(1+step), the plain mean of every step's G; constant 0.9 weighs late ones
    assert averages["warm"].decay_at(4) == pytest.approx(0.8)


def test_a_generator_collapsed_to_k_modes_scores_about_one_minus_one_over_k():
    """benchmarks/diversity_modes.py, on features whose pairwise distances concentrate
    (independent Gaussians in 256 dimensions): pairs within a mode are at distance 0."""
    module = benchmark("diversity_modes")
    features = torch.randn(300, 256, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
    assert module.collapsed_diversity(features, 1, 200, 3) == (0.0, 0.0, 0.0)
    for k in (2, 4, 20):
        mean, low, high = module.collapsed_diversity(features, k, 200, 5)
        assert low <= mean <= high
        assert mean == pytest.approx(1 - 1 / k, abs=0.06), k
