"""What a student opens, in a real browser: a demo run of the whole suite (smoke sizes, wandb
offline), its report.html and every executed notebook exported with `nbconvert --to html`,
each opened in headless Chromium at 1280 px. On every page: no image wider than the page, no
"<IPython.core.display.Image object>" text, every GIF there as a loaded image, no stderr
block from wandb.

Needs chromium and websocket-client (see tests/browser.py); skipped, saying why, without them.
GENLAB_SCREENSHOTS=DIR keeps screenshots of the report and of 02_dcgan there.
"""

import os
import time
from pathlib import Path

import nbformat
import pytest
from browser import chromium_page, require_browser
from nbconvert import HTMLExporter

from lib.notebook import report
from lib.runner import NOTEBOOKS

WIDTH = 1280
BROWSER_DEADLINE_S = 180
# the GIFs each notebook shows (when its run made them)
NOTEBOOK_GIFS = {"02_dcgan": ("dcgan_demo", ["evolution.gif"]),
                 "03_cvae": ("cvae_demo", ["reconstruction.gif", "generation.gif"]),
                 "04_ddpm": ("ddpm_demo", ["evolution.gif", "denoising.gif"])}
PAGE_FACTS = """(() => {
  const page = document.documentElement.clientWidth;
  const images = [...document.images];
  const stderr = [...document.querySelectorAll(
    '[data-mime-type="application/vnd.jupyter.stderr"], .output_stderr')]
    .map(e => e.textContent);
  return {
    page: page,
    scroll: document.documentElement.scrollWidth,
    images: images.length,
    wide: images.filter(i => i.getBoundingClientRect().right > page + 1)
                .map(i => [i.alt, Math.round(i.getBoundingClientRect().width)]),
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    gifs: images.filter(i => i.src.startsWith('data:image/gif')).length,
    ipython_text: document.body.innerText.includes('IPython.core.display'),
    wandb_stderr: stderr.filter(t => t.includes('wandb')),
  };
})()"""


def stderr_texts(path: Path) -> list[str]:
    book = nbformat.read(path, as_version=4)
    return [o.text for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.output_type == "stream" and o.name == "stderr"]


@pytest.mark.slow
def test_report_and_exported_notebooks_read_well_in_chromium(tmp_path, executed_suite):
    chromium = require_browser()
    _, out, _, _ = executed_suite  # run with wandb offline: what a student gets without a key

    shown = [p for run in report.load_runs(out) for p, _ in report.run_media(run)]
    pages = {"report": (out / "report" / "report.html", sum(p.suffix == ".gif" for p in shown))}
    for name in NOTEBOOKS:
        executed = out / "notebooks" / f"{name}.ipynb"
        assert not [t for t in stderr_texts(executed) if "wandb" in t], name
        page, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
        executed.with_suffix(".html").write_text(page)
        run, gifs = NOTEBOOK_GIFS.get(name, ("", []))
        expected = sum((out / run / g).is_file() for g in gifs)
        if name == "05_report":  # it shows what report.html shows
            expected = pages["report"][1]
        pages[name] = (executed.with_suffix(".html"), expected)
    assert pages["03_cvae"][1] == 2 and pages["report"][1] >= 4  # the runs made their GIFs

    shots = os.environ.get("GENLAB_SCREENSHOTS")
    deadline = time.monotonic() + BROWSER_DEADLINE_S
    with chromium_page(chromium, tmp_path / "chromium", deadline, width=WIDTH) as page:
        for name, (html, gifs) in pages.items():
            page.open(html.as_uri(), deadline)
            facts = page.eval(PAGE_FACTS)
            assert facts["page"] >= WIDTH - 20, facts  # the window we asked for
            assert facts["wide"] == [] and facts["scroll"] <= facts["page"], (name, facts)
            assert facts["broken"] == [] and facts["images"] > 0, (name, facts)
            assert facts["gifs"] == gifs, (name, facts)
            assert not facts["ipython_text"], name
            assert facts["wandb_stderr"] == [], (name, facts)
            if shots and name in ("report", "02_dcgan"):
                Path(shots).mkdir(parents=True, exist_ok=True)
                page.screenshot(Path(shots) / f"{name}.png", WIDTH)
                page.call("Emulation.clearDeviceMetricsOverride")
