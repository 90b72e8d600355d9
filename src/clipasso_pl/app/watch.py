"""The app's hook into a run: a Lightning callback that records each eval and stops the run on request.

It reads only what the module already holds after an eval step (``module.last_eval``: the
per-seed losses [S] and the renders [S, 3, H, W] of that eval) and copies them to the host
there, where ``BestSketch`` reads the losses anyway; other steps cost one Python int read
(``trainer.global_step``) and one flag check, no device sync. A Stop sets
``trainer.should_stop``: Lightning ends the fit after that step and ``BestSketch`` writes
``best.svg`` as at any fit end. With ``stop_raises`` (the scene matrix, whose driver starts
the next stage after a fit ends), a Stop raises :class:`RunStopped` instead.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch

from ..training.contract import Sketcher


class RunStopped(Exception):
    """Raised by a watcher with ``stop_raises`` when Stop was pressed."""


@dataclass
class Progress:
    """What the page shows of a run: a copy made under the watcher's lock."""

    version: int = 0  # bumped at every eval (the preview changes)
    step: int = 0
    max_steps: int = 0
    seconds: float = 0.0  # since training started
    seeds: list = field(default_factory=list)
    curve: list = field(default_factory=list)  # (step, seed, eval loss) of every eval so far
    sketches: np.ndarray | None = None  # uint8 [S, H, W, 3] of the last eval
    losses: list = field(default_factory=list)  # [S] of the last eval

    @property
    def best_index(self) -> int:
        return int(np.argmin(self.losses)) if self.losses else 0

    @property
    def eta_s(self) -> float | None:
        if self.step <= 0 or self.max_steps <= 0:
            return None
        return self.seconds / self.step * max(self.max_steps - self.step, 0)


class RunWatcher(pl.Callback):
    """Records evals for the page and ends the run on :meth:`stop` (see the module docstring)."""

    def __init__(self, stop_event: threading.Event | None = None, stop_raises: bool = False) -> None:
        self.stop_event = stop_event or threading.Event()
        self.stop_raises = stop_raises
        self._lock = threading.Lock()
        self._p = Progress()
        self._t0: float | None = None

    def stop(self) -> None:
        self.stop_event.set()

    def snapshot(self) -> Progress:
        with self._lock:
            p = self._p
            return Progress(p.version, p.step, p.max_steps, p.seconds, list(p.seeds), list(p.curve), p.sketches,
                            list(p.losses))

    def on_train_start(self, trainer, module) -> None:
        self._t0 = time.perf_counter()
        with self._lock:
            self._p.max_steps = int(trainer.max_steps)
            self._p.seeds = list(module.seeds)
            self._p.step = int(trainer.global_step)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.stop_raises and self.stop_event.is_set():
            raise RunStopped("stopped")

    def on_train_batch_end(self, trainer, module: Sketcher, outputs, batch, batch_idx) -> None:
        if self.stop_event.is_set():
            trainer.should_stop = True
        record = module.last_eval  # the contract (contract.Sketcher) both sketching modules keep
        step = int(trainer.global_step)  # a Python int: no device read
        if record is None or record.sketches is None:
            with self._lock:
                self._p.step, self._p.seconds = step, time.perf_counter() - self._t0
            return
        # An eval step: the host reads the eval's values here anyway (BestSketch, LayerLossLogger).
        losses = record.terms["loss"].detach().float().cpu().tolist()
        pictures = record.sketches.detach().clamp(0, 1).mul(255).round().to(torch.uint8)
        pictures = pictures.permute(0, 2, 3, 1).cpu().numpy()
        with self._lock:
            p = self._p
            p.step, p.seconds = step, time.perf_counter() - self._t0
            p.curve.extend((int(record.step), int(s), float(v)) for s, v in zip(module.seeds, losses))
            p.sketches, p.losses = pictures, losses
            p.version += 1
