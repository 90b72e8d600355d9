"""The benchmark's clock: per-step marks synchronised at the timed span's ends, and medians.

A step's phases are named once here (``PHASES``): the loops time them, the table shows them.
"""

from __future__ import annotations

import statistics
import time

import pytorch_lightning as pl
import torch

from ..accel import synchronize

PHASES = ("render", "augment", "target_forward", "sketch_forward", "backward", "optimizer", "eval")


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class StepTimes:
    """Collects per-step wall times and the synchronised span over the timed steps."""

    def __init__(self, device: torch.device, warmup: int):
        self.device, self.warmup = device, warmup
        self.marks: list[float] = []
        self.inside: list[float] = []  # per step: host seconds inside the module's step (trainer loop only)

    def mark(self, index: int) -> None:
        """Called at the start of step ``index`` and once after the last step (index = count)."""
        if index == self.warmup:
            synchronize(self.device)
        self.marks.append(time.perf_counter())

    def end(self) -> None:
        synchronize(self.device)
        self.marks.append(time.perf_counter())

    def summary(self) -> dict:
        timed = self.marks[self.warmup:]
        per_step = [1e3 * (b - a) for a, b in zip(timed, timed[1:])]
        out = {"step_ms": 1e3 * (timed[-1] - timed[0]) / max(len(timed) - 1, 1),
               "step_median_ms": median(per_step), "timed_steps": len(per_step)}
        if self.inside:
            # Host time of each step outside training_step..optimizer_step: Lightning, callbacks, logging.
            outside = [t - 1e3 * m for t, m in zip(per_step, self.inside[self.warmup:])]
            out.update(outside_median_ms=median(outside), outside_mean_ms=sum(outside) / max(len(outside), 1))
        return out


class TrainerTimer(pl.Callback):
    """Marks each training step's start for :class:`StepTimes` (synchronising only at the timed span's ends)."""

    def __init__(self, times: StepTimes):
        self.times = times

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.times.mark(trainer.global_step)

    def on_train_end(self, trainer, module) -> None:
        self.times.end()
