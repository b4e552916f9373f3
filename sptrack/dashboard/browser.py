"""Headless Chromium over the Chrome DevTools Protocol: open a page, wait for its JavaScript, read the DOM, screenshot.

Used by ``python -m sptrack.dashboard screenshot`` (the README's picture of the report) and by the
browser tests. It drives the system Chromium (Debian's ``chromium`` package; ``$SPTRACK_CHROMIUM``
names another binary) through ``websocket-client``: no browser download, no driver binary.
Chromium listens on 127.0.0.1 only, with a throw-away profile, and is killed with its process
group on exit.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--mute-audio")
#: Ready when the document loaded and every Plotly chart of an sptrack report has drawn its SVG.
REPORT_READY = ("document.readyState === 'complete' && "
                "[...document.querySelectorAll('figure.chart')].every(f => f.querySelector('.main-svg'))")


def find_chromium() -> Optional[str]:
    """The Chromium binary: ``$SPTRACK_CHROMIUM``, else the first of :data:`CANDIDATES` on PATH."""
    env = os.environ.get("SPTRACK_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    """Chromium could not start, or a page did not reach the expected state in time."""


class Browser:
    """One headless Chromium and one tab. Use as a context manager."""

    def __init__(self, width: int = 1400, height: int = 1000, binary: Optional[str] = None, start_timeout: float = 60.0):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError("no Chromium found: install the 'chromium' package (apt-get install chromium) or set SPTRACK_CHROMIUM.")
        self.width, self.height, self.start_timeout = width, height, start_timeout
        self.proc: Optional[subprocess.Popen] = None
        self.ws: Any = None
        self._id = 0
        self._profile = tempfile.mkdtemp(prefix="sptrack-chromium-")

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Browser":
        import websocket

        cmd = [self.binary, *FLAGS, "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
               "--remote-allow-origins=*", f"--user-data-dir={self._profile}", f"--window-size={self.width},{self.height}", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.start_timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.poll() is not None else "timed out"
                self.close()
                raise BrowserError(f"Chromium did not start: {err}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Kill Chromium (its whole process group) and remove the profile."""
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # the browser may already be gone
                pass
            self.ws = None
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(timeout=10)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        shutil.rmtree(self._profile, ignore_errors=True)

    # ------------------------------------------------------------------ protocol
    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a CDP method and return its result (events received meanwhile are dropped)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """Run JavaScript in the page; returns its value (promises awaited, returned by value)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"JavaScript error in {expression[:80]!r}: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.25) -> Any:
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f} s waiting for {expression!r} on {self.evaluate('location.href')}")
            time.sleep(interval)

    def open(self, url: str, ready: str = "document.readyState === 'complete'", timeout: float = 60.0) -> None:
        """Navigate to ``url`` (a path is turned into a ``file://`` URL) and wait until ``ready`` holds."""
        if "://" not in url:
            url = Path(url).resolve().as_uri()
        self.send("Page.navigate", url=url)
        time.sleep(0.2)  # let the navigation replace the old document before polling readyState
        self.wait_for(ready, timeout=timeout)

    def screenshot(self, path: str | Path, full_page: bool = False) -> Path:
        """Write a PNG of the viewport (or of the whole page)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


def screenshot(url: str, out: str | Path, width: int = 1400, height: int = 1000, ready: Optional[str] = None,
               full_page: bool = False, timeout: float = 90.0) -> Path:
    """Open ``url`` (or a report file) in headless Chromium and save a PNG once ``ready`` holds.

    Default ``ready``: :data:`REPORT_READY` for a local file (an sptrack report), the document's load otherwise.
    """
    if ready is None:
        ready = REPORT_READY if "://" not in url or url.startswith("file:") else "document.readyState === 'complete'"
    with Browser(width=width, height=height) as browser:
        browser.open(url, ready=ready, timeout=timeout)
        return browser.screenshot(out, full_page=full_page)
