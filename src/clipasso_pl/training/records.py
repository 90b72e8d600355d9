"""EvalRecord: what one eval of :class:`clipasso_pl.module.SketchModule` leaves for the callbacks.

It satisfies :class:`clipasso_pl.training.contract.Evaluation` (the scene's record is
:class:`clipasso_pl.scene.selection.SceneRecord`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class EvalRecord:
    """The eval loss at one step, taken before that step's update.

    terms: per-seed values [S] of every named loss term (``loss`` is the total).
    points: the control points that were evaluated [S, M, P, 2] (M = strokes x num_stages).
    active: [S] bool, the seeds still training then (None: all).
    opacities: the trained opacities [S, M] (force_sparse), else None (all 1).
    count: how many of the M strokes were drawn (the strokes of the stages reached).
    sketches: their renders [S, 3, H, W] (reused by the snapshots: no second render).
    """

    step: int
    terms: dict[str, Tensor]
    points: Tensor
    active: Tensor | None = None
    opacities: Tensor | None = None
    count: int | None = None
    sketches: Tensor | None = None
