"""The floor of every table: stroke-count-matched random sketches, drawn by the core renderer.

A random sketch of level N is what ``init=random`` starts from: N start points uniform
over the canvas, each continued by the random walk of ``init.radius``; no optimisation.
Sample i of a level is seeded by (level, i), so the floor is the same on every rerun.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..init import random_walk, uniform_start_points
from ..strokes import Strokes


def random_points(num_strokes: int, canvas: int, radius: float, seed: int) -> Tensor:
    """[N, 4, 2] pixels: uniform start points and a random walk of ``0.5 * radius * canvas`` per step
    (the same draw order and step window as ``StrokeInit(mode="random")``)."""
    g = torch.Generator().manual_seed(int(seed))
    starts = uniform_start_points(int(num_strokes), int(canvas), int(canvas), g)
    return random_walk(starts, 0.5 * float(radius) * int(canvas), g)


def random_sketches(renderer, num: int, num_strokes: int, canvas: int = 224, half_width: float = 1.5,
                    radius: float = 0.05, seed: int = 0, batch: int = 16) -> Tensor:
    """``num`` random sketches of ``num_strokes`` strokes rendered by ``renderer``: [num, 3, canvas, canvas]."""
    out = []
    for start in range(0, num, batch):
        ids = range(start, min(num, start + batch))
        points = torch.stack([random_points(num_strokes, canvas, radius, seed * 100_003 + num_strokes * 1009 + i) for i in ids])
        with torch.no_grad():
            out.append(renderer.render(Strokes.constant(points, float(half_width)), int(canvas), int(canvas)).detach().cpu())
    return torch.cat(out) if out else torch.zeros(0, 3, canvas, canvas)
