import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib.checkpoint import load_checkpoint
from lib.config import load_config
from lib.data import load_dataset, to_float
from lib.device import Engine, seed_everything
from lib.families import FAMILIES
from lib.training.evaluation import rebuild
from lib.training.loop import train

GAN_FILES = ["config.json", "history.jsonl", "checkpoints/last.pt", "evolution.gif",
             "final_grid.png", "samples/step_0000000.png"]


def test_dcgan_learns_digits(tmp_path):
    cfg = load_config("configs/dcgan_demo.json", [
        f"data.root={tmp_path}", "trainer.epochs=1", "trainer.iterations_per_epoch=300",
        "trainer.log_every_step=100", "trainer.batch_size=64"])
    data = load_dataset("digits", 32)
    real_mean = to_float(data.images).mean(0)

    seed_everything(cfg.trainer.seed)  # the same initial weights train() starts from
    initial = FAMILIES["dcgan"].build(cfg, data, Engine(torch.device("cpu"), None))
    generator = torch.Generator().manual_seed(7)
    before = FAMILIES["dcgan"].sample(initial, 256, None, generator).mean(0)

    run = train(cfg, out_root=tmp_path, progress=False)
    G = rebuild(run, device="cpu").sampler
    with torch.no_grad():
        after = G(torch.randn(256, G.latent_dim, generator=generator)).mean(0)

    d0, d1 = (before - real_mean).norm(), (after - real_mean).norm()
    assert d1 < 0.5 * d0, (d0, d1)
    for name in GAN_FILES:
        assert (run / name).exists(), name
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [100, 200, 300]
    assert {"loss_d", "loss_g", "d_real", "d_fake", "lr", "images_per_sec"} <= history[0].keys()
    assert len(list((run / "samples").glob("step_*.png"))) == 4


def test_checkpoint_rebuilds_without_the_config(tmp_path, tiny_overrides):
    run = train(load_config("configs/dcgan_demo.json", tiny_overrides), out_root=tmp_path,
                progress=False)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4 and ckpt["family"] == "dcgan"
    assert ckpt["models"]["generator"]["args"]["image_size"] == 32  # filled from the data
    assert ckpt["models"]["generator"]["args"]["n_channels"] == 1
    G = rebuild(run, device="cpu").sampler
    assert G(torch.randn(2, G.latent_dim)).shape == (2, 1, 32, 32)


def test_lr_schedule_steps_per_iteration(tmp_path, tiny_overrides):
    cfg = load_config("configs/dcgan_demo.json",
                      tiny_overrides + ["generator_lr_scheduler.gamma=0.5"])
    run = train(cfg, out_root=tmp_path, progress=False)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["lr_generator"] == 2e-4 * 0.5**4
    assert history[-1]["lr_discriminator"] == 2e-4


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lib", *args], capture_output=True, text=True,
                          cwd=cwd or Path.cwd(), timeout=300)


def test_cli_train_prints_its_run_folder(tmp_path, tiny_overrides):
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    out = run_cli("train", "configs/dcgan_demo.json", *sets, "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    run = Path(out.stdout.strip().splitlines()[-1])
    assert run.parent == tmp_path
    for name in GAN_FILES:
        assert (run / name).exists(), name


def test_cli_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"generator": {"type": "Generator"},
                               "discriminator": {"type": "Discriminator"},
                               "trainer": {"epochs": -1}}))
    out = run_cli("train", str(bad))
    assert out.returncode == 2
    assert "bad.json: trainer.epochs: must be >= 1" in out.stderr
    assert "Traceback" not in out.stderr

    out = run_cli("train", "configs/dcgan_demo.json", "--set", "data.dataset=cats",
                  "--set", f"data.root={tmp_path}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cats" in out.stderr and str(tmp_path) in out.stderr


@pytest.mark.parametrize("preset", ["dcgan_demo", "cvae_demo"])
def test_fast_path_trains_to_the_same_weights_as_the_plain_one(tmp_path, tiny_overrides, preset):
    """channels_last changes memory layout and kernel choice, never the maths: the weights
    agree to float noise after several steps (fused Adam and autocast are GPU-only paths)."""
    weights = {}
    for layout in ("true", "false"):
        cfg = load_config(f"configs/{preset}.json",
                          [*tiny_overrides, f"trainer.channels_last={layout}",
                           "trainer.precision=fp32", "wandb.mode=disabled",
                           f"name=layout_{layout}"])
        run = train(cfg, out_root=tmp_path, progress=False)
        weights[layout] = load_checkpoint(run / "checkpoints" / "last.pt")["nets"]
    fast, plain = weights["true"], weights["false"]
    moved = 0
    for net, state in plain.items():
        for key, value in state.items():
            torch.testing.assert_close(fast[net][key].contiguous(), value, rtol=1e-3, atol=1e-4,
                                       msg=f"{net}.{key}")
            moved += int(value.is_floating_point())
    assert moved > 0
