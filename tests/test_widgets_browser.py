"""End to end in a real browser: Voila serves an explorer notebook on 127.0.0.1, headless
Chromium (driven over its DevTools protocol) drags the seed slider, and the image changes.

Needs Debian's `chromium` (installed by .ci/setup_browser.sh) and the `dev` extra's voila and
websocket-client; without them the test is skipped and says why. Bounded to 60 s in all.
"""

import base64
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 60

NOTEBOOK = f"""\
import sys
sys.path.insert(0, {str(REPO)!r})
import torch
from lib.models.dcgan import Generator
from lib.widgets import latent_explorer
torch.set_num_threads(1)
torch.manual_seed(0)
generator = Generator(latent_dim=16, hidden_dim=8, n_channels=3, image_size=16)
latent_explorer(generator, n_components=2, display_size=128)"""

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


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """End a process we started and its children (Voila's kernel), by its own group id."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def wait_for(what: str, check, deadline: float, interval: float = 0.25):
    while time.monotonic() < deadline:
        if (result := check()) is not None:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


class DevTools:
    """The few Chrome DevTools Protocol calls this test needs, over one page's websocket."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=10, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # skip events until our answer arrives
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True)
        return result["result"].get("value")

    def drag(self, x: float, y: float, dx: float) -> None:
        self.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left",
                  clickCount=1)
        for i in range(1, 6):
            self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x + dx * i / 5, y=y,
                      button="left")
        self.call("Input.dispatchMouseEvent", type="mouseReleased", x=x + dx, y=y,
                  button="left", clickCount=1)

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browser_env(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("browser test: no chromium on PATH (Debian: apt-get install chromium; "
                    ".ci/setup_browser.sh installs it)")
    for module in ("voila", "websocket"):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"browser test: python package {module!r} missing "
                        "(pip install -e '.[dev]' installs voila and websocket-client)")
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
    chrome, devtools = None, None
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

        debug_port = free_port()
        chrome = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-address=127.0.0.1",
             f"--remote-debugging-port={debug_port}", "--remote-allow-origins=*",
             f"--user-data-dir={tmp_path / 'chromium'}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "chromium.log", "w"),  # noqa: SIM115
            start_new_session=True)

        def page_target():
            if chrome.poll() is not None:
                return False
            try:
                url = f"http://127.0.0.1:{debug_port}/json/list"
                with urllib.request.urlopen(url, timeout=2) as r:
                    return next((t for t in json.load(r) if t["type"] == "page"), None)
            except OSError:
                return None

        page = wait_for("chromium's DevTools", page_target, min(deadline, time.monotonic() + 15))
        if not page:
            pytest.skip("browser test: chromium could not start: "
                        + (tmp_path / "chromium.log").read_text()[-500:])
        devtools = DevTools(page["webSocketDebuggerUrl"])
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
    finally:
        if devtools is not None:
            devtools.close()
        if chrome is not None:
            stop(chrome)
        stop(voila)
        voila_log.close()
