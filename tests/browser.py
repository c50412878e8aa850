"""Headless Chromium for the browser tests, driven over its DevTools protocol (no chromedriver).

Needs Debian's `chromium` (installed by .ci/setup_browser.sh) and websocket-client (the dev
extra); `require_browser` skips a test, saying why, when either is missing.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def require_browser(*modules: str) -> str:
    """The chromium executable; skips the test when it or a python module is missing."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("browser test: no chromium on PATH (Debian: apt-get install chromium; "
                    ".ci/setup_browser.sh installs it)")
    for module in ("websocket", *modules):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"browser test: python package {module!r} missing "
                        "(pip install -e '.[dev]' installs it)")
    return chromium


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
    """The few Chrome DevTools Protocol calls the tests need, over one page's websocket."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
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

    def open(self, url: str, deadline: float) -> None:
        """Navigate and wait until the page and its images have loaded."""
        self.call("Page.navigate", url=url)
        wait_for(f"{url} to load", lambda: self.eval(
            "document.readyState === 'complete' && "
            "[...document.images].every(i => i.complete) || null"), deadline)

    def screenshot(self, path: Path, width: int, max_height: int = 6000) -> None:
        """The whole page (up to max_height) at `width` CSS pixels, as a PNG."""
        height = min(max_height, int(self.eval("document.documentElement.scrollHeight")))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self.ws.close()


@contextlib.contextmanager
def chromium_page(chromium: str, profile: Path, deadline: float, width: int = 1280,
                  height: int = 900):
    """A headless Chromium with one page of the given window size, as DevTools."""
    debug_port = free_port()
    log = open(profile.parent / "chromium.log", "w")  # noqa: SIM115 - closed below
    chrome = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--remote-debugging-address=127.0.0.1",
         f"--remote-debugging-port={debug_port}", "--remote-allow-origins=*",
         f"--window-size={width},{height}", "--hide-scrollbars", f"--user-data-dir={profile}",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    devtools = None
    try:
        def page_target():
            if chrome.poll() is not None:
                return False
            try:
                url = f"http://127.0.0.1:{debug_port}/json/list"
                with urllib.request.urlopen(url, timeout=2) as r:
                    return next((t for t in json.load(r) if t["type"] == "page"), None)
            except OSError:
                return None

        page = wait_for("chromium's DevTools", page_target, min(deadline, time.monotonic() + 20))
        if not page:
            pytest.skip("browser test: chromium could not start: "
                        + (profile.parent / "chromium.log").read_text()[-500:])
        devtools = DevTools(page["webSocketDebuggerUrl"])
        yield devtools
    finally:
        if devtools is not None:
            devtools.close()
        stop(chrome)
        log.close()
