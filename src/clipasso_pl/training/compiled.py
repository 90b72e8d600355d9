"""What ``compile=step`` needs of the renderer: its sizes fixed outside the graph.

The step's graph traces the render, so everything the graph reads of the renderer must change
only when the render's sizes do. The torch renderer is told once that a compiled step uses it
(its sizes then only grow), and before each step the sizes are fixed eagerly, as ints.
"""

from __future__ import annotations

from torch import Tensor

from ..render.renderers import TorchRenderer


def mark_compiled(renderer, compile_step: str | None) -> None:
    """Tell a torch renderer that a compiled step uses it, from its first (eval) render on."""
    if compile_step and isinstance(renderer, TorchRenderer):
        renderer.compiled = True


def plan_compiled_render(renderer, points: Tensor, num_segments: int) -> None:
    """Before a compiled step drawing ``points`` [S, N, P, 2] (strokes of ``num_segments`` segments):
    the torch renderer's sizes for its S x N x num_segments one-cubic strokes, fixed eagerly."""
    if isinstance(renderer, TorchRenderer) and renderer.compiled:
        renderer.before_static_render(points.shape[0] * points.shape[1] * num_segments, num_segments, points.device)
