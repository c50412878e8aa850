import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diversity import spread

from lib.config import load_config
from lib.core.checkpoint import load_checkpoint
from lib.core.device import Engine, seed_everything
from lib.data import ImageData, load_dataset, to_float
from lib.families import FAMILIES
from lib.training.evaluation import rebuild
from lib.training.loop import train

GAN_FILES = ["config.json", "history.jsonl", "checkpoints/last.pt", "evolution.gif",
             "final_grid.png", "samples/step_0000000.png"]


def test_dcgan_learns_digits(tmp_path):
    cfg = load_config("configs/dcgan_demo.json", [
        f"data.root={tmp_path}", "data.image_size=16", "trainer.epochs=1",
        "trainer.iterations_per_epoch=200", "trainer.log_every_step=50",
        "trainer.batch_size=64",
        "trainer.eval_samples=0"])  # learning is judged here; scoring in test_metrics.py
    data = load_dataset("digits", 16)
    real = to_float(data.images)

    seed_everything(cfg.trainer.seed)  # the same initial weights train() starts from
    initial = FAMILIES["dcgan"].build(cfg, data, Engine(torch.device("cpu"), None))
    generator = torch.Generator().manual_seed(7)
    before = FAMILIES["dcgan"].sample(initial, 256, None, generator)

    run = train(cfg, out_root=tmp_path, progress=False)
    G = rebuild(run, device="cpu").net
    with torch.no_grad():
        after = G(torch.randn(256, G.latent_dim, generator=generator))

    # toward the digits: the mean image nears theirs...
    d0, d1 = ((x.mean(0) - real.mean(0)).norm() for x in (before, after))
    assert d1 < 0.5 * d0, (d0, d1)
    # ...and not by one image for every z: samples differ as much as a third of the digits do
    ratio = spread(after) / spread(real[:256])
    assert ratio > 0.33, ratio
    for name in GAN_FILES:
        assert (run / name).exists(), name
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    # a history line every 5 steps (curves from the first minutes), a snapshot every 50
    assert [r["step"] for r in history] == list(range(5, 201, 5))
    assert {"loss_d", "loss_g", "d_real", "d_fake", "lr", "images_per_sec"} <= history[0].keys()
    assert len(list((run / "samples").glob("step_*.png"))) == 5


def test_checkpoint_rebuilds_without_the_config(tmp_path, tiny_overrides):
    run = train(load_config("configs/dcgan_demo.json", tiny_overrides), out_root=tmp_path,
                progress=False)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4 and ckpt["family"] == "dcgan"
    assert ckpt["models"]["generator"]["args"]["image_size"] == 16  # filled from the data
    assert ckpt["models"]["generator"]["args"]["n_channels"] == 1
    G = rebuild(run, device="cpu").net
    assert G(torch.randn(2, G.latent_dim)).shape == (2, 1, 16, 16)


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


class GradientRecorder(torch.optim.Optimizer):
    """Stands in for a family's optimizer: keeps each step's gradients, leaves the weights."""

    def __init__(self, params):
        super().__init__(params, {})
        self.grads: list[torch.Tensor] = []

    def step(self, closure=None):
        self.grads += [p.grad.detach().clone() for g in self.param_groups for p in g["params"]
                       if p.grad is not None]


def one_step_in_layout(cfg, data, channels_last: bool) -> tuple[dict, list[torch.Tensor]]:
    """The family's own training step from the same weights and batch: logs and gradients."""
    family = FAMILIES[cfg.family]
    engine = Engine(torch.device("cpu"), None, channels_last=channels_last)
    seed_everything(0)
    parts = family.build(cfg, data, engine)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for net in parts.nets.values():
            for p in net.parameters():
                if not p.any():  # zero-initialised outputs (DDPM) would zero the gradients
                    p.copy_(0.02 * torch.randn(p.shape, generator=gen))  # in (C, H, W) order
    recorders = {name: GradientRecorder(opt.param_groups[0]["params"])
                 for name, opt in parts.optimizers.items()}
    parts.optimizers = recorders
    x = engine.batch(data.images[:8])
    weights = [p for net in parts.nets.values() for p in net.parameters() if p.ndim == 4]
    for t in (x, weights[0]):  # the layout really differs (RGB input, many-channel weights)
        assert t.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert t.is_contiguous() != channels_last
    seed_everything(1)  # the step's own noise (z, t, reparameterisation) alike in both
    logs = family.step(parts, x, data.labels[:8], 1, engine, cfg)
    return logs, [g for name in sorted(recorders) for g in recorders[name].grads]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def pixel_noise(image_size: int) -> ImageData:
    """Random RGB pixels in 4 classes: no flat regions, so no ties of near-zero activations."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, image_size, image_size), dtype=torch.uint8,
                           generator=gen)
    return ImageData(images, torch.randint(0, 4, (64,), generator=gen), list("abcd"), "noise")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mkldnn", [True, False], ids=["mkldnn", "no_mkldnn"])
@pytest.mark.parametrize("preset", ["dcgan_demo", "cvae_demo", "ddpm_demo"])
def test_channels_last_computes_the_same_losses_and_gradients(preset, mkldnn, threads):
    """channels_last changes memory layout and kernel choice, never the maths.

    Compared: one step of the family's own code (forward, loss, backward) from the same
    weights, batch and noise in both layouts. Not weights after training: Adam divides each
    gradient by its running RMS, so float noise in a near-zero gradient becomes a full
    +-lr step, on one CPU and not on another.
    Losses (smooth): relative 1e-4, against float noise of ~1e-7.
    Gradients: each tensor as a whole, relative to its norm, under 1e-2. Float noise gives
    ~1e-6 here; a (Leaky)ReLU whose input lies within that noise of 0 can take the other
    slope in the other layout, an O(1) change of one element, ~1e-3 of a tensor at most.
    A layout error (a wrong permute, noise drawn in memory order) moves every element:
    relative ~1, as DDPM's randn_like(x) did (0.4). Varied: 1 and 2 threads, oneDNN on/off.
    """
    cfg = load_config(f"configs/{preset}.json")
    data = pixel_noise(16)  # small: the claim does not depend on the size
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.backends.mkldnn.flags(enabled=mkldnn):
            fast_logs, fast = one_step_in_layout(cfg, data, channels_last=True)
            plain_logs, plain = one_step_in_layout(cfg, data, channels_last=False)
    finally:
        torch.set_num_threads(threads_before)
    assert fast_logs.keys() == plain_logs.keys()
    for key, value in plain_logs.items():
        assert float(fast_logs[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), key
    assert len(fast) == len(plain) > 0
    for i, (f, p) in enumerate(zip(fast, plain, strict=True)):
        assert p.norm() > 0, f"gradient {i} is zero: the comparison would prove nothing"
        assert relative_error(f, p) < 1e-2, (i, tuple(p.shape), relative_error(f, p))


def test_a_rebuild_reuses_the_standing_statistics_of_the_weights_it_loads(tmp_path,
                                                                        tiny_overrides):
    """The final grid's standing BatchNorm statistics are kept beside the checkpoints: a
    notebook's rebuild of those weights draws what measuring them again draws, without the
    1,024 generator passes; other weights (an earlier checkpoint) are measured afresh."""
    cfg = load_config("configs/dcgan_demo.json", [*tiny_overrides, "trainer.save_period=1",
                                                  "gan.standing_stats=64"])
    run = train(cfg, out_root=tmp_path, progress=False)
    z = torch.randn(8, cfg.generator.args["latent_dim"], generator=torch.Generator().manual_seed(1))
    kept = rebuild(run, device="cpu")
    assert "generator" in kept.parts._standing  # loaded, not measured
    with torch.inference_mode():
        reused = kept.net(z)
    (run / "checkpoints" / "standing.pt").unlink()
    measured = rebuild(run, device="cpu")
    assert measured.parts._standing == {}
    with torch.inference_mode():  # measured in another process, layout and thread count
        torch.testing.assert_close(measured.net(z), reused, rtol=0, atol=1e-4)
    train(load_config("configs/dcgan_demo.json", [*tiny_overrides, "trainer.epochs=2",
                                                  "gan.standing_stats=64"]), resume=run,
          progress=False)
    earlier = rebuild(run, "step_0000004.pt", device="cpu")  # standing.pt: step 8's weights
    assert earlier.parts._standing == {}
