"""Sliders for playing with trained models: the only module that imports ipywidgets.

Each explorer is a handful of controls whose observers re-render one uint8 grid
(the maths lives in `lib.notebook.explore`) straight into an `ipywidgets.Image` as PNG
bytes - no matplotlib and no `Output` capture, so updates are cheap and work
without a kernel too (setting a control's value in a test fires the same
observers a browser would). While a grid renders, the image dims and the status
line says so. Notebooks display the returned `Explorer`; headless runs use the
static grids re-exported below instead.

Works with ipywidgets 7.6+ and 8 (Kaggle still ships 7.x): only Image, sliders,
Dropdown, BoundedIntText, Button, Label, HTML and boxes, whose APIs did not change.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ipywidgets as widgets
import torch
from torch import nn

from lib.core import viz
from lib.families.base import device_of
from lib.notebook.explore import (
    ALL_CLASSES,
    CPU_STEPS,
    FAST_STEPS,
    Directions,
    class_grid,
    class_traversal_grid,
    cvae_images,
    ddpm_grid,
    ddpm_images,
    fast_sampler,
    ganspace_directions,
    generate,
    guidance_grid,
    interactive_threads,
    interpolation_grid,
    latent_points,
    latent_traversal_grid,
    posterior_directions,
    seed_latent,
)

# the static fallbacks, importable from here as well as from lib.notebook.explore
__all__ = ["Explorer", "latent_explorer", "class_explorer", "ddpm_explorer",
           "latent_traversal_grid", "interpolation_grid", "class_grid", "class_traversal_grid",
           "ddpm_grid", "guidance_grid"]

# 100 seeds on a 400 px slider: 2-3 px of track a seed, so a drag lands where it aims (10,000 on
# the default ~100 px track jumped thousands at a time); the arrow keys step one by one
MAX_SEED = 99
SEED_LAYOUT = {"width": "400px"}  # a dict: each slider gets a Layout of its own
PIXELATED = "genlab-pixelated"
BUSY = "genlab-busy"
# Nearest-neighbour upscaling in the browser (an 8 px digit stays crisp at 128 px); a dimmed
# image while the next one renders.
_CSS = widgets.HTML(f"<style>.{PIXELATED} {{ image-rendering: pixelated; }} "
                    f".{BUSY} {{ opacity: 0.45; }}</style>")


@dataclass
class Explorer:
    """Controls + the image they drive. Displays as its `ui` in a notebook."""

    ui: widgets.Box
    image: widgets.Image
    controls: dict[str, widgets.Widget]
    render: Callable[[], torch.Tensor]  # the current state -> uint8 (3, H, W) grid
    scale: int = 1
    status: widgets.Label = field(default_factory=widgets.Label)
    last_ms: float = 0.0

    def update(self, _change=None) -> None:
        self.status.value = "rendering..."
        self.image.add_class(BUSY)
        t0 = time.perf_counter()
        try:
            grid = self.render()
        except Exception as e:
            self.status.value = f"failed: {type(e).__name__}: {e}"
            raise
        finally:
            self.image.remove_class(BUSY)
        # The PNG keeps the grid's own pixels (small, fast to encode and send); the browser
        # scales it up, pixelated by the CSS class below.
        self.image.value = to_png(grid)
        width = str(grid.shape[-1] * self.scale)
        if self.image.width != width:
            self.image.width = width
        self.last_ms = 1000 * (time.perf_counter() - t0)
        self.status.value = f"rendered in {self.last_ms:.0f} ms"

    def _ipython_display_(self) -> None:
        # display(explorer) shows its controls; ipywidgets 7 widgets have no _repr_mimebundle_
        from IPython.display import display

        display(self.ui)


def _tooltip(text: str) -> dict[str, str]:
    """The hover text keyword: `tooltip` since ipywidgets 8, `description_tooltip` before."""
    major = int(widgets.__version__.split(".")[0])
    return {"tooltip": text} if major >= 8 else {"description_tooltip": text}


def to_png(grid: torch.Tensor) -> bytes:
    """uint8 (3, H, W) -> PNG bytes, fast: zlib level 1 (level 6 costs ~5x on noisy images)."""
    return viz.png_bytes(grid, compress_level=1)


def _scale_for(size: int, display_size: int) -> int:
    """Nearest-neighbour upscale factor so that 8-64 px images show at about display_size."""
    return max(1, display_size // size)


def _assemble(controls: dict[str, widgets.Widget], render: Callable[[], torch.Tensor],
              image_size: int, display_size: int,
              buttons: dict[str, widgets.Button] | None = None) -> Explorer:
    buttons = buttons or {}
    image = widgets.Image(format="png")
    image.add_class(PIXELATED)
    panel = widgets.VBox([*controls.values(), *buttons.values()])
    explorer = Explorer(ui=widgets.HBox(), image=image, controls={**controls, **buttons},
                        render=render, scale=_scale_for(image_size, display_size))
    explorer.ui.children = [widgets.VBox([_CSS, image, explorer.status]), panel]
    for control in controls.values():
        control.observe(explorer.update, names="value")
    explorer.update()
    return explorer


def _sigma_sliders(directions: Directions, k: int, max_sigma: float,
                   continuous: bool) -> dict[str, widgets.FloatSlider]:
    return {f"pc{i}": widgets.FloatSlider(value=0.0, min=-max_sigma, max=max_sigma, step=0.1,
                                          description=directions.label(i),
                                          continuous_update=continuous)
            for i in range(min(k, len(directions)))}


def _amounts(controls: dict[str, widgets.Widget]) -> list[float]:
    return [c.value for name, c in controls.items() if name.startswith("pc")]


def latent_explorer(generator: nn.Module, n_components: int = 5,
                    directions: Directions | None = None, max_sigma: float = 5.0,
                    n_samples: int = 4, display_size: int = 128) -> Explorer:
    """A generator's latent space: seed, GANSpace directions, and a slerp to a second seed.

    Shows n_samples images in a square-ish grid, image i from seeds (seed + i, seed B + i),
    all moved by the same sliders: a direction's effect is seen on several faces at once.
    Each update runs the generator on all of them: 4 keep a 64 px DCGAN near 50 ms on two
    CPU cores (9 cost ~3x); small models afford more.
    controls: "seed", "seed_b", "t" (0 = seed, 1 = seed_b) and "pc0".."pc{k-1}", in
    standard deviations of each component's activations (`ganspace_directions`).
    display_size: pixels per image on screen.
    """
    with interactive_threads(generator):
        directions = directions or ganspace_directions(generator, n_components)
    controls = {
        "seed": widgets.IntSlider(value=0, min=0, max=MAX_SEED, description="seed",
                                  layout=SEED_LAYOUT),
        "seed_b": widgets.IntSlider(value=1, min=0, max=MAX_SEED, description="seed B",
                                    layout=SEED_LAYOUT),
        "t": widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05,
                                 description="to seed B"),
        **_sigma_sliders(directions, n_components, max_sigma, continuous=True),
    }
    nrow = math.ceil(math.sqrt(n_samples))

    def render() -> torch.Tensor:
        z = latent_points(generator.latent_dim, controls["seed"].value,
                          controls["seed_b"].value, controls["t"].value, n_samples,
                          directions, _amounts(controls))
        with interactive_threads(generator):
            images = generate(generator, z)
        return viz.make_grid(images, nrow=nrow, padding=2 if n_samples > 1 else 0)

    with interactive_threads(generator):
        image_size = generate(generator, seed_latent(0, generator.latent_dim, 1)).shape[-1]
    return _assemble(controls, render, image_size, display_size)


def class_explorer(cvae: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   class_names: list[str] | None = None, n_components: int = 5,
                   n_samples: int | None = None, directions: Directions | None = None,
                   max_sigma: float = 3.0, display_size: int = 128) -> Explorer:
    """A CVAE's classes: pick one, move along the principal directions of its posterior.

    images, labels: the data the directions come from (uint8 or [-1, 1]). Shows
    n_samples prior draws of the chosen class in rows of 4; "resample" moves to the next seed.
    n_samples: None draws 8 on a GPU and 4 on the CPU, where decoding and encoding the PNG
    grow with the images (64 px: 8 cost 55-60 ms of a core an update, over the 50 ms an update
    may take; 4 half that).
    controls: "label", "seed", "pc0".."pc{k-1}" (in data sigmas) and the "resample" button.
    """
    if n_samples is None:
        n_samples = 8 if device_of(cvae).type == "cuda" else 4
    with interactive_threads(cvae):
        directions = directions or posterior_directions(cvae, images, labels, n_components)
    names = class_names or [str(k) for k in range(cvae.num_classes)]
    controls = {
        "label": widgets.Dropdown(options=[(n, k) for k, n in enumerate(names)], value=0,
                                  description="class"),
        "seed": widgets.BoundedIntText(value=0, min=0, max=MAX_SEED, description="seed"),
        **_sigma_sliders(directions, n_components, max_sigma, continuous=True),
    }
    resample = widgets.Button(description="resample")

    def next_seed(_button) -> None:
        controls["seed"].value = (controls["seed"].value + 1) % (MAX_SEED + 1)

    resample.on_click(next_seed)

    def render() -> torch.Tensor:
        z = seed_latent(controls["seed"].value, cvae.latent_dim, n_samples)
        with interactive_threads(cvae):
            out = cvae_images(cvae, controls["label"].value, z, directions, _amounts(controls))
        return viz.make_grid(out, nrow=min(4, n_samples))

    return _assemble(controls, render, images.shape[-1], display_size,
                     buttons={"resample": resample})


def ddpm_explorer(model: nn.Module, n_samples: int | None = None, steps: int | None = None,
                  max_steps: int = 100, sampler: str | None = None, eta: float | None = None,
                  class_names: list[str] | None = None, display_size: int = 128,
                  cache_size: int = 64) -> Explorer:
    """A diffusion model's samples: seed, sampler steps, guidance scale (and class if
    conditional).

    Each update runs `steps` UNet passes, so sliders update on release, not while dragging;
    the last `cache_size` renders are kept, so going back to a setting is instant.
    sampler: any of the model's samplers, by default `fast_sampler(model)`; one that
    takes every timestep ("ddpm") fixes the steps slider. eta: the sampler's noise (None:
    the model's; "dpm++2m" has none).
    controls: "seed", "steps", "guidance_scale", and "label" for a conditional model
    (ALL_CLASSES = cycle over the classes).
    n_samples, steps: None draws 4 images at 10 steps on a GPU, and 1 image at 5 steps on the
    CPU, where each image costs a whole sampler run and each step a UNet pass (`CPU_STEPS`;
    benchmarks/widgets.py measures both).
    """
    on_gpu = device_of(model).type == "cuda"
    sampler = sampler or fast_sampler(model)
    if n_samples is None:
        n_samples = 4 if on_gpu else 1
    if steps is None:
        steps = FAST_STEPS if on_gpu else CPU_STEPS
    every_step = sampler == "ddpm"
    max_steps = model.timesteps if every_step else min(max_steps, model.timesteps)
    guided = model.num_classes > 0 and getattr(model, "cond_drop_prob", 0) > 0
    controls = {
        "seed": widgets.IntSlider(value=0, min=0, max=MAX_SEED, description="seed",
                                  continuous_update=False, layout=SEED_LAYOUT),
        "steps": widgets.IntSlider(value=max_steps if every_step else min(steps, max_steps),
                                   min=1, max=max_steps, description=f"{sampler} steps",
                                   continuous_update=False, disabled=every_step),
        "guidance_scale": widgets.FloatSlider(
            value=1.0, min=0.0, max=8.0, step=0.25, description="guidance",
            continuous_update=False, disabled=not guided,
            **_tooltip("1 = no guidance; needs a conditional model trained with "
                       "cond_drop_prob > 0")),
    }
    if model.num_classes > 0:
        names = class_names or [str(k) for k in range(model.num_classes)]
        # a None value is not displayed by ipywidgets 8's Dropdown: a sentinel int is
        controls["label"] = widgets.Dropdown(
            options=[("all (cycle)", ALL_CLASSES), *[(n, k) for k, n in enumerate(names)]],
            value=ALL_CLASSES, description="class")

    @functools.lru_cache(maxsize=cache_size)
    def draw(seed: int, n_steps: int, guidance_scale: float, label: int) -> torch.Tensor:
        with interactive_threads(model):
            out = ddpm_images(model, seed, n_samples, None if every_step else n_steps,
                              guidance_scale, label, sampler=sampler, eta=eta)
        return viz.make_grid(out, nrow=min(4, n_samples), padding=2 if n_samples > 1 else 0)

    def render() -> torch.Tensor:
        label = controls["label"].value if "label" in controls else ALL_CLASSES
        return draw(controls["seed"].value, controls["steps"].value,
                    controls["guidance_scale"].value, label)

    return _assemble(controls, render, model.image_size, display_size)
