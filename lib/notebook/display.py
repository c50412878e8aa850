"""Showing things inline: pictures and GIFs as HTML that survives export, tables.

Every picture goes out as an HTML <img> with its bytes inline (plus a PNG for viewers
that drop HTML): nbconvert has no image/gif output, so a GIF displayed as an
IPython Image turns into the text "<IPython.core.display.Image object>" in exported
HTML. Tables are Markdown with numbers formatted by `fmt`.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import torch
from PIL import Image

from lib.config import Config, load_config
from lib.core import viz
from lib.core.device import pick_device
from lib.core.viz import fmt
from lib.notebook.paths import find_preset

# Grids and GIFs show at one width whatever their pixels (a 256 px GIF, a 1,060 px final
# grid), so that pictures side by side compare; wide strips keep theirs, up to the page.
DISPLAY_WIDTH = 512
STRIP_ASPECT = 2.0  # wider than tall by more than this: a strip
NUMBER = re.compile(r"[-+]?\d")  # a cell that starts as a number: never wrapped inside

# model arguments a config summary shows, where the model has them
STUDENT_MODEL_ARGS = ("latent_dim", "kl_weight", "kl_warmup_steps", "timesteps", "schedule",
                      "sampler", "sample_steps", "guidance_scale")


def image_bytes(obj) -> tuple[bytes, str]:
    """PNG/GIF/JPEG path, PIL image, uint8 grid tensor or matplotlib Figure -> (bytes, format).

    Tiny rasters (8 px digits, a 274x36 slerp strip) are upscaled, pixels kept sharp.
    """
    if isinstance(obj, str | Path):
        path = Path(obj)
        fmt_ = path.suffix.lstrip(".").lower().replace("jpg", "jpeg")
        if fmt_ == "gif":
            return path.read_bytes(), "gif"
        with Image.open(path) as img:
            if viz.display_scale(*img.size) == 1:
                return path.read_bytes(), fmt_
            obj = img.convert("RGB")
    if isinstance(obj, torch.Tensor):  # a uint8 (3, H, W) grid
        obj = viz.to_pil(obj)
    buf = io.BytesIO()
    if isinstance(obj, Image.Image):
        scale = viz.display_scale(*obj.size)
        if scale > 1:
            obj = obj.resize((obj.width * scale, obj.height * scale), Image.NEAREST)
        obj.save(buf, format="PNG")
        return buf.getvalue(), "png"
    if hasattr(obj, "savefig"):
        obj.savefig(buf, format="png", dpi=100)
        return buf.getvalue(), "png"
    raise TypeError(f"cannot show a {type(obj).__name__}: give a path, PIL image, uint8 grid "
                    f"tensor or matplotlib Figure")


def gif_still(data: bytes) -> bytes:
    """The last frame of a GIF as PNG: what a viewer without HTML (or a PDF) shows instead."""
    with Image.open(io.BytesIO(data)) as img:
        img.seek(getattr(img, "n_frames", 1) - 1)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def display_width(obj, data: bytes) -> int | None:
    """DISPLAY_WIDTH for a grid or GIF; None (its own width) for a strip or a figure, whose
    text would shrink."""
    if hasattr(obj, "savefig"):
        return None
    with Image.open(io.BytesIO(data)) as img:
        return None if img.width > STRIP_ASPECT * img.height else DISPLAY_WIDTH


def img_tag(data: bytes, fmt_: str, alt: str, width: int | None = None) -> str:
    """An inline <img>: never wider than the page, pixels kept sharp when scaled up."""
    size = f' width="{width}"' if width else ""
    return (f'<img alt="{html.escape(alt)}"{size} style="max-width:100%;height:auto;'
            f'image-rendering:pixelated" src="data:image/{fmt_};base64,'
            f'{base64.b64encode(data).decode()}">')


def media_bundle(obj, caption: str | None = None, width: int | None = None) -> dict:
    """The display bundle `show` sends: text/html (caption + <img>), image/png, text/plain.

    width: pixels on the page; None: `display_width`'s choice."""
    data, fmt_ = image_bytes(obj)
    width = width or display_width(obj, data)
    name = caption or (Path(obj).name if isinstance(obj, str | Path) else "image")
    head = f"<p><strong>{html.escape(caption)}</strong></p>" if caption else ""
    png = gif_still(data) if fmt_ == "gif" else data if fmt_ == "png" else None
    bundle = {"text/html": f"<div>{head}{img_tag(data, fmt_, name, width)}</div>",
              "text/plain": f"[{'animated GIF' if fmt_ == 'gif' else 'image'}: {name}]"}
    if png is not None:
        bundle["image/png"] = base64.b64encode(png).decode()
    return bundle


def markdown_table(rows: list[dict] | dict) -> str:
    """Rows of equal keys (or one key -> value mapping) as a Markdown table, numbers by `fmt`."""
    if isinstance(rows, dict):
        rows = [{"": k, "value": fmt(v, k)} for k, v in rows.items()]
    if not rows:
        return "*nothing to show*"
    head = list(rows[0])

    def cell(value, key: str = "") -> str:
        return fmt(value, key).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(str(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r.get(k), k) for k in head) + " |" for r in rows]
    return "\n".join(lines)


def html_table(rows: list[dict] | dict) -> str:
    """Rows as an HTML table, numbers by `fmt`; a cell that starts as a number never wraps
    ("400 [390, 410]", "8.97e-5" broke at the space or the hyphen in narrow columns), and a
    table wider than the page scrolls inside its own box instead of running off the page."""
    if isinstance(rows, dict):
        rows = [{"": k, "value": fmt(v, k)} for k, v in rows.items()]
    if not rows:
        return "<p><em>nothing to show</em></p>"

    def cell(value, key: str) -> str:
        text = fmt(value, key)
        nowrap = ' style="white-space:nowrap"' if NUMBER.match(text) else ""
        return f"<td{nowrap}>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(cell(r.get(k), k) for k in rows[0]) + "</tr>"
                   for r in rows)
    return (f'<div style="overflow-x:auto;max-width:100%"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def table(rows: list[dict] | dict) -> None:
    """Display rows as a table: HTML where it renders (Jupyter, Kaggle, exported HTML), the
    Markdown table for viewers without HTML."""
    from IPython.display import display

    markdown = markdown_table(rows)
    display({"text/html": html_table(rows), "text/markdown": markdown, "text/plain": markdown},
            raw=True)


def config_fields(cfg: Config) -> dict:
    """The fields of a config a student reads before training, in reading order."""
    t = cfg.trainer
    model = cfg.model or cfg.generator
    optimizers = {k: getattr(cfg, k) for k in ("optimizer", "generator_optimizer",
                                                "discriminator_optimizer") if getattr(cfg, k)}
    fields = {"run": cfg.name, "model": f"{cfg.family} ({model.type})" if model else cfg.family,
              "data": f"{cfg.data.dataset}, {cfg.data.image_size} px"
                      + (f", first {cfg.data.limit:,}" if cfg.data.limit else ""),
              "steps": f"{t.epochs * t.iterations_per_epoch:,} ({t.epochs} epochs x "
                       f"{t.iterations_per_epoch:,})",
              "batch size": t.batch_size}
    for key, opt in optimizers.items():
        label = "lr" if key == "optimizer" else f"lr ({key.split('_')[0]})"
        fields[label] = fmt(opt.lr, "lr") + f", betas {tuple(opt.betas)}"
    for key in STUDENT_MODEL_ARGS:
        if model and key in model.args:
            fields[key] = model.args[key]
    fields["log / snapshot every"] = f"{t.log_every_step:,} steps"
    fields["evaluation"] = (f"{t.eval_samples:,} images, {t.features} features, "
                            + (f"every {t.eval_every:,} steps" if t.eval_every else "at the end")
                            if t.eval_samples else "off")
    fields["device / precision"] = f"{t.device} / {t.precision}"
    fields["time budget"] = f"{t.max_minutes:g} min" if t.max_minutes else "none"
    fields["wandb"] = cfg.wandb.mode
    return fields



def show(obj, caption: str | None = None, width: int | None = None) -> None:
    """Display an image or GIF inline as HTML that survives `nbconvert --to html`.

    obj: a path, PIL image, uint8 grid tensor or matplotlib Figure; None or a missing
    file says so instead of failing (a run may not have produced that picture).
    """
    from IPython.display import Markdown, display

    if obj is None:
        display(Markdown(f"*{caption or 'nothing to show'}: not produced by this run*"))
        return
    if isinstance(obj, str | Path) and not Path(obj).is_file():
        display(Markdown(f"*{caption or Path(obj).name}: not produced by this run*"))
        return
    display(media_bundle(obj, caption, width), raw=True)


def _settings(cfg: Config) -> str:
    return f"{cfg.data.dataset} at {cfg.data.image_size} px, {cfg.total_steps:,} steps"


def device_note(cfg: Config) -> None:
    """Say in one line when this session has no GPU, and which settings draw something
    recognisable on a CPU in minutes: the family's demo preset (configs/<family>_demo.json).

    Asks the device decision training will take (`pick_device`); silent on a GPU.
    """
    if pick_device(cfg.trainer.device).type != "cpu":
        return
    demo = f"{cfg.family}_demo"
    cpu = load_config(find_preset(demo))
    if (cfg.data.dataset == cpu.data.dataset and cfg.data.image_size <= cpu.data.image_size
            and cfg.total_steps <= cpu.total_steps):
        print(f"no GPU: training on the CPU; {_settings(cfg)} fit it (the CPU preset "
              f"{demo}: {_settings(cpu)})")
    else:
        print(f"no GPU: training on the CPU. {_settings(cfg)} needs a GPU or many sessions; "
              f'on a CPU, preset="{demo}" ({_settings(cpu)}) draws something recognisable '
              "in minutes")
