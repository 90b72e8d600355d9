"""`clipasso-pl app` in a real browser: Debian's Chromium driven by Playwright, the tiny random-weight models.

The server is the installed command in a subprocess on 127.0.0.1 and a free port, stopped at the
end; every wait is bounded. CLIPASSO_PL_APP_SCREENSHOTS=<dir> saves a screenshot of each tab there
(README's pictures: CLIPASSO_PL_APP_SCREENSHOTS=docs).
"""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

STEPS = 16  # the app's smoke runs: evals every 2 steps, so the preview changes several times

try:
    import gradio  # noqa: F401
    import playwright  # noqa: F401
except ImportError as e:  # the [app] extra is not installed
    pytest.skip(f"the app's browser tests need gradio and playwright ({e}): make app-install", allow_module_level=True)

from clipasso_pl.app.browser import (CHROMIUM, app_server, chromium, folder_in, http_status, image_src, open_page,  # noqa: E402
                                     start_sketch, text, upload, wait_text, watch_sketch)

if not Path(CHROMIUM).is_file():
    pytest.skip("the app's browser tests need Chromium: apt-get install chromium", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SHOTS = os.environ.get("CLIPASSO_PL_APP_SCREENSHOTS")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, runs folder) of `clipasso-pl app preset=smoke ...` on a free port."""
    runs = tmp_path_factory.mktemp("app") / "runs"
    with app_server(runs, ["preset=smoke", "logger=csv", f"steps={STEPS}", "eval_interval=2", "save_interval=2"]) as url:
        yield url, runs


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser, server):
    pg = open_page(browser, server[0])
    yield pg
    pg.context.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A photo, an RGBA scene, a text file named .png, and a decompression bomb."""
    from PIL import Image, ImageDraw
    from skimage import data

    d = tmp_path_factory.mktemp("uploads")
    cat = Image.fromarray(data.chelsea()).resize((150, 100))
    cat.save(d / "cat.png")
    scene = cat.resize((128, 128)).convert("RGBA")
    alpha = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(alpha).ellipse((34, 30, 94, 100), fill=255)
    scene.putalpha(alpha)
    scene.save(d / "scene.png")
    (d / "notimage.png").write_text("hello, this is not an image\n")
    Image.new("1", (15000, 15000)).save(d / "bomb.png")  # 225 Mpx declared in a 27 kB file
    return d


def run_dir_of(page) -> Path:
    return folder_in(text(page, "#sketch-status"))


def shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


def test_sketch_run_previews_and_svg_download(page, server):
    from clipasso_pl.strokes import read_strokes

    first, seen = watch_sketch(page, start_sketch(page, IMAGES["cat"]), timeout_s=240)
    status = text(page, "#sketch-status")
    assert "sketch finished" in status, status
    print(f"\nclick Start -> first preview: {first:.2f} s; previews seen: {len(seen)}")
    assert len(seen) >= 3, f"the preview changed {len(seen) - 1} time(s) after it first appeared; want at least 2"
    assert f"step {STEPS} / {STEPS}" in text(page, "#sketch-progress")
    run = run_dir_of(page)
    shot(page, "app-sketch.png")

    with page.expect_download(timeout=30_000) as info:
        page.click("#sketch-downloads a[download='best.svg']")
    got = Path(info.value.path())
    ET.parse(got)  # well-formed XML
    strokes, (h, w) = read_strokes(got)
    assert strokes.points.shape[1] == 16 and (h, w) == (224, 224)
    assert got.read_bytes() == (run / "best.svg").read_bytes()
    # the same run directory as the CLI's
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_run"] == STEPS and (run / "config.yaml").is_file()
    assert "<svg" in page.inner_html("#sketch-svg")


IMAGES: dict[str, Path] = {}


@pytest.fixture(autouse=True)
def _images(images):
    IMAGES.update({p.stem: p for p in images.iterdir()})


@pytest.mark.parametrize("name, words", [("notimage", "not a readable image"), ("bomb", "decompression bomb")])
def test_bad_upload_is_one_line(page, name, words):
    upload(page, "#sketch-photo", IMAGES[name])
    line = wait_text(page, "#sketch-upload-status", ("error",), 60)
    assert words in line and "\n" not in line and "Traceback" not in page.content()
    assert line.startswith("error:") and str(IMAGES[name].parent) not in line  # names the file, not a server path
    page.click("#sketch-start")  # the run refuses it too, with the same line
    assert words in wait_text(page, "#sketch-status", ("error",), 120)


def test_stop_ends_the_run_and_keeps_best(page):
    start_sketch(page, IMAGES["cat"], steps=2000)
    deadline = time.monotonic() + 180
    while not image_src(page, "#sketch-preview") and time.monotonic() < deadline:
        time.sleep(0.2)
    page.click("#sketch-stop")
    status = wait_text(page, "#sketch-status", ("stopped", "finished", "error"), 120)
    assert status.startswith("stopped") and "best.svg" in status, status
    run = run_dir_of(page)
    assert (run / "best.svg").is_file()
    assert json.loads((run / "summary.json").read_text())["steps_run"] < 2000


def test_two_jobs_at_once_run_one_after_the_other(browser, server):
    pages = []
    for _ in range(2):
        pg = open_page(browser, server[0])
        upload(pg, "#sketch-photo", IMAGES["cat"])
        wait_text(pg, "#sketch-upload-status", (": ready",), 60)
        pages.append(pg)
    for pg in pages:
        pg.click("#sketch-start")
    queued = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        queued = queued or "queue" in pages[1].inner_text("#sketch-preview").lower()
        if all("finished" in text(pg, "#sketch-status") or "error" in text(pg, "#sketch-status") for pg in pages):
            break
        time.sleep(0.2)
    runs = []
    for pg in pages:
        assert "sketch finished" in text(pg, "#sketch-status")
        runs.append(json.loads((run_dir_of(pg) / "summary.json").read_text()))
        pg.context.close()
    assert queued, "the second page never showed its place in the queue"
    first, second = sorted(runs, key=lambda s: s["launched"])
    assert first["finished"] <= second["launched"], "the two jobs overlapped"


def test_abstraction_row(page):
    page.get_by_role("tab", name="Abstraction").click()
    upload(page, "#abs-photo", IMAGES["cat"])
    page.fill("#abs-steps input", "6")
    page.click("#abs-start")
    status = wait_text(page, "#abs-status", ("finished", "error"), 400)
    assert "abstraction finished" in status, status
    job = folder_in(status)
    for n in (4, 8, 16, 32):
        assert (job / f"strokes{n}" / "best.svg").is_file()
        summary = json.loads((job / f"strokes{n}" / "summary.json").read_text())
        assert summary["strokes"] == n and summary["steps_run"] == 6
    shot(page, "app-abstraction.png")


def test_scene_tab_fills_its_matrix(page):
    page.get_by_role("tab", name="Scene").click()
    upload(page, "#scene-photo", IMAGES["scene"])
    page.click("#scene-start")
    cells, seen = set(), []
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        progress = text(page, "#scene-progress")
        if progress.startswith("cells"):
            cells.add(progress.split("·")[0].strip())
        src = image_src(page, "#scene-matrix")
        if src and (not seen or seen[-1] != src):
            seen.append(src)
        if any(w in text(page, "#scene-status") for w in ("finished", "error")):
            break
        time.sleep(0.2)
    status = text(page, "#scene-status")
    assert "scene matrix finished" in status, status
    root = folder_in(status)
    summary = json.loads((root / "summary.json").read_text())
    assert summary["complete"] and summary["cells_done"] == 4
    assert "cells 4 / 4" in text(page, "#scene-progress")
    assert len(cells) >= 3, f"the matrix did not fill in cell by cell: {sorted(cells)}"
    shot(page, "app-scene.png")


def test_no_file_outside_the_run_folder_is_served(server):
    url, runs = server
    for path in ("/etc/passwd", str(Path(__file__).resolve()), "README.md"):
        assert http_status(f"{url}/gradio_api/file={path}") == 403, path
