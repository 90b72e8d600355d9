"""Cubic Bézier geometry for the rasterizer: power basis, evaluation, equal-arc chords, nearest point.

A stroke's four control points P0..P3 (pixels, x then y) become power-basis coefficients
``k [8, B]`` (rows x0, y0, x1, y1, ..., y3), so that one op evaluates x and y of B strokes.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Samples per stroke for the arc-length table that places the chords.
ARC_SAMPLES = 32


def power_basis(p: Tensor) -> Tensor:
    """Coefficients of B(t) = k0 + k1 t + k2 t^2 + k3 t^3. p: [B, 4, 2] -> [8, B], rows x0, y0, x1, y1, ..., y3

    (so that ``k.view(4, 2, B)`` is [coefficient, coordinate, stroke]: one op evaluates x and y)."""
    p0, p1, p2, p3 = p.unbind(-2)
    k = torch.stack((p0, 3 * (p1 - p0), 3 * (p0 - 2 * p1 + p2), p3 - p0 + 3 * (p1 - p2)), 0)  # [4, B, 2]
    return k.transpose(1, 2).reshape(8, -1)


def horner(k: Tensor, t: Tensor) -> Tensor:
    """B(t) from power-basis coefficients k [4, 2, ...] and t [...] (broadcast) -> [2, ...] (x, y)."""
    return k[0] + t * (k[1] + t * (k[2] + t * k[3]))


def arc_chords(k: Tensor, count: Tensor, num_chords: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split each stroke into ``count`` chords of equal arc length, laid out in ``num_chords`` slots.

    k: [8, B] power basis; count: [B] chords per stroke (0 allowed; a sum above num_chords cuts
    the tail). Returns stroke_of [G] and the curve parameters t [2, G] of each chord's ends,
    G = num_chords. Slots past the last chord belong to the last stroke, with both ends at
    t = 1: its end point, a candidate like any other.
    """
    device, dtype = k.device, k.dtype
    num = k.shape[1]
    dense = torch.linspace(0, 1, ARC_SAMPLES + 1, device=device, dtype=dtype)
    powers = dense[:, None].pow(torch.arange(4, device=device))  # [T+1, 4]
    pts = (powers @ k.view(4, -1)).view(-1, 2, num)  # [T+1, 2, B]
    seg = (pts[1:] - pts[:-1]).norm(dim=1).T  # [B, T]
    cum = torch.cat((torch.zeros(num, 1, device=device, dtype=dtype), seg.cumsum(1)), 1)  # [B, T+1]
    end = torch.cumsum(count, 0)
    slots = torch.arange(num_chords, device=device)
    stroke_of = torch.searchsorted(end, slots, right=True).clamp_(max=num - 1)
    j = slots - (end - count).index_select(0, stroke_of)
    n = count.index_select(0, stroke_of)
    jf, nf = j.to(dtype), n.to(dtype).clamp_(min=1)
    table = cum.index_select(0, stroke_of)  # [G, T+1]
    ends = (torch.stack((jf, jf + 1), 1) / nf[:, None]).clamp_(max=1) * table[:, -1:]  # [G, 2] arc length
    kk = torch.searchsorted(table, ends).clamp_(1, ARC_SAMPLES)  # segment k-1..k holds the end
    c0, c1 = table.gather(1, kk - 1), table.gather(1, kk)
    frac = ((ends - c0) / (c1 - c0).clamp_min(1e-12)).clamp_(0, 1)
    t = (kk - 1 + frac) / ARC_SAMPLES
    # the first chord starts at t = 0 already (the table starts at 0); the last one ends at
    # exactly 1 and a padding slot starts there too
    return stroke_of, torch.maximum(t.T, (torch.stack((j, j + 1)) >= n).to(dtype))


def newton(k: Tensor, c: Tensor, t: Tensor, steps: int = 2) -> Tensor:
    """Refine t towards a local minimum of |B(t) - c|^2 on [0, 1]; a step is kept only if it helps.

    k: [4, 2, M] power-basis coefficients per pair; c: [2, M] pixel centres; t: [M].
    """
    a0, a1, a2, a3 = k[0] - c, k[1], k[2], k[3]  # B(t) - c
    b2, b3, b6 = 2 * a2, 3 * a3, 6 * a3

    def dist2(tt):
        b = a0 + tt * (a1 + tt * (a2 + tt * a3))
        return b, (b * b).sum(0)

    _, best = dist2(t)
    for _ in range(steps):
        b, _ = dist2(t)
        db = a1 + t * (b2 + t * b3)  # B'
        g = (b * db).sum(0)  # half the derivative of the squared distance
        h = (db * db + b * (b2 + t * b6)).sum(0)  # and of g
        # Newton where the curvature is positive, else a tiny step downhill
        convex = (h > 1e-12).to(t.dtype)
        cand = (t - convex * g / h.clamp_min(1e-12) - (1 - convex) * 1e-3 * g.sign()).clamp_(0, 1)
        _, cd = dist2(cand)
        better = (cd < best).to(t.dtype)
        t = t + better * (cand - t)
        best = torch.minimum(cd, best)
    return t
