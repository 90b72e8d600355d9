"""What a callback may read of a sketching LightningModule: the one declared contract.

Two modules train sketches: :class:`clipasso_pl.module.SketchModule` (the control points of S
seeds of one image) and :class:`clipasso_pl.scene.module.SceneSketchModule` (per-seed MLPs that
place the strokes of one scene part). The callbacks (``clipasso_pl.callbacks``, the app's
``RunWatcher``) read them only through the members below, besides LightningModule's own API
(``global_step``, ``device``, ``log``). Each module sets every member in its ``__init__``, so an
absent value is ``None``, never a missing attribute: a callback reads ``module.opacities``, not
``getattr(module, "opacities", None)``.

- :class:`Sketcher`: both modules (what ``LayerLossLogger``, ``SketchSnapshot`` and the app read).
- :class:`PointSketcher`: ``SketchModule`` alone, which the sketch-only callbacks need too
  (initialisation, best sketch, early stopping, W&B media, the progress animation).
- :class:`Evaluation`: what one eval leaves in ``module.last_eval``.

Shapes: S seeds, M strokes (all stages), P points per stroke, pixels (x right, y down).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from ..strokes import Strokes
from .nonfinite import NonfiniteSteps


@runtime_checkable
class Evaluation(Protocol):
    """One eval, of the sketch of training step ``step`` (before that step's update)."""

    step: int
    terms: dict[str, Tensor]  # each [S]; ``loss`` is the total
    points: Tensor  # [S, M, P, 2] the evaluated control points
    opacities: Tensor | None  # [S, M] the trained opacities; None: all 1
    count: int | None  # how many of the M strokes were drawn; None: all
    sketches: Tensor | None  # [S, 3, H, W] the eval's renders; None: the eval kept none


@runtime_checkable
class Sketcher(Protocol):
    """A LightningModule that trains one sketch per seed, as every callback reads it."""

    seeds: list[int]  # [S] the seeds, one sketch each
    height: int  # canvas, pixels
    width: int
    eval_interval: int  # steps between evals (0: none)
    renderer: Any  # a ``Renderer``: render(strokes, height, width) -> [S, 3, H, W]
    opacities: Tensor | None  # [S, M] trained opacities; None: not trained (all 1)
    last_train: dict[str, Tensor] | None  # the latest step's terms, each [S]
    last_eval: Evaluation | None  # the eval of the latest step; None when it was no eval step
    nonfinite: NonfiniteSteps | None  # counts of skipped non-finite steps; None: not counted

    @property
    def points(self) -> Tensor:
        """The current control points [S, M, P, 2] (detached or a parameter: callbacks only read)."""

    def strokes(self, points: Tensor) -> Strokes:
        """Strokes of a batch of ``points`` [B, M, P, 2] with the module's widths and opacity rule."""


@runtime_checkable
class PointSketcher(Sketcher, Protocol):
    """A Sketcher whose parameters are the control points themselves (``SketchModule``)."""

    target: Tensor  # [1, 3, H, W] in [0, 1]
    initialized: Tensor  # [] bool: the strokes were drawn (or given)
    init_results: list | None  # the ``InitResult`` of each seed (saliency, starts); None: not drawn here
    active: Tensor  # [S] bool: the seeds still training (early stopping)

    def initialize(self) -> list:
        """Draw every seed's initial strokes; returns the InitResults."""

    def visible_strokes(self, step: int | None = None) -> int:
        """How many of the M strokes are drawn at ``step`` (the stages reached)."""

    def strokes(self, points: Tensor, opacities: Tensor | None = None, count: int | None = None) -> Strokes:
        """Strokes of the first ``count`` of ``points`` [B, M, P, 2] with ``opacities`` [B, M] (None: the rule)."""

    def render(self, points: Tensor | None = None, opacities: Tensor | None = None,
               count: int | None = None) -> Tensor:
        """Pixels [S, 3, H, W] of the current (or given) points."""
