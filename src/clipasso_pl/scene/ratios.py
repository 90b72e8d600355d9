"""The simplicity axis: the target ratios r_k between sparsity and CLIP loss.

r_1 = 1 / (CLIP loss of the best fidelity sketch), so at level 1 the sparsity target
equals the loss ratio of the full sketch (every stroke kept). r_1 is halved ``halvings``
times, an exponential f(x) = a * exp(c * x) is fitted to those points (x = 1, 2, ...),
and the levels sample f at x = 1, 1 + step, 1 + 2 * step, ... with a step size that
depends on the fidelity layer and on the part (background / foreground).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ClipassoError


def fit_exponential(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of y = a * exp(c * x) in log space; returns (a, c). ys must be > 0."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError("fit_exponential needs at least two (x, y) pairs of equal length")
    if np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError(f"fit_exponential needs finite positive y, got {y.tolist()}")
    c, log_a = np.polyfit(x, np.log(y), 1)
    return float(np.exp(log_a)), float(c)


def halving_points(r1: float, halvings: int = 4) -> tuple[list[float], list[float]]:
    """(x, y) = (1, r1), (2, r1 / 2), ..., (1 + halvings, r1 / 2**halvings)."""
    xs = [1.0 + i for i in range(halvings + 1)]
    return xs, [r1 / 2**i for i in range(halvings + 1)]


def step_size(layer: int, step_layers: Sequence[int], step_sizes: Sequence[float]) -> float:
    """The x step of ``layer``: the configured value, linearly interpolated between configured layers
    (and held constant beyond them), so any layer list works."""
    if len(step_layers) != len(step_sizes) or not step_layers:
        raise ClipassoError(f"simplicity.step_layers {list(step_layers)} and its step sizes {list(step_sizes)} "
                            "must be non-empty lists of the same length")
    order = np.argsort(step_layers)
    return float(np.interp(layer, np.asarray(step_layers, float)[order], np.asarray(step_sizes, float)[order]))


def simplicity_ratios(clip_loss: float, levels: int, step: float, halvings: int = 4) -> list[float]:
    """The ratio r_k of each of ``levels`` simplicity levels (level 0 = x 1 = r_1)."""
    if not np.isfinite(clip_loss) or clip_loss <= 0:
        raise ClipassoError(f"the best fidelity sketch has CLIP loss {clip_loss}; the simplicity ratios need a "
                            "positive finite loss (check the fidelity run's logs)")
    a, c = fit_exponential(*halving_points(1.0 / clip_loss, halvings))
    return [a * float(np.exp(c * (1.0 + k * step))) for k in range(levels)]
