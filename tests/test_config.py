import json

import pytest

from lib.config import Config, ConfigError, load_config

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
    assert raw == COURSE
    assert data == {"dataset": "cats", "image_size": 64}
    load_config("configs/dcgan_train.json")


def test_round_trip_through_json(tmp_path):
    cfg = load_config(write(tmp_path, COURSE))
    cfg.save(tmp_path / "again.json")
    assert load_config(tmp_path / "again.json") == cfg
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("mutate, field, words", [
    (lambda r: r["trainer"].update(epoks=3), "trainer.epoks", "unknown field"),
    (lambda r: r["trainer"].update(epochs="ten"), "trainer.epochs", "expected an integer"),
    (lambda r: r["generator_optimizer"].update(lr=-1e-3), "generator_optimizer.lr", "> 0"),
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
