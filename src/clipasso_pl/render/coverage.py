"""Pixel coverage of a stroke band and the "over" compositing of black strokes, with their gradients.

Step 3 of :mod:`~clipasso_pl.render.core`: per (stroke, pixel) pair, the area of the pixel
square inside the band around the nearest curve point, then ``log(1 - opacity * coverage)``
summed per pixel; a custom autograd Function keeps only a few numbers per pair for the backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .bezier import horner

# Smallest 1 - opacity * coverage kept in the log-sum (full coverage gives exactly 0).
LOG_FLOOR = 1e-10


def band_coverage(d: Tensor, r: Tensor, nx: Tensor, ny: Tensor, grad: bool):
    """Area of the unit pixel square inside a straight band of half-width r.

    d: distance of the pixel centre to the band's centre line, (nx, ny) the band's unit
    normal, all [M]. Coverage = G(r - d) + G(r + d), G the centred CDF of the square
    projected on the normal: a trapezoid density of widths w1 = max(|nx|, |ny|) and
    w2 = min(...). With ``grad``, also d cov / d (d, r, nx, ny).
    """
    ax, ay = nx.abs(), ny.abs()
    w1, w2 = torch.maximum(ax, ay), torch.minimum(ax, ay).clamp_min(1e-6)
    h2 = (w1 + w2) * 0.5
    inv_w1 = 1 / w1
    inv_w1w2 = inv_w1 / w2
    # G(x) = x / w1 on the flat top (x <= h1 = (w1 - w2) / 2), 0.5 - v^2 / (2 w1 w2) on the
    # ramp, 0.5 past h2 = (w1 + w2) / 2, with v = max(h2 - x, 0). One expression for all
    # three: G = 0.5 - (v - p + p^2 / (2 w2)) / w1 with p = min(v, w2); it and its derivatives
    # are exactly 0.5 and 0 past h2 (full coverage stays exact; 1 / w2 amplifies no rounding).
    # Both halves, x = |r - d| and r + d, at once ([2, M]); G(r - d) = sign(r - d) G(|r - d|).
    u = r - d
    sign = torch.ones_like(u).copysign_(u)
    v = (h2 - torch.stack((u.abs(), r + d))).clamp_min_(0)
    p = torch.minimum(v, w2)
    pp = p * p * (0.5 * inv_w1w2)
    tail = (v - p) * inv_w1 + pp  # 0.5 - G
    g = 0.5 - tail
    cover = torch.addcmul(g[1], sign, g[0])
    if not grad:
        return cover, None
    dg = p * inv_w1w2  # G'
    dw1 = tail * inv_w1 - 0.5 * dg  # dG / dw1 (h2 moves with w1)
    dw2 = pp / w2 - 0.5 * dg  # dG / dw2
    d_d = dg[1] - dg[0]  # G' is even
    d_r = dg[0] + dg[1]
    d_w1, d_w2 = torch.addcmul(dw1[1], sign, dw1[0]), torch.addcmul(dw2[1], sign, dw2[0])
    # w1 is |nx| where |nx| >= |ny|, else |ny|; then d |n| / d n = sign(n)
    swap = (ax >= ay).to(d.dtype) * (d_w1 - d_w2)
    d_nx = (d_w2 + swap) * torch.ones_like(nx).copysign_(nx)
    d_ny = (d_w1 - swap) * torch.ones_like(ny).copysign_(ny)
    return cover, (d_d, d_r, d_nx, d_ny)


class LogTransmittance(torch.autograd.Function):
    """Sum over strokes of log(1 - opacity * coverage) per pixel, with a per-pair backward.

    Inputs: k [8, B] power-basis coefficients (grad), r [B], alpha [B] (grad); the pairs'
    copy of them, rows [10, M] = (k, r, alpha)[:, stroke] (no grad); the pairs: stroke [M],
    image index [M], t [M], pixel centre c [2, M] (no grad). Output: [num_pixels].
    """

    @staticmethod
    def forward(ctx, k, r, alpha, rows, stroke, index, t, c, num_pixels):
        grad = any(ctx.needs_input_grad[:3])
        dxy = c - horner(rows[:8].view(4, 2, -1), t)  # [2, M] pixel centre - nearest point
        rs, al = rows[8], rows[9]
        d = (dxy * dxy).sum(0).add_(1e-12).sqrt_()
        # A pixel centre on the centre line (d ~ 0) has no normal; any unit vector will do
        # there (the band covers that pixel fully for r >= sqrt(2)/2), and (1, 0) avoids 0/0.
        on_line = (d < 1e-5).to(d.dtype)
        n = dxy * ((1 - on_line) / d)
        nx, ny = n[0] + on_line, n[1]
        cover, parts = band_coverage(d, rs, nx, ny, grad)
        keep = 1 - al * cover
        kept = keep.clamp_min(LOG_FLOOR)
        out = torch.zeros(num_pixels, dtype=k.dtype, device=k.device).scatter_add_(0, index, kept.log())
        if grad:
            d_d, d_r, d_nx, d_ny = parts
            # d log_keep / d keep, zero where the floor was hit
            dl_dk = (keep > LOG_FLOOR).to(keep.dtype) / kept
            dl_dc = -al * dl_dk
            # d cover / d(pixel centre - q): radial part plus the normal's rotation
            tangential = (d_nx * ny - d_ny * nx) / d
            g = torch.stack((d_d * nx + tangential * ny, d_d * ny - tangential * nx)) * dl_dc  # [2, M]
            ctx.save_for_backward(stroke, index, t, g, torch.stack((dl_dc * d_r, -cover * dl_dk)))
            ctx.num_strokes = k.shape[1]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        stroke, index, t, g, gra = ctx.saved_tensors
        go = grad_out.index_select(0, index)  # [M]
        # d/d q = -(d/d (centre - q)); q = sum_i t^i k_i
        t2 = t * t
        powers = torch.stack((torch.ones_like(t), t, t2, t2 * t))  # [4, M]
        src = torch.cat(((powers[:, None] * (g * -go)).view(8, -1), gra * go))  # [10, M]
        grad = torch.zeros(ctx.num_strokes, 10, dtype=src.dtype, device=src.device).index_add_(0, stroke, src.T)
        return grad[:, :8].T, grad[:, 8], grad[:, 9], None, None, None, None, None, None
