"""Sampling stroke start points and the random walk that places the other control points.

Coordinates are pixels, origin top-left, x right, y down. All randomness goes
through the given ``torch.Generator`` so a seed reproduces its strokes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ClipassoError


def sampling_probability(saliency: Tensor, edges: Tensor | None = None, temperature: float = 0.3) -> Tensor:
    """Probability of starting a stroke at each pixel.

    saliency: Tensor  # [H, W] in [0, 1]
    edges: Tensor | None  # [H, W] binary, 1 on an XDoG edge (see ``xdog_edges``)
    returns: Tensor  # [H, W] float32, sums to 1

    The score is ``saliency * edges``: it keeps the saliency of pixels that lie on an
    edge and zeroes everything else, so strokes start on salient *lines*, not on the
    flat interior of a salient region (the paper's ``(1 - XDoG image) * saliency``).
    With ``edges=None`` the score is the saliency alone. A softmax with temperature
    ``exp(s / T) / sum exp(s / T)`` is taken over the non-zero scores only; zero
    scores keep probability 0 (so e.g. the minimum of a min-max normalised map is
    never picked). If no score is non-zero the result is uniform over all pixels.
    """
    if temperature <= 0:
        raise ClipassoError(f"init.temperature must be > 0, got {temperature}")
    score = saliency.detach().to(torch.float64)
    if edges is not None:
        if edges.shape != saliency.shape:
            raise ValueError(f"edges {tuple(edges.shape)} and saliency {tuple(saliency.shape)} differ")
        score = score * edges.to(score)
    keep = score > 0
    if not bool(keep.any()):
        return torch.full(saliency.shape, 1.0 / saliency.numel(), dtype=torch.float32)
    logits = torch.where(keep, score / temperature, torch.full_like(score, float("-inf")))
    prob = torch.softmax(logits.flatten(), dim=0).view_as(score)
    return prob.to(torch.float32)


def sample_start_points(prob: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Draw n distinct pixels from ``prob`` and return their centres.

    prob: Tensor  # [H, W], non-negative, need not be normalised
    returns: Tensor  # [n, 2] float32, (x, y) = (column + 0.5, row + 0.5) pixels

    Without replacement (``torch.multinomial``). If fewer than n pixels have non-zero
    probability, all of them are taken and the remaining starts are drawn uniformly,
    without replacement, from the other pixels (multinomial would otherwise fail).
    """
    H, W = prob.shape
    if n < 0:
        raise ValueError("n must be >= 0")
    if n > H * W:
        raise ClipassoError(f"cannot place {n} strokes on a {H}x{W} canvas: use fewer strokes")
    flat = prob.detach().flatten().to(torch.float64).cpu()
    nonzero = int((flat > 0).sum())
    if n == 0:
        return torch.zeros(0, 2)
    if nonzero >= n:
        idx = torch.multinomial(flat, n, replacement=False, generator=generator)
    else:
        chosen = torch.nonzero(flat > 0).flatten()
        # Random order among the certain picks, then uniform over the rest.
        chosen = chosen[torch.randperm(len(chosen), generator=generator)]
        rest = (flat <= 0).to(torch.float64)
        extra = torch.multinomial(rest, n - nonzero, replacement=False, generator=generator)
        idx = torch.cat([chosen, extra])
    rows = torch.div(idx, W, rounding_mode="floor")
    cols = idx % W
    return torch.stack([cols, rows], dim=1).to(torch.float32) + 0.5


def uniform_start_points(n: int, height: int, width: int, generator: torch.Generator) -> Tensor:
    """n start points uniform over the canvas. returns: Tensor  # [n, 2] (x, y) pixels."""
    u = torch.rand(n, 2, generator=generator)
    return u * torch.tensor([float(width), float(height)])


def random_walk(starts: Tensor, radius_px: float, generator: torch.Generator, num_points: int = 4) -> Tensor:
    """Cubic Bézier control points by a short random walk from each start.

    starts: Tensor  # [n, 2] (x, y) pixels
    radius_px: max step per axis in pixels (``StrokeInit`` passes 0.5 * radius * side,
        i.e. 5.6 px for the paper's radius 0.05 on a 224 canvas; see ``StrokeInit``)
    returns: Tensor  # [n, num_points, 2] float32; point j+1 = point j + U[-radius, radius]^2

    Points are not clamped to the canvas: the optimiser may move them back, and a
    clamp would bias strokes near the border.
    """
    n = starts.shape[0]
    offsets = (torch.rand(n, num_points - 1, 2, generator=generator) * 2 - 1) * float(radius_px)
    path = torch.cat([starts.to(torch.float32)[:, None], offsets], dim=1)
    return path.cumsum(dim=1)
