"""The explorers driven headlessly: set a control's value, read the PNG the Image received."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

from lib.core.viz import make_grid
from lib.data import load_dataset, to_float
from lib.models.cvae import CVAE
from lib.models.dcgan import Generator
from lib.models.ddpm import DDPM
from lib.notebook.explore import (
    ALL_CLASSES,
    CPU_STEPS,
    FAST_SAMPLER,
    FAST_STEPS,
    class_grid,
    ganspace_directions,
    generate,
    latent_points,
    posterior_directions,
)
from lib.notebook.widgets import BUSY, class_explorer, ddpm_explorer, latent_explorer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is faster, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shown(explorer) -> np.ndarray:
    """The image the widget holds now, decoded: (H, W, 3) uint8."""
    assert explorer.image.format == "png"
    return np.asarray(Image.open(io.BytesIO(explorer.image.value)).convert("RGB"))


def tiles(grid: np.ndarray, size: int, n: int, nrow: int, padding: int = 2) -> np.ndarray:
    """Cut n (size x size) images out of a make_grid layout -> (n, size, size) channel 0."""
    out = []
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = padding + r * (size + padding), padding + c * (size + padding)
        out.append(grid[top : top + size, left : left + size, 0])
    return np.stack(out)


def changes(explorer, control: str, value) -> bool:
    before = shown(explorer)
    explorer.controls[control].value = value
    after = shown(explorer)
    assert after.shape == before.shape
    return not np.array_equal(before, after)


# ---------------------------------------------------------------------------
# DCGAN


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return Generator(latent_dim=16, hidden_dim=8, n_channels=3, image_size=16)


def test_latent_explorer_every_control_changes_the_image(generator):
    explorer = latent_explorer(generator, n_components=3, n_samples=1, display_size=64)
    assert shown(explorer).shape == (16, 16, 3)  # the generator's own pixels...
    assert explorer.image.width == "64"  # ...shown 4x larger by the browser
    assert {"seed", "seed_b", "t", "pc0", "pc1", "pc2"} <= explorer.controls.keys()
    assert changes(explorer, "seed", 7)
    assert changes(explorer, "pc0", 2.5)
    assert changes(explorer, "pc2", -2.0)
    assert changes(explorer, "t", 0.5)
    assert explorer.last_ms > 0 and "ms" in explorer.status.value


def test_latent_explorer_shows_a_direction_on_a_grid_of_seeds(generator):
    explorer = latent_explorer(generator, n_components=2, n_samples=4, display_size=32)
    grid = shown(explorer)
    assert grid.shape == (2 * 18 + 2, 2 * 18 + 2, 3)  # 2 x 2 images of 16 px, padded
    images = tiles(grid, size=16, n=4, nrow=2)
    assert len({im.tobytes() for im in images}) == 4  # four different seeds
    explorer.controls["pc0"].value = 2.0
    z = latent_points(16, 0, 1, 0.0, 4, ganspace_directions(generator, 2), [2.0])
    expected = make_grid(generate(generator, z), nrow=2).permute(1, 2, 0).numpy()
    assert np.array_equal(shown(explorer), expected)


def test_explorer_says_it_is_busy_while_rendering(generator):
    explorer = latent_explorer(generator, n_components=2, n_samples=1)
    seen, render = [], explorer.render
    explorer.render = lambda: (seen.append((explorer.status.value,
                                            BUSY in explorer.image._dom_classes)), render())[1]
    explorer.controls["seed"].value = 5
    assert seen == [("rendering...", True)]
    assert BUSY not in explorer.image._dom_classes and "rendered in" in explorer.status.value


def test_latent_explorer_slerp_ends_at_seed_b(generator):
    explorer = latent_explorer(generator, n_components=2, n_samples=4)
    explorer.controls["seed"].value, explorer.controls["seed_b"].value = 3, 11
    explorer.controls["t"].value = 1.0
    at_b = shown(explorer)
    explorer.controls["t"].value = 0.0
    explorer.controls["seed"].value = 11
    assert np.array_equal(shown(explorer), at_b)


def test_generator_left_in_its_training_mode(generator):
    generator.train()
    latent_explorer(generator, n_components=2)
    assert generator.training


# ---------------------------------------------------------------------------
# CVAE: trained on real digits, checked by a classifier trained on real digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", image_size=8, root=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained_cvae(digits):
    """~400 Adam steps on 8x8 digits (a few seconds). kl_weight 1 keeps the posterior close to
    the prior, so prior draws decode to clean class-typical digits."""
    torch.manual_seed(0)
    cvae = CVAE(image_size=8, n_channels=1, num_classes=10, latent_dim=4, hidden_dim=32,
                embed_dim=8, kl_weight=1.0)
    opt = torch.optim.Adam(cvae.parameters(), 2e-3)
    x, y = to_float(digits.images), digits.labels
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = cvae(x[idx], y[idx])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return cvae.eval()


@pytest.fixture(scope="module")
def digit_classifier(digits):
    flat = digits.images.flatten(1).float().numpy() / 255
    return LogisticRegression(max_iter=1000).fit(flat, digits.labels.numpy())


def test_class_explorer_shows_the_chosen_class(trained_cvae, digits, digit_classifier):
    explorer = class_explorer(trained_cvae, digits.images, digits.labels, n_samples=8,
                              display_size=64)
    predictions = {}
    for k in range(10):
        explorer.controls["label"].value = k
        images = tiles(shown(explorer), size=8, n=8, nrow=4)  # (8, 8, 8)
        predictions[k] = digit_classifier.predict(images.reshape(8, -1) / 255)
    accuracy = np.mean([np.mean(p == k) for k, p in predictions.items()])
    assert accuracy >= 0.8, predictions
    assert all(np.bincount(p, minlength=10).argmax() == k for k, p in predictions.items())


def test_class_explorer_sliders_resample_and_size(trained_cvae, digits):
    explorer = class_explorer(trained_cvae, digits.images, digits.labels, n_components=3,
                              class_names=digits.class_names)
    assert shown(explorer).shape == (10 + 2, 4 * 10 + 2, 3)  # on the CPU one row of 4, 8 px
    assert changes(explorer, "pc0", 2.0)
    assert changes(explorer, "label", 5)
    before = shown(explorer)
    explorer.controls["resample"].click()
    assert explorer.controls["seed"].value == 1
    assert not np.array_equal(before, shown(explorer))


def test_posterior_directions_follow_the_data(trained_cvae, digits):
    dirs = posterior_directions(trained_cvae, digits.images, digits.labels, n_components=3)
    assert torch.allclose(dirs.vectors @ dirs.vectors.T, torch.eye(3), atol=1e-4)
    assert (dirs.scales[:-1] >= dirs.scales[1:]).all() and dirs.scales[0] > 0
    grid = class_grid(trained_cvae, n_per_class=5, directions=dirs, amounts=[1.0])
    assert grid.shape == (3, 10 * 10 + 2, 5 * 10 + 2)


# ---------------------------------------------------------------------------
# DDPM


@pytest.fixture(scope="module")
def ddpm():
    torch.manual_seed(0)
    model = DDPM(image_size=8, n_channels=3, num_classes=3, base_channels=8,
                 channel_mults=[1, 2], num_res_blocks=1, timesteps=20, dropout=0.0)
    # Untrained, its zero-initialised output layers ignore the class; nudge every weight so
    # that class and guidance matter, as they do after training.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_ddpm_explorer_every_control_changes_the_image(ddpm):
    explorer = ddpm_explorer(ddpm, n_samples=4, steps=4, display_size=64)
    assert shown(explorer).shape == (10 + 2, 4 * 10 + 2, 3)
    assert explorer.controls["steps"].max == 20  # no more DDIM steps than timesteps
    assert not explorer.controls["guidance_scale"].disabled
    label = explorer.controls["label"]
    assert (label.value, label.index, label.label) == (ALL_CLASSES, 0, "all (cycle)")
    assert changes(explorer, "seed", 3)
    assert changes(explorer, "steps", 8)
    assert changes(explorer, "guidance_scale", 3.0)
    assert changes(explorer, "label", 2)
    assert changes(explorer, "label", ALL_CLASSES)


def test_ddpm_explorer_remembers_what_it_drew(ddpm, monkeypatch):
    calls = []
    sample = ddpm.sample
    monkeypatch.setattr(ddpm, "sample", lambda *a, **k: calls.append(k) or sample(*a, **k))
    explorer = ddpm_explorer(ddpm, n_samples=2, steps=3, sampler="ddim")
    first = shown(explorer)
    explorer.controls["seed"].value = 4
    explorer.controls["seed"].value = 0  # back: from the cache, not three more UNet passes
    assert np.array_equal(shown(explorer), first) and len(calls) == 2
    assert calls[0]["sampler"] == "ddim" and calls[0]["steps"] == 3


def test_ddpm_explorer_with_the_full_chain_fixes_the_steps(ddpm):
    explorer = ddpm_explorer(ddpm, n_samples=1, sampler="ddpm")
    steps = explorer.controls["steps"]
    assert steps.disabled and steps.value == ddpm.timesteps
    assert changes(explorer, "seed", 2)


def test_ddpm_explorer_unconditional_has_no_guidance():
    torch.manual_seed(0)
    model = DDPM(image_size=8, n_channels=1, num_classes=0, base_channels=8,
                 channel_mults=[1, 2], num_res_blocks=1, timesteps=10).eval()
    explorer = ddpm_explorer(model, n_samples=2, steps=3)
    assert explorer.controls["guidance_scale"].disabled and "label" not in explorer.controls
    assert changes(explorer, "seed", 1)


def test_an_explorer_displays_as_its_widgets(generator):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import display
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()  # display() needs a shell to publish to
    explorer = latent_explorer(generator, n_components=1, n_samples=1)
    with capture_output() as captured:
        display(explorer)
    view = captured.outputs[0].data["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == explorer.ui.model_id


# ---------------------------------------------------------------------------
# Interactive use on a CPU


def test_explorers_render_on_one_cpu_thread_and_give_the_threads_back(generator, ddpm):
    seen = []
    hook = generator.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    torch.set_num_threads(2)  # the session's setting (the module's fixture restores its own)
    try:
        explorer = latent_explorer(generator, n_components=2, n_samples=1)
        explorer.controls["seed"].value = 3
        assert torch.get_num_threads() == 2  # given back after the build and each update
        ddpm_explorer(ddpm, steps=2)
        assert torch.get_num_threads() == 2
    finally:
        hook.remove()
        torch.set_num_threads(1)
    assert seen and set(seen) == {1}  # GANSpace, the first image and the update: one thread


def test_seed_sliders_step_through_seeds_a_drag_can_land_on(generator, ddpm):
    for explorer in (latent_explorer(generator, n_components=1, n_samples=1),
                     ddpm_explorer(ddpm, steps=2)):
        seeds = [c for name, c in explorer.controls.items() if name.startswith("seed")]
        for slider in seeds:
            track_px = int(slider.layout.width.removesuffix("px")) - 150  # label and readout
            assert (slider.max - slider.min) / slider.step <= track_px / 2, slider.description


def test_a_flow_models_explorer_uses_its_euler_solver():
    torch.manual_seed(0)
    flow = DDPM(image_size=8, n_channels=3, num_classes=3, base_channels=8, channel_mults=[1, 2],
                num_res_blocks=1, timesteps=20, dropout=0.0, prediction="flow",
                sampler="euler").eval()
    explorer = ddpm_explorer(flow)
    assert explorer.controls["steps"].description == "euler steps"
    assert changes(explorer, "seed", 3)


def test_ddpm_explorer_on_the_cpu_draws_one_image_at_few_steps(ddpm, monkeypatch):
    calls = []
    sample = ddpm.sample
    monkeypatch.setattr(ddpm, "sample", lambda *a, **k: calls.append((a, k)) or sample(*a, **k))
    explorer = ddpm_explorer(ddpm)
    assert shown(explorer).shape == (8, 8, 3)  # one 8 px image, no grid padding around it
    assert explorer.controls["steps"].value == CPU_STEPS < FAST_STEPS
    (n,), options = calls[0]
    assert n == 1 and options["steps"] == CPU_STEPS and options["sampler"] == FAST_SAMPLER
    assert changes(explorer, "steps", FAST_STEPS)  # the slider still reaches the full count
