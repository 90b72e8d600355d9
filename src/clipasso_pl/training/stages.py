"""Stroke stages (the official ``num_stages``): which strokes are drawn and trained at a step.

Stage k (0-based) covers steps ``[k * stage_steps, (k + 1) * stage_steps)`` (the last stage
runs to the end): it draws the strokes of stages 0..k and trains only those added in stage k,
with a fresh Adam from its first step. With one stage every stroke is drawn and trained throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class StrokeStages:
    """``strokes`` new strokes per stage, ``num_stages`` stages of ``stage_steps`` steps each:
    M = strokes x num_stages strokes in all."""

    strokes: int
    num_stages: int = 1
    stage_steps: int = 0

    def __post_init__(self) -> None:
        if self.strokes < 1:
            raise ValueError("strokes must be >= 1")
        if self.num_stages > 1 and self.stage_steps < 1:
            raise ValueError("num_stages > 1 needs stage_steps >= 1")

    @property
    def total(self) -> int:
        """M: the strokes of every stage."""
        return self.strokes * self.num_stages

    def stage(self, step: int) -> int:
        """The stage (0-based) that ``step`` belongs to."""
        if self.num_stages == 1:
            return 0
        return min(int(step) // self.stage_steps, self.num_stages - 1)

    def visible(self, step: int) -> int:
        """How many strokes are drawn at ``step``: those of the stages reached so far."""
        return self.strokes * (self.stage(step) + 1)

    def frozen(self, step: int) -> tuple[int, bool]:
        """(how many leading strokes stay fixed at ``step``, whether ``step`` starts a stage after the
        first: a fresh Adam)."""
        stage = self.stage(step)
        return stage * self.strokes, stage > 0 and int(step) == stage * self.stage_steps


def first_strokes(points: Tensor, opacities: Tensor | None, count: int) -> tuple[Tensor, Tensor | None]:
    """The first ``count`` strokes of points [S, M, P, 2] and opacities [S, M] (or None); the tensors
    themselves when ``count`` is M (no slice op)."""
    if count != points.shape[1]:
        points = points[:, :count]
        opacities = None if opacities is None else opacities[:, :count]
    return points, opacities
