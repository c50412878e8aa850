"""The maths behind the explorers (no ipywidgets): slerp, PCA, GANSpace, static grids."""

import math

import pytest
import torch

from lib.core.viz import make_grid
from lib.models.dcgan import Generator
from lib.notebook.explore import (
    Directions,
    early_activations,
    ganspace_directions,
    generate,
    interpolation_grid,
    latent_point,
    latent_traversal_grid,
    pca,
    seed_latent,
    slerp,
)


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return Generator(latent_dim=16, hidden_dim=8, n_channels=3, image_size=16)


def test_slerp_endpoints_arc_and_norms():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    mid = slerp(a, b, 0.5)
    # halfway along the arc: 45 degrees, norm halfway between 1 and 2 (a line gives 1.118)
    assert math.isclose(math.degrees(math.atan2(mid[1], mid[0])), 45.0, abs_tol=1e-4)
    assert math.isclose(float(mid.norm()), 1.5, rel_tol=1e-6)


def test_slerp_keeps_gaussian_latents_on_their_shell():
    za, zb = seed_latent(0, 128), seed_latent(1, 128)
    mid_line, mid_arc = (za + zb) / 2, slerp(za, zb, 0.5)
    # a straight line dips to ~1/sqrt(2) of the radius between independent latents
    assert float(mid_line.norm()) < 0.8 * float(za.norm())
    assert abs(float(mid_arc.norm()) - (float(za.norm()) + float(zb.norm())) / 2) < 1e-3


def test_slerp_parallel_vectors_fall_back_to_a_line():
    a = torch.tensor([1.0, 1.0])
    out = slerp(a, 3 * a, 0.5)
    assert torch.isfinite(out).all() and torch.allclose(out, 2 * a, atol=1e-5)


@pytest.mark.parametrize("n,d", [(400, 6), (20, 60)])  # (D, D) and (N, N) Gram paths
def test_pca_recovers_the_dominant_axis(n, d):
    g = torch.Generator().manual_seed(0)
    axis = torch.zeros(d)
    axis[2] = 1.0
    x = torch.randn(n, d, generator=g) * 0.1 + torch.randn(n, 1, generator=g) * 5 * axis
    comps, std, explained = pca(x, 3)
    assert comps.shape == (3, d)
    assert torch.allclose(comps @ comps.T, torch.eye(3), atol=1e-4)
    assert abs(float(comps[0] @ axis)) > 0.99 and float(comps[0, 2]) > 0  # sign fixed
    ref = torch.linalg.svdvals(x - x.mean(0))[:3] / math.sqrt(n - 1)
    assert torch.allclose(std, ref, rtol=1e-3)
    assert explained[0] > 0.9 and (explained[:-1] >= explained[1:]).all()


def test_ganspace_directions_move_the_early_activations_most(generator):
    dirs = ganspace_directions(generator, n_components=4, n_samples=300)
    assert dirs.vectors.shape == (4, 16)
    assert torch.allclose(dirs.vectors.norm(dim=1), torch.ones(4), atol=1e-5)
    z = seed_latent(5, 16, 64)
    y0 = early_activations(generator.eval(), z)
    y_pc = early_activations(generator, z + 2 * dirs.vectors[0])
    rand = torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator()
                                                     .manual_seed(3)), dim=0)
    y_rand = early_activations(generator, z + 2 * rand)
    # GANSpace's point: its first direction changes the features more than a random one
    assert (y_pc - y0).norm() > (y_rand - y0).norm()


def test_latent_point_and_directions_offset():
    dirs = Directions(torch.eye(4)[:2], torch.tensor([1.0, 2.0]), torch.tensor([0.6, 0.3]))
    z = latent_point(4, 3, 4, 0.0, dirs, [0.5, -1.0])
    assert torch.allclose(z - seed_latent(3, 4), torch.tensor([0.5, -2.0, 0.0, 0.0]))
    assert torch.allclose(latent_point(4, 3, 4, 1.0), seed_latent(4, 4), atol=1e-6)
    assert dirs.label(0) == "PC1 (60%)"


def test_static_grids_have_the_expected_layout(generator):
    dirs = ganspace_directions(generator, n_components=3, n_samples=200)
    grid = latent_traversal_grid(generator, dirs, seed=0, n_steps=5, n_components=3)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 3 * 18 + 2, 5 * 18 + 2)
    first_row = grid[:, 2:18]
    assert not torch.equal(first_row[:, :, 2:18], first_row[:, :, 74:90])  # -3 sigma vs +3

    interp = interpolation_grid(generator, seed_a=1, seed_b=2, n_steps=4)
    first = generate(generator, seed_latent(1, 16)[None])
    last = generate(generator, seed_latent(2, 16)[None])
    assert torch.equal(interp[:, 2:18, 2:18], make_grid(first, padding=0))
    assert torch.equal(interp[:, 2:18, 56:72], make_grid(last, padding=0))


def test_a_ganspace_slider_unit_is_one_std_of_its_component(generator):
    dirs = ganspace_directions(generator, n_components=3, n_samples=300)
    y = early_activations(generator.eval(), seed_latent(0, 16, 300))
    comps, std, _ = pca(y, 3)
    z = seed_latent(7, 16, 64)  # other latents than the ones measured on
    y0 = early_activations(generator, z)
    for k in range(3):
        moved = early_activations(generator, z + dirs.scales[k] * dirs.vectors[k]) - y0
        assert float((moved @ comps[k]).mean()) == pytest.approx(float(std[k]), rel=0.15)


def test_trained_model_picks_the_sessions_gpu_unless_told(monkeypatch):
    import lib.notebook.runs as runs

    asked = []

    class Rebuilt:
        net, parts = "net", type("Parts", (), {"class_names": ["a"]})

    monkeypatch.setattr(runs, "rebuild", lambda run_dir, device: asked.append(device) or Rebuilt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runs.trained_model("run") == ("net", ["a"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    runs.trained_model("run")
    runs.trained_model("run", device="cpu")
    assert asked == ["cpu", "cuda:0", "cpu"]
