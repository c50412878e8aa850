import json

import pytest

from lib.config import Config, ConfigError, TrainerConfig, load_config
from lib.families import FAMILIES

COURSE = {
    "generator": {"type": "Generator",
                  "args": {"latent_dim": 100, "hidden_dim": 64, "n_channels": 3}},
    "discriminator": {"type": "Discriminator", "args": {"n_channels": 3, "hidden_dim": 64}},
    "generator_optimizer": {"lr": 2e-4, "betas": [0.5, 0.999], "weight_decay": 0},
    "discriminator_optimizer": {"lr": 2e-4, "betas": [0.5, 0.999], "weight_decay": 0},
    "generator_lr_scheduler": {"gamma": 0.9999977},
    "discriminator_lr_scheduler": {"gamma": 0.9999977},
    "trainer": {"epochs": 100, "iterations_per_epoch": 1000, "save_period": 5,
                "log_every_step": 100},
    "wandb": {"project": "dl2-gan-generation"},
}


def write(tmp_path, raw, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return path


def test_course_layout_loads_unchanged(tmp_path):
    cfg = load_config(write(tmp_path, COURSE))
    assert cfg.family == "dcgan"
    assert cfg.generator.args == {"latent_dim": 100, "hidden_dim": 64, "n_channels": 3}
    assert cfg.generator_optimizer.betas == [0.5, 0.999]
    assert cfg.generator_lr_scheduler.gamma == 0.9999977
    assert cfg.total_steps == 100_000
    assert cfg.wandb.project == "dl2-gan-generation"


def test_shipped_course_preset_is_the_course_file_plus_data():
    raw = json.loads(open("configs/dcgan_train.json").read())
    data = raw.pop("data")
    # the run's name and the batch size the course left to the trainer's default, made explicit
    assert raw.pop("name") == "dcgan_train"
    assert raw["trainer"].pop("batch_size") == 128 == TrainerConfig().batch_size
    assert raw == COURSE
    assert data == {"dataset": "cats", "image_size": 64}
    cfg = load_config("configs/dcgan_train.json")
    # the reference keeps no moving average (whatever the EMA warm-up's defaults): its grids
    # and scores come from the raw generator
    assert cfg.trainer.ema_decay == 0 and FAMILIES["dcgan"].make_ema(None, cfg.trainer) is None


def test_round_trip_through_json(tmp_path):
    cfg = load_config(write(tmp_path, COURSE))
    cfg.save(tmp_path / "again.json")
    assert load_config(tmp_path / "again.json") == cfg
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("mutate, field, words", [
    (lambda r: r["trainer"].update(epoks=3), "trainer.epoks", "unknown field"),
    (lambda r: r["trainer"].update(epochs="ten"), "trainer.epochs", "expected an integer"),
    (lambda r: r["generator_optimizer"].update(lr=-1e-3), "generator_optimizer.lr", "(0, 1]"),
    (lambda r: r["discriminator_optimizer"].update(betas=[0.5, 1.0]),
     "discriminator_optimizer.betas", "[0, 1)"),
    (lambda r: r["generator"]["args"].update(latnt_dim=3), "generator.args.latnt_dim",
     "no argument"),
    (lambda r: r["generator"]["args"].update(latent_dim=1.5), "generator.args.latent_dim",
     "integer"),
    (lambda r: r["generator"].update(type="Gen"), "generator.type", "not one of"),
    (lambda r: r.pop("discriminator"), "discriminator", "both"),
    (lambda r: r["wandb"].update(mode="sometimes"), "wandb.mode", "not one of"),
    (lambda r: r.update(colour="red"), "colour", "unknown field"),
])
def test_bad_fields_name_file_and_field(tmp_path, mutate, field, words):
    raw = json.loads(json.dumps(COURSE))
    mutate(raw)
    path = write(tmp_path, raw, "bad.json")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and field in message and words in message


def test_overrides_apply_with_json_values(tmp_path):
    cfg = load_config(write(tmp_path, COURSE), ["trainer.iterations_per_epoch=50",
                                                "data.dataset=digits", "wandb.mode=disabled",
                                                "generator_optimizer.betas=[0.0,0.9]"])
    assert cfg.trainer.iterations_per_epoch == 50
    assert cfg.data.dataset == "digits"
    assert cfg.generator_optimizer.betas == [0.0, 0.9]
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(write(tmp_path, COURSE), ["trainer.epochs"])
    with pytest.raises(ConfigError, match="trainer.epochs"):
        load_config(write(tmp_path, COURSE), ["trainer.epochs=0"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "broken.json"
    bad.write_text("{ not json")
    with pytest.raises(ConfigError, match="broken.json: not valid JSON"):
        load_config(bad)


# ---------------------------------------------------------------------------
# Values no tensor, counter or network can hold, and sections a family would ignore

def preset(name):
    return json.loads(open(f"configs/{name}.json").read())


@pytest.mark.parametrize("name, override, field, words", [
    ("dcgan_demo", "generator_optimizer.lr=1e308", "generator_optimizer.lr", "float32"),
    ("dcgan_demo", "generator_optimizer.weight_decay=1e308",
     "generator_optimizer.weight_decay", "float32"),
    ("dcgan_demo", "discriminator_optimizer.lr=1e39", "discriminator_optimizer.lr", "float32"),
    ("dcgan_demo", "generator_optimizer.lr=5", "generator_optimizer.lr", "(0, 1]"),
    ("cvae_demo", "optimizer.weight_decay=3", "optimizer.weight_decay", "[0, 1]"),
    ("dcgan_demo", "trainer.iterations_per_epoch=1" + "0" * 400,
     "trainer.iterations_per_epoch", "64-bit"),
    ("dcgan_demo", f"trainer.epochs={2**62}", "trainer.iterations_per_epoch", "64-bit"),
    ("dcgan_demo", "trainer.seed=-" + "9" * 30, "trainer.seed", "64-bit"),
    ("dcgan_demo", "trainer.eval_samples=1000000000", "trainer.eval_samples", "100000"),
    ("dcgan_demo", "data.image_size=65536", "data.image_size", "1024"),
    ("dcgan_demo", "data.seed=-1", "data.seed", "must be >= 0, got -1"),  # numpy's raw error
    ("dcgan_demo", "gan.standing_stats=1000000000", "gan.standing_stats",  # minutes of sampling
     "must be in [0, 100000]"),
    ("dcgan_demo", "trainer.device=cuda:99999999999999999999", "trainer.device", "cuda:N"),
    ("ddpm_demo", "model.args.channel_mults=[]", "model.args.channel_mults", "non-empty"),
    ("ddpm_demo", "model.args.channel_mults=[1,0]", "model.args.channel_mults", ">= 1"),
    ("ddpm_demo", "model.args.base_channels=15", "model.args.base_channels", "even"),
    ("ddpm_demo", "model.args.dropout=1.0", "model.args.dropout", "[0, 1)"),
    ("ddpm_demo", "model.args.timesteps=100000000", "model.args.timesteps", "10000"),
    ("ddpm_demo", "model.args.guidance_scale=1e30", "model.args.guidance_scale", "[0, 100]"),
    ("cvae_demo", "model.args.kl_weight=1e30", "model.args.kl_weight", "10000"),
    ("ddpm_demo", "model.args.image_size=32", "model.args.image_size", "data.image_size is 16"),
    ("ddpm_demo", "model.args.channel_mults=[1,2,2,2,2,2]", "model.args",
     "must be divisible"),  # the model's own check, run at validation on the meta device
    ("dcgan_demo", "generator.args.hidden_dim=1000000", "generator.args", "GiB of weights"),
    ("ddpm_demo", "model.args.base_channels=1000000", "model.args", "GiB of weights"),
    ("dcgan_train", "generator.type=CVAE", "generator.type", "takes Generator"),
    ("dcgan_demo", "discriminator.type=Generator", "discriminator.type", "takes Discriminator"),
    ("ddpm_demo", "model.type=Generator", "model.type", "takes CVAE or DDPM"),
    ("dcgan_demo", "data.root=a\u0000b", "data.root", "NUL"),
    ("dcgan_demo", "wandb.project=caf\udce9", "wandb.project", "UTF-8"),  # an undecodable argv
])
def test_values_beyond_what_training_can_hold_are_refused(tmp_path, name, override, field,
                                                          words):
    path = write(tmp_path, preset(name), f"{name}.json")
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    message = str(err.value)
    assert message.startswith(f"{path}: {field}: ") and words in message, message
    assert len(message) < 400  # huge values are shown shortened


@pytest.mark.parametrize("name, section, value, reads", [
    ("dcgan_demo", "optimizer", {"lr": 1e-3}, "generator_optimizer"),
    ("dcgan_train", "lr_scheduler", {"gamma": 0.99}, "discriminator_lr_scheduler"),
    ("cvae_demo", "generator_optimizer", {"lr": 1e-3}, "optimizer, lr_scheduler"),
    ("ddpm_demo", "discriminator_lr_scheduler", {"gamma": 0.99}, "optimizer, lr_scheduler"),
    ("cvae_mnist", "generator_lr_scheduler", {"gamma": 0.9}, "optimizer, lr_scheduler"),
    ("dcgan_demo", "model", {"type": "DDPM"}, "generator, discriminator"),
])
def test_a_section_the_family_would_ignore_is_an_error(tmp_path, name, section, value, reads):
    path = write(tmp_path, {**preset(name), section: value}, "mixed.json")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {section}: ") and "would ignore" in message
    assert reads in message


def test_a_model_override_on_a_gan_names_the_stray_section(tmp_path):
    path = write(tmp_path, preset("dcgan_demo"), "dcgan.json")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["model.args.eta=5"])
    message = str(err.value)
    assert message.startswith(f"{path}: model: ") and "model.args.eta" in message
    assert "missing required field" not in message and "generator.args" not in message


def test_files_python_cannot_parse_are_config_errors(tmp_path):
    text = json.dumps(preset("dcgan_demo"))
    latin = tmp_path / "latin1.json"
    latin.write_bytes(text.replace("genlab-demo", "d\u00e9mo").encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.json: not UTF-8 text \(byte 0xe9"):
        load_config(latin)
    deep = tmp_path / "deep.json"
    deep.write_text('{"name": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError, match=r"deep\.json: .*nested too deeply"):
        load_config(deep)
    long = tmp_path / "long.json"
    long.write_text('{"trainer": {"epochs": ' + "7" * 5000 + "}}")
    with pytest.raises(ConfigError, match=r"long\.json: .*thousands of digits"):
        load_config(long)
    twice = tmp_path / "twice.json"
    twice.write_text('{"name": "a", "data": {"image_size": 16, "image_size": 32}}')
    with pytest.raises(ConfigError, match=r"twice\.json: field 'image_size' is given twice"):
        load_config(twice)
    bom = tmp_path / "bom.json"  # what Windows editors write: still a valid config
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_config(bom).name == "dcgan_demo"


def test_overrides_python_cannot_parse_name_the_override(tmp_path):
    path = write(tmp_path, preset("dcgan_demo"), "dcgan.json")
    with pytest.raises(ConfigError, match=r"dcgan\.json: override name: .*nested too deeply"):
        load_config(path, ["name=" + "[" * 100_000 + "]" * 100_000])
    with pytest.raises(ConfigError, match=r"dcgan\.json: override trainer\.epochs: .*digits"):
        load_config(path, ["trainer.epochs=" + "9" * 5000])


RETIRED_DEFAULTS = {"spike_factor": 0.0, "rollback_lr_factor": 0.5, "ema_inv_gamma": 1.0,
                    "compile_mode": "default"}


def test_retired_options_at_their_old_defaults_load_and_are_dropped(tmp_path):
    """Old configs and checkpoints carry them; their old values are what the code does now."""
    raw = {**COURSE, "trainer": {**COURSE["trainer"], **RETIRED_DEFAULTS}}
    cfg = load_config(write(tmp_path, raw))
    assert cfg.trainer == load_config(write(tmp_path, COURSE, "plain.json")).trainer
    assert not set(RETIRED_DEFAULTS) & set(cfg.to_dict()["trainer"])  # saved configs drop them
    assert raw["trainer"]["spike_factor"] == 0.0  # the caller's dict is left as it was


@pytest.mark.parametrize("key, value", [("spike_factor", 5), ("rollback_lr_factor", 0.25),
                                        ("ema_inv_gamma", 10.0),
                                        ("compile_mode", "reduce-overhead")])
def test_a_retired_option_asked_for_is_an_error_that_says_it_was_removed(tmp_path, key, value):
    path = write(tmp_path, COURSE)
    with pytest.raises(ConfigError) as err:
        load_config(path, [f"trainer.{key}={value}"])
    message = str(err.value)
    assert message.startswith(f"{path}: trainer.{key}: this option was removed (")
    assert message.endswith("delete it from the config")
