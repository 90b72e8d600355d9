"""What the app costs per step over the CLI, measured on the same run.

``python -m clipasso_pl.app.overhead [--repeats 3] [--steps 200] [key=value ...]`` runs the same
sketch (the same photo and overrides, default ``preset=smoke logger=csv``) alternately as
``clipasso-pl sketch`` in a subprocess and as an app job started from Chromium (the app's server
in its own subprocess, idle during the CLI runs), and prints each run's seconds per step (the
Trainer's wall time / steps, from summary.json), the medians, the app's extra time per step, and
the time from clicking Start to the first preview. Needs the [app] extra and chromium.

``--inprocess``: on a busy machine the wall time of separate processes is mostly other
people's load, so this mode runs in one process, alternating ``run_sketch`` as the CLI calls
it and ``run_sketch`` with the app's watcher while a thread does what the page's generator
does (poll every 0.2 s; at each eval make the pictures and the loss table and encode them as
PNG, as Gradio does before sending them), and compares the wall time and the process CPU time
per step.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .browser import ENV, app_server, chromium, folder_in, open_page, start_sketch, text, watch_sketch


def photo(folder: Path) -> Path:
    from PIL import Image
    from skimage import data

    path = folder / "cat.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


def cli_seconds_per_step(target: Path, overrides: list[str], run_dir: Path) -> float:
    subprocess.run([sys.executable, "-m", "clipasso_pl.cli", "sketch", *overrides, f"target={target}",
                    f"hydra.run.dir={run_dir}"], env=ENV, check=True, capture_output=True, timeout=3600)
    return json.loads((run_dir / "summary.json").read_text())["seconds_per_step"]


def page_poller(job_watcher, done: threading.Event, cpu: list) -> threading.Thread:
    """A thread doing the page generator's work on ``job_watcher`` until ``done``; appends its CPU seconds to ``cpu``."""
    from .jobs import POLL_S
    from .views import loss_frame, progress_line, seed_pictures

    def poll():
        seen = -1
        while not done.is_set():
            time.sleep(POLL_S)
            p = job_watcher.snapshot()
            progress_line(p)
            if p.version != seen:
                seen = p.version
                best, row = seed_pictures(p)
                if best is not None:
                    for picture in (best, row):
                        picture.save(io.BytesIO(), format="PNG")
                    loss_frame(p).to_json()
        cpu.append(time.thread_time())

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    return thread


def timed_watcher():
    """The app's watcher, adding up the CPU seconds its hook takes (``.cpu_s``)."""
    from .watch import RunWatcher

    class TimedWatcher(RunWatcher):
        cpu_s = 0.0

        def on_train_batch_end(self, *args) -> None:
            t = time.thread_time()
            super().on_train_batch_end(*args)
            self.cpu_s += time.thread_time() - t

    return TimedWatcher()


def in_process(target: Path, overrides: list[str], work: Path, repeats: int) -> None:
    from ..api import run_sketch
    from ..config import compose
    rows = {"cli": [], "app": []}
    for i in range(repeats):
        for kind in ("cli", "app") if i % 2 == 0 else ("app", "cli"):
            cfg = compose("sketch", overrides, target=str(target))
            cpu = time.process_time()
            if kind == "cli":
                result = run_sketch(cfg, work / f"{kind}{i}")
            else:
                watcher, done, poll_cpu = timed_watcher(), threading.Event(), []
                poller = page_poller(watcher, done, poll_cpu)
                result = run_sketch(cfg, work / f"{kind}{i}", callbacks=[watcher])
                done.set()
                poller.join()
                own = (watcher.cpu_s + poll_cpu[0]) / result.summary["steps_run"]
                print(f"repeat {i} app: its own work (watcher + page poller) {own * 1000:.2f} CPU ms/step", flush=True)
            steps = result.summary["steps_run"]
            rows[kind].append((result.summary["seconds_per_step"], (time.process_time() - cpu) / steps))
            print(f"repeat {i} {kind}: {rows[kind][-1][0]:.4f} s/step wall, {rows[kind][-1][1]:.4f} CPU s/step",
                  flush=True)
    for j, what in enumerate(("wall", "CPU")):
        c = statistics.median(r[j] for r in rows["cli"])
        a = statistics.median(r[j] for r in rows["app"])
        print(f"median {what} s/step: CLI {c:.4f}, app {a:.4f}; the app adds {a - c:+.4f} s/step "
              f"({(a / c - 1) * 100:+.1f} %)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--inprocess", action="store_true", help="one process, no server or browser (see above)")
    args, extra = parser.parse_known_args(argv)
    overrides = ["preset=smoke", "logger=csv", *extra, f"steps={args.steps}"]
    work = Path(tempfile.mkdtemp(prefix="clipasso-app-overhead-"))
    target = photo(work)
    if args.inprocess:
        in_process(target, overrides, work, args.repeats)
        return
    cli, app, first = [], [], []
    with app_server(work / "runs", overrides) as url, chromium() as browser:
        for i in range(args.repeats):
            cli.append(cli_seconds_per_step(target, overrides, work / f"cli{i}"))
            page = open_page(browser, url)
            t, _ = watch_sketch(page, start_sketch(page, target), timeout_s=3600)
            status = text(page, "#sketch-status")
            if "finished" not in status:
                raise SystemExit(f"the app run did not finish: {status}")
            app.append(json.loads((folder_in(status) / "summary.json").read_text())["seconds_per_step"])
            first.append(t)
            page.context.close()
            print(f"repeat {i}: CLI {cli[-1]:.4f} s/step, app {app[-1]:.4f} s/step, first preview {t:.2f} s", flush=True)
    c, a = statistics.median(cli), statistics.median(app)
    print(f"overrides: {' '.join(overrides)}")
    print(f"median s/step: CLI {c:.4f}, app {a:.4f}; the app adds {a - c:+.4f} s/step ({(a / c - 1) * 100:+.1f} %)")
    print(f"click Start -> first preview: median {statistics.median(first):.2f} s (runs: "
          f"{', '.join(f'{x:.2f}' for x in first)})")


if __name__ == "__main__":
    main()
