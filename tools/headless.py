"""Loads a page in headless Chromium and says how it went: console errors, uncaught
exceptions, requests beyond the page itself, the size each chart (<svg>) rendered at, and a
full-page screenshot. It speaks the DevTools protocol over a pipe (--remote-debugging-pipe:
JSON messages ended by NUL on file descriptors 3 and 4), so it needs no driver, no websocket
and no port.

    python tools/headless.py report.html [--screenshot report.png]

exits 1 where the page logged an error, threw, fetched anything, or drew an empty chart.
Debian's `chromium` package provides the browser (.ci/run installs it).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# What the page reports of its charts once loaded.
MEASURE = """JSON.stringify({
  charts: [...document.querySelectorAll('svg')].map(s => {
    const r = s.getBoundingClientRect();
    return {width: r.width, height: r.height, shapes: s.querySelectorAll('path,use').length};
  }),
  sections: [...document.querySelectorAll('section')].map(s => s.id),
  title: document.title,
})"""


@dataclass
class Rendered:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, log errors
    requests: list[str] = field(default_factory=list)  # URLs fetched besides the page
    charts: list[dict] = field(default_factory=list)  # {"width", "height", "shapes"} each
    sections: list[str] = field(default_factory=list)
    title: str = ""
    screenshot: Path | None = None

    @property
    def problems(self) -> list[str]:
        found = list(self.errors) + [f"fetched {u}" for u in self.requests]
        for i, c in enumerate(self.charts):
            if c["width"] < 50 or c["height"] < 50 or c["shapes"] == 0:
                found.append(f"chart {i} rendered empty: {c}")
        return found


def browser() -> str | None:
    """The Chromium on PATH, if any."""
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def render(
    page: str | os.PathLike, *, screenshot: str | os.PathLike | None = None, width: int = 1280
) -> Rendered:
    """Load `page` (a file) in headless Chromium, `width` pixels wide."""
    exe = browser()
    if exe is None:
        raise RuntimeError(f"no Chromium on PATH (tried {', '.join(BROWSERS)})")
    with tempfile.TemporaryDirectory(prefix="tflrewrite-chromium-") as profile:
        with _Session(exe, profile) as session:
            return session.load(Path(page).resolve().as_uri(), screenshot, width)


class _Session:
    """One Chromium process and one page target in it."""

    def __init__(self, exe: str, profile: str, timeout: float = 60.0):
        self.timeout = timeout
        to_browser, self._writer = map(_above_four, os.pipe())
        self._reader, from_browser = map(_above_four, os.pipe())
        flags = [
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        command = (
            f"exec 3<&{to_browser} 4>&{from_browser} {to_browser}<&- {from_browser}>&- && "
            f"exec {shlex.quote(exe)} {' '.join(map(shlex.quote, flags))}"
        )
        self._process = subprocess.Popen(
            ["bash", "-c", command],
            pass_fds=(to_browser, from_browser),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        self._session: str | None = None

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._send("Browser.close", session=False)
        except OSError:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._writer)
        os.close(self._reader)

    def load(self, url: str, screenshot: str | os.PathLike | None, width: int) -> Rendered:
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.call(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            session=False,
        )
        self._session = attached["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )
        self.call("Page.navigate", {"url": url})
        self._wait_for("Page.loadEventFired")
        measured = self.call("Runtime.evaluate", {"expression": MEASURE, "returnByValue": True})
        found = json.loads(measured["result"]["value"])
        out = Rendered(charts=found["charts"], sections=found["sections"], title=found["title"])
        if screenshot is not None:
            out.screenshot = self._screenshot(Path(screenshot), width)
        self._collect(out, url)
        return out

    def _screenshot(self, path: Path, width: int) -> Path:
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        height = int(min(size["height"], 16000))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        shot = self.call("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def _collect(self, out: Rendered, url: str) -> None:
        for e in self._events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                texts = [str(a.get("value", a.get("description", ""))) for a in params["args"]]
                out.errors.append("console: " + " ".join(texts))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                thrown = details.get("exception", {}).get("description", "")
                out.errors.append(f"exception: {details.get('text', '')} {thrown}".strip())
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.errors.append("log: " + params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                requested = params["request"]["url"]
                if requested != url and not requested.startswith(("data:", "about:")):
                    out.requests.append(requested)

    # ------------------------------------------------------------------ the protocol

    def call(self, method: str, params: dict | None = None, *, session: bool = True) -> dict:
        sent = self._send(method, params, session=session)
        while True:
            message = self._receive()
            if message.get("id") == sent:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._events.append(message)

    def _send(self, method: str, params: dict | None = None, *, session: bool = True) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._writer, data) :]
        return self._next_id

    def _wait_for(self, method: str) -> None:
        if any(e.get("method") == method for e in self._events):
            return
        while True:
            message = self._receive()
            self._events.append(message)
            if message.get("method") == method:
                return

    def _receive(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._reader], [], [], left)[0]:
                raise TimeoutError(f"Chromium said nothing for {self.timeout:.0f} s")
            chunk = os.read(self._reader, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited ({self._process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)


def _above_four(fd: int) -> int:
    """`fd` moved to 10 or above, clear of the 3 and 4 that the browser reads and writes."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("page")
    p.add_argument("--screenshot", metavar="PNG")
    args = p.parse_args(argv)
    rendered = render(args.page, screenshot=args.screenshot)
    sizes = ", ".join(f"{c['width']:.0f}x{c['height']:.0f}" for c in rendered.charts)
    print(f"{args.page}: {rendered.title!r}, sections {rendered.sections}")
    print(f"{len(rendered.charts)} charts rendered at {sizes}")
    if rendered.screenshot:
        print(f"screenshot: {rendered.screenshot}")
    for problem in rendered.problems:
        print(f"problem: {problem}")
    return 1 if rendered.problems else 0


if __name__ == "__main__":
    sys.exit(main())
