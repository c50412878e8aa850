"""End to end in a real browser: Voila serves an explorer notebook on 127.0.0.1, headless
Chromium (driven over its DevTools protocol) drags the seed slider, and the image changes.

Needs Debian's `chromium` (installed by .ci/setup_browser.sh) and the `dev` extra's voila and
websocket-client; without them the test is skipped and says why. Bounded to 60 s in all.
"""

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from browser import chromium_page, free_port, require_browser, stop, wait_for
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 60

NOTEBOOK = f"""\
import sys
sys.path.insert(0, {str(REPO)!r})
import torch
from lib.models.dcgan import Generator
from lib.notebook.widgets import latent_explorer
torch.set_num_threads(1)
torch.manual_seed(0)
generator = Generator(latent_dim=16, hidden_dim=8, n_channels=3, image_size=16)
latent_explorer(generator, n_components=2, n_samples=1, display_size=128)"""

# The explorer's image as PNG bytes (base64), read back from the blob URL the widget set.
READ_IMAGE = """(async () => {
  const img = document.querySelector('img.genlab-pixelated');
  if (!img || !img.src) return null;
  const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  let s = ''; for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
})()"""

SEED_HANDLE = """(() => {
  const h = document.querySelector('.widget-slider .noUi-handle');
  if (!h) return null;
  const r = h.getBoundingClientRect();
  return [r.x + r.width / 2, r.y + r.height / 2];
})()"""

SEED_READOUT = "document.querySelector('.widget-slider .widget-readout').textContent"
BUSY_GONE = "document.querySelector('img.genlab-pixelated.genlab-busy') === null"


@pytest.fixture
def browser_env(tmp_path):
    chromium = require_browser("voila")
    env = dict(os.environ)
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[var] = str(tmp_path / var.lower())  # nothing written to the user's home
    return chromium, env


def test_slider_drag_in_chromium_changes_the_image(tmp_path, browser_env):
    chromium, env = browser_env
    deadline = time.monotonic() + DEADLINE_S
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NOTEBOOK)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, tmp_path / "explore.ipynb")

    port = free_port()
    voila_log = open(tmp_path / "voila.log", "w")  # noqa: SIM115 - closed below
    voila = subprocess.Popen(
        [sys.executable, "-m", "voila", "explore.ipynb", "--no-browser", f"--port={port}",
         "--Voila.ip=127.0.0.1"],
        cwd=tmp_path, env=env, stdout=voila_log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        def voila_up():
            if voila.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return None

        if not wait_for("Voila to listen", voila_up, min(deadline, time.monotonic() + 25)):
            pytest.skip("browser test: Voila could not start: "
                        + (tmp_path / "voila.log").read_text()[-500:])

        with chromium_page(chromium, tmp_path / "chromium", deadline) as devtools:
            devtools.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
            first = wait_for("the explorer's first image", lambda: devtools.eval(READ_IMAGE),
                             deadline, interval=0.5)
            png = Image.open(io.BytesIO(base64.b64decode(first)))
            assert png.size == (16, 16)  # the generator's pixels, upscaled by the browser
            seed_before = devtools.eval(SEED_READOUT)
            x, y = wait_for("the seed slider", lambda: devtools.eval(SEED_HANDLE), deadline)
            devtools.drag(x, y, dx=60)

            changed = wait_for("the image to change",
                               lambda: devtools.eval(READ_IMAGE) != first or None,
                               deadline, interval=0.25)
            assert changed
            assert devtools.eval(SEED_READOUT) != seed_before
            assert devtools.eval(BUSY_GONE)  # the dimming of a render does not stick
    finally:
        stop(voila)
        voila_log.close()
