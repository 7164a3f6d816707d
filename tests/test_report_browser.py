"""The smoke run's `snakemake --report report.html` in a real headless browser (Debian's chromium).

The report is a single-page app whose figures sit behind its navigation, so the test drives it
as a user would: for every embedded result it loads the page, clicks the result's category in
the menu and the result's view button, and screenshots what is then shown. It fails on a
console error or uncaught exception on any load, on a request that leaves the file (the report
must open offline), on a missing figure, and on a figure whose screenshot is blank or is not
the PNG the rule wrote. The browser is driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: NUL-separated JSON on fds 3 and 4), so nothing beyond chromium
itself is needed.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import snakemake, write_config

from salmon_wf.report import figures

Image = pytest.importorskip("PIL.Image")

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Where each result is filed in the report (rules/report.smk's categories).
CATEGORIES = {"prompts": "Prompts", "responses": "Responses", "labels": "Preferences"}
CATEGORIES |= {name: "Judgments" for name in ("consistency", "scores", "correlation")}
RESULTS = {f"results/report/{name}.png": category for name, category in CATEGORIES.items()}
RESULTS["results/report/examples.html"] = "Preferences"
# Whether a CSS transition or animation runs (the menu slides, moving the content), and, from
# the capture phase (load does not bubble), whether a frame has loaded.
SETTLING = """
window.settling = () => document.getAnimations().some(a => a.playState === 'running');
document.addEventListener('load', event => {
    if (event.target.tagName === 'IFRAME') window.frameLoaded = true;
}, true);
"""
TIMEOUT = 60.0  # seconds for one protocol answer or page state (2 shared cores)


def above_nine(fd: int) -> int:
    """A copy of `fd` numbered 10 or more; `fd` closed."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return copy


class Chromium:
    """A headless chromium and its DevTools session on one page (flattened target)."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        profile.mkdir(parents=True, exist_ok=True)
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        # Moved to fds >= 10, so that putting them on 3 and 4 in the child clobbers neither.
        to_browser, from_browser = (above_nine(fd) for fd in (to_browser, from_browser))
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        flags += ["--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run"]
        flags += ["--hide-scrollbars", "--force-color-profile=srgb", "--mute-audio"]
        flags += ["--host-resolver-rules=MAP * ~NOTFOUND"]  # no network: the report is offline
        # chromium reads the protocol on fd 3 and writes it on fd 4 (bash: dash takes fds < 10).
        remap = f'exec "$@" 3<&{to_browser} 4>&{from_browser} {to_browser}<&- {from_browser}>&-'
        self.log = profile / "chromium.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", remap, "bash", CHROMIUM, *flags, "about:blank"],
                pass_fds=(to_browser, from_browser),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        try:
            self._open_page()
        except BaseException:
            self.close()  # no chromium left running after a failed start
            raise

    def _open_page(self) -> None:
        """A page with its events on, in a viewport wide enough for every figure unscaled."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", page=True)
        metrics = {"width": 2600, "height": 1800, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", page=True, **metrics)

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer; its log:\n{self.log_tail()}")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise EOFError(f"chromium closed the pipe; its log:\n{self.log_tail()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message

    def call(self, method: str, page: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command (to the page's session if `page`) and wait for its answer."""
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if page:
            command["sessionId"] = self.session
        os.write(self._write, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        answer = self.call(
            "Runtime.evaluate",
            page=True,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression[:80]}...: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def load(self, url: str) -> None:
        """Navigate and wait for the load event and the report's menu to render."""
        del self.events[:]
        self.call("Page.navigate", page=True, url=url)
        deadline = time.monotonic() + TIMEOUT
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            self._message(deadline)
        self.wait_for("document.querySelector('#app a') !== null", "the report's menu")

    def wait_for(self, condition: str, what: str) -> Any:
        """Poll a JavaScript expression in the page until it is truthy; its value."""
        script = f"""new Promise(done => {{
            const start = Date.now();
            const poll = () => {{
                const value = ({condition});
                if (value || Date.now() - start > {TIMEOUT * 1000}) done(value || null);
                else setTimeout(poll, 50);
            }};
            poll();
        }})"""
        value = self.evaluate(script)
        if not value:
            raise AssertionError(f"timed out waiting for {what}")
        return value

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions, failed loads and off-file requests since load."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description", details["text"]))
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry']['text']} ({params['entry'].get('url', '')})")
            elif method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if not url.startswith(("file:", "data:", "blob:", "about:")):
                    found.append(f"request off the file: {url}")
        return found

    def screenshot(self, box: dict[str, float]) -> Any:
        """The page's pixels inside `box` (x, y, width, height), as an RGB PIL image."""
        clip = {**box, "scale": 1}
        shot = self.call(
            "Page.captureScreenshot", page=True, format="png", clip=clip, captureBeyondViewport=True
        )
        return Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def close(self) -> None:
        with contextlib.suppress(EOFError, TimeoutError, RuntimeError, OSError):
            self.call("Browser.close")  # a browser that died already has nothing to close
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._write)
        os.close(self._read)


@dataclass
class Shown:
    """One result as the report displays it: its screenshot and, for an image, its size."""

    screenshot: Any
    natural_size: tuple[int, int] | None


@dataclass
class Check:
    """What a browser saw of a report: its results by category, per-result views, errors."""

    categories: dict[str, list[str]]
    shown: dict[str, Shown] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)


def show(browser: Chromium, category: str, path: str) -> Shown:
    """Click `category` in the menu, then the view button of `path`; what is then shown, once
    the menu's CSS transitions (which move the content) have ended."""
    browser.evaluate(SETTLING)
    clicked = browser.evaluate(f"""(() => {{
        const link = [...document.querySelectorAll('#app a')]
            .find(a => a.textContent.trim() === {json.dumps(category)});
        if (!link) return false;
        link.click();
        return true;
    }})()""")
    assert clicked, f"no menu entry {category!r} in the report"
    row = f"""[...document.querySelectorAll('#app tr')]
        .find(r => r.cells[0] && r.cells[0].textContent.trim() === {json.dumps(path)})"""
    browser.wait_for(f"!!({row})", f"{path} listed under {category}")
    browser.evaluate(f"({row}).querySelector('a').click()")
    data = json.dumps(path.rsplit("/", 1)[-1])
    if path.endswith(".html"):
        frame = "document.querySelector('#app iframe')"
        shown = f"{frame} && {frame}.src.includes({data}) && window.frameLoaded && !settling()"
        box = browser.wait_for(f"({shown}) && {frame}.getBoundingClientRect().toJSON()", path)
        natural = None
    else:
        image = f"[...document.querySelectorAll('#app img')].find(i => i.src.includes({data}))"
        view = f"""(() => {{
            const image = {image};
            if (!image || !image.complete || settling()) return null;
            return {{box: image.getBoundingClientRect().toJSON(),
                     natural: [image.naturalWidth, image.naturalHeight]}};
        }})()"""
        seen = browser.wait_for(view, f"{path} shown and decoded")
        box, natural = seen["box"], tuple(seen["natural"])
    keys = ("x", "y", "width", "height")
    return Shown(browser.screenshot({k: box[k] for k in keys}), natural)


def check_report(report: Path, profile: Path, only: Collection[str] = ()) -> Check:
    """Open `report` once per result (or per result in `only`), each from a fresh load, so each
    is reached from the start page as a user reaches it."""
    browser = Chromium(profile)
    try:
        browser.load(report.as_uri())
        categories: dict[str, dict[str, list[str]]] = browser.evaluate("categories")
        check = Check(
            {c: sorted(p for ps in subs.values() for p in ps) for c, subs in categories.items()}
        )
        check.errors["(start page)"] = browser.errors()
        for category, paths in sorted(check.categories.items()):
            for path in (p for p in paths if not only or p in only):
                browser.load(report.as_uri())
                check.shown[path] = show(browser, category, path)
                check.errors[path] = browser.errors()
    finally:
        browser.close()
    return check


def non_background_share(image: Any) -> float:
    """Share of pixels that differ from the commonest colour (0 for a one-colour picture)."""
    colours = image.getcolors(maxcolors=image.width * image.height)
    return 1 - max(count for count, _ in colours) / (image.width * image.height)


def mean_difference(shot: Any, png: Path) -> float:
    """Mean absolute per-channel difference between a screenshot and a PNG (over white)."""
    drawn = Image.open(png).convert("RGBA")
    flat = Image.new("RGBA", drawn.size, "white")
    flat.alpha_composite(drawn)
    pairs = zip(shot.tobytes(), flat.convert("RGB").tobytes(), strict=True)
    return sum(abs(a - b) for a, b in pairs) / (shot.width * shot.height * 3)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke run with its report.html, and report-blank.html where labels.png is blank."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium): no browser to test in")
    workdir = tmp_path_factory.mktemp("browser")
    write_config(workdir)
    snakemake(workdir, "--cores", "2")
    snakemake(workdir, "--report", str(workdir / "report.html"))
    labels = workdir / "results" / "report" / "labels.png"
    drawn = labels.read_bytes()
    Image.new("RGB", Image.open(labels).size, "white").save(labels)
    try:
        snakemake(workdir, "--report", str(workdir / "report-blank.html"))
    finally:
        labels.write_bytes(drawn)
    return workdir


def test_every_figure_shows_without_errors(smoke: Path, tmp_path: Path) -> None:
    start = time.perf_counter()
    check = check_report(smoke / "report.html", tmp_path)
    print(f"\nbrowser check of {len(check.shown)} results: {time.perf_counter() - start:.1f} s")
    assert {p: c for c, ps in check.categories.items() for p in ps} == RESULTS
    assert check.errors == {page: [] for page in ["(start page)", *RESULTS]}
    for name in figures.FIGURES:
        path = f"results/report/{name}.png"
        shown, png = check.shown[path], smoke / path
        assert shown.natural_size == Image.open(png).size, name
        assert shown.screenshot.size == shown.natural_size, name  # drawn unscaled
        assert non_background_share(shown.screenshot) > 0.02, name
        assert mean_difference(shown.screenshot, png) < 1.0, name  # the figure the rule wrote
    table = check.shown["results/report/examples.html"].screenshot
    assert table.width > 500 and non_background_share(table) > 0.002


def test_a_script_error_and_a_request_off_the_file_are_caught(smoke: Path, tmp_path: Path) -> None:
    page = (smoke / "report.html").read_text()
    broken = "<script>console.error('a console error'); undefinedFunction();</script>"
    broken += "<img src='https://example.org/figure.png'>"
    head, body_end, tail = page.rpartition("</body>")
    (tmp_path / "broken.html").write_text(head + broken + body_end + tail)
    browser = Chromium(tmp_path / "profile")
    try:
        browser.load((tmp_path / "broken.html").as_uri())
        errors = browser.errors()
    finally:
        browser.close()
    assert "a console error" in errors
    assert any(e.startswith("ReferenceError: undefinedFunction is not defined") for e in errors)
    assert "request off the file: https://example.org/figure.png" in errors, errors


def test_a_blank_figure_is_caught(smoke: Path, tmp_path: Path) -> None:
    only = ["results/report/labels.png", "results/report/prompts.png"]
    check = check_report(smoke / "report-blank.html", tmp_path, only)
    assert sorted(check.shown) == only
    assert non_background_share(check.shown[only[0]].screenshot) == 0.0  # the blank one
    assert non_background_share(check.shown[only[1]].screenshot) > 0.02
