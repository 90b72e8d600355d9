"""A job of the app: one run (or a row of runs) in a worker thread, watched by the page.

The page's generator starts a :class:`Job` and polls it; Gradio's queue (one job at a time
per device) decides when the generator starts. Errors become one line (:func:`one_line`);
the traceback of a bug goes to the server's log, never to the page.
"""

from __future__ import annotations

import logging
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import causes, user_error
from .watch import RunStopped, RunWatcher

log = logging.getLogger("clipasso_pl.app")

POLL_S = 0.2  # how often a job's page (its generator) looks at the job's watcher

# The CLI's hints that name a command-line key, as the page words them.
PAGE_WORDING = {"pass target=<path to a PNG or JPEG photo>": "upload a PNG or JPEG photo",
                "pass photo=<path to a PNG or JPEG photo>": "upload a PNG or JPEG photo"}

# Left out of a run's zip: checkpoints (large; resume uses the folder itself) and W&B's internals.
ZIP_SKIP = ("checkpoints", "wandb")


def one_line(exc: BaseException, hide: dict[str, str] | None = None) -> str:
    """The page's line for a failure: the user-fixable problem (as the CLI words it), else a bug's type and
    first line; ``hide`` replaces server paths (an upload's temporary name) with what the user knows."""
    problem = user_error(exc)
    if problem is not None:
        text = str(problem)
    elif any(isinstance(c, RunStopped) for c in causes(exc)):
        text = "stopped"
    else:
        log.error("app job failed", exc_info=exc)
        text = f"internal error ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); the server log has the details"
    for path, name in {**(hide or {}), **PAGE_WORDING}.items():
        text = text.replace(path, name)
    return "error: " + " ".join(text.split()) if text != "stopped" else text


class Job:
    """``work(job)`` in a daemon thread; ``job.watcher`` is the watcher of the run going on now."""

    def __init__(self, work: Callable[["Job"], Any], stop_raises: bool = False) -> None:
        self.stop_event = threading.Event()
        self.stop_raises = stop_raises
        self.watcher = self.new_watcher()
        self.result: Any = None
        self.error: str | None = None
        self.hide: dict[str, str] = {}  # server path -> the name the page shows
        self.current: int | None = None  # the abstraction job's stroke count running now
        self._work = work
        self.thread = threading.Thread(target=self._run, name="clipasso-app-job", daemon=True)

    def new_watcher(self) -> RunWatcher:
        self.watcher = RunWatcher(self.stop_event, self.stop_raises)
        return self.watcher

    @property
    def stopped(self) -> bool:
        return self.stop_event.is_set()

    def start(self) -> "Job":
        self.thread.start()
        return self

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.stop_event.set()

    def _run(self) -> None:
        try:
            self.result = self._work(self)
        except BaseException as e:  # the page shows one line; a bug's traceback goes to the log
            self.error = one_line(e, self.hide)


class Registry:
    """The running job of each browser session, so that a page's Stop stops its own job only."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def put(self, session: str, job: Job) -> None:
        with self._lock:
            self._jobs[session] = job

    def stop(self, session: str) -> bool:
        with self._lock:
            job = self._jobs.get(session)
        if job is None or not job.alive():
            return False
        job.stop()
        return True

    def drop(self, session: str, job: Job) -> None:
        with self._lock:
            if self._jobs.get(session) is job:
                del self._jobs[session]


def zip_folder(folder: Path, dest: Path) -> Path:
    """``folder`` as a zip at ``dest`` (paths relative to the folder's parent), without :data:`ZIP_SKIP`."""
    folder = Path(folder)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and not set(rel.parts) & set(ZIP_SKIP) and path != dest:
                z.write(path, Path(folder.name) / rel)
    return dest
