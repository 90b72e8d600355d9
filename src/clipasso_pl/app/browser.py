"""Driving the app as a user does: its server in a subprocess, Debian's Chromium through Playwright.

Used by the browser tests (tests/test_app.py) and the overhead measurement (:mod:`.overhead`).
Playwright's own browser download is never used: Chromium is ``/usr/bin/chromium`` (apt).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@contextmanager
def app_server(runs: Path, overrides: list[str], timeout_s: float = 180):
    """``clipasso-pl app <overrides>`` on 127.0.0.1 and a free port; yields its URL; stopped on exit."""
    runs = Path(runs)
    runs.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = runs.parent / f"{runs.name}-server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "clipasso_pl.cli", "app", *overrides, "--port", str(port),
                                 "--runs", str(runs)], env=ENV, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the app exited: {log_path.read_text()[-2000:]}")
                try:
                    if http_status(url) == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not serve its page within {timeout_s} s")
                time.sleep(0.5)
            yield url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def chromium():
    """A headless Chromium (Playwright's Browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url: str):
    page = browser.new_context(viewport={"width": 1300, "height": 1400}, accept_downloads=True).new_page()
    page.goto(url)
    page.wait_for_selector("#sketch-start", timeout=60_000)
    return page


def text(page, selector: str) -> str:
    return page.inner_text(selector).strip()


def wait_text(page, selector: str, words: tuple[str, ...], timeout_s: float) -> str:
    """Wait until ``selector``'s text holds one of ``words``; returns the text."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        t = text(page, selector)
        if any(w in t for w in words):
            return t
        time.sleep(0.2)
    raise AssertionError(f"{selector} never showed any of {words} within {timeout_s} s; it shows {text(page, selector)!r}")


def image_src(page, selector: str) -> str | None:
    srcs = page.eval_on_selector_all(f"{selector} img", "els => els.map(e => e.src)")
    return srcs[0] if srcs else None


def upload(page, selector: str, path: Path) -> None:
    page.set_input_files(f"{selector} input[type=file]", str(path))


def start_sketch(page, photo: Path, steps: int | None = None) -> float:
    """Upload ``photo`` on the Sketch tab, set the steps, click Start; returns the click's time (monotonic)."""
    upload(page, "#sketch-photo", photo)
    wait_text(page, "#sketch-upload-status", (": ready", "error"), 60)
    if steps is not None:
        page.fill("#sketch-steps input", str(steps))
    page.click("#sketch-start")
    return time.monotonic()


def watch_sketch(page, clicked: float, timeout_s: float = 600) -> tuple[float | None, list[str]]:
    """Until the run ends: (seconds from the click to the first preview, every distinct preview seen)."""
    seen: list[str] = []
    first = None
    deadline = clicked + timeout_s
    while time.monotonic() < deadline:
        src = image_src(page, "#sketch-preview")
        if src and (not seen or src != seen[-1]):
            seen.append(src)
            first = first or time.monotonic() - clicked
        status = text(page, "#sketch-status")
        if any(w in status for w in ("finished", "error", "stopped")):
            break
        time.sleep(0.1)
    return first, seen


def folder_in(status: str) -> Path:
    """The run folder a status line names (``running in <dir>`` / ``run folder: <dir>``)."""
    for marker in ("run folder: ", "running in "):
        if marker in status:
            return Path(status.split(marker, 1)[1].split()[0])
    raise AssertionError(f"no run folder in {status!r}")
