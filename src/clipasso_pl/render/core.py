"""Pure-PyTorch differentiable rasterizer for black cubic Bézier strokes.

Coordinates: pixels, origin top-left, x right, y down; pixel (row i, col j) has its
centre at (j + 0.5, i + 0.5). A stroke covers the points whose distance to its curve
is below its half-width (diffvg's ``stroke_width``), so the ends are round caps.

Coverage model. diffvg averages hard inside/outside samples over the pixel square,
so its expected value is the *area* of the pixel square inside the stroke. For a
straight band of half-width r whose centre line passes at distance d from the pixel
centre with unit normal n, that area is exactly ``G(r - d) + G(r + d)``, G being the
centred CDF of the pixel square projected on n (a trapezoid made of two boxes of
widths |n_x| and |n_y|). We use it with d and n from the nearest point of the curve:
exact for straight parts, close elsewhere, and smooth, which is what makes the
gradients agree with diffvg's (a linear 1-px ramp agrees worse).

How the work is arranged (no Python loop over strokes):
1. (no grad) Each stroke is flattened into chords of about ``CHORD`` px. Every chord
   computes the squared distance to the pixel centres of a small window around it and
   scatters ``min`` of a key (quantized distance, curve parameter in the fraction)
   into its stroke's patch (the stroke's bounding box): ``scatter_reduce(amin)``.
   The patch entries whose key is within reach are the (stroke, pixel) pairs that
   can be covered.
2. (no grad) The curve parameter t* of the nearest point is refined by guarded Newton
   steps on the true cubic.
3. Per pair, q = B(t*) and the coverage; ``log(1 - opacity * coverage)`` is summed per
   pixel and the image is exp of that sum ("over" compositing of black strokes on
   white). t* is held fixed: at a nearest point the distance's derivative w.r.t. t is
   zero (or t* sits at an end), so d distance / d points = d |c - B(t*)| / d points.
   A custom autograd Function keeps only a few numbers per pair for the backward.

Static shapes, no host reads. Every buffer (chords, patches, pairs, a chord's window) is
sized by a :class:`~clipasso_pl.render.capacity.Capacity` of host numbers, so a render
reads no device value on the host (no CUDA sync) and ``torch.compile(fullgraph=True)``
traces it, forward and backward. Unused slots are padding that writes nowhere: extra
chords repeat a stroke's end point (a candidate like any other, so the ``min`` is
unchanged) and extra pairs add to a trash pixel. What the render needed is measured on
the device (``NEEDS``); if any need exceeds its size, the image is NaN (the step is then
non-finite and skipped, never silently missing coverage). With ``capacity=None`` the
sizes are the exact needs, read on the host (a few syncs; eval and output renders).

Where each part lives: ``bezier.py`` (the cubic's power basis, equal-arc chords, the Newton
steps of 2.), ``search.py`` (1.: the pairs, and the nearest segment of a multi-segment path),
``coverage.py`` (3.: band coverage and the log-transmittance Function); this module checks
the inputs and runs the three.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .bezier import newton, power_basis
from .capacity import Capacity
from .coverage import LogTransmittance
from .search import nearest_segment, search_pairs


def _check_shapes(points: Tensor, half_widths: Tensor, opacities: Tensor, height: int, width: int) -> None:
    def shape(v):
        return tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__

    if not (isinstance(points, Tensor) and points.ndim == 4 and points.shape[-2:] == (4, 2)):
        raise ValueError(f"points must be a tensor [S, N, 4, 2], got {shape(points)}")
    if not points.is_floating_point():
        raise ValueError(f"points must be floating point, got {points.dtype}")
    sn = tuple(points.shape[:2])
    for name, value in (("half_widths", half_widths), ("opacities", opacities)):
        if not isinstance(value, Tensor) or tuple(value.shape) != sn:
            raise ValueError(f"{name} must be a tensor [S, N] = {list(sn)}, got {shape(value)}")
    for name, value in (("height", height), ("width", width)):
        if int(value) != value or int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def rasterize(points: Tensor, half_widths: Tensor, opacities: Tensor, height: int, width: int,
              segments: int = 1, capacity: Capacity | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`render_strokes`, and what the render needed: ``(rgb [S, 3, H, W], needs [6], over)``.

    needs: chords, patch, pairs, path_patch, window major, window minor (``capacity.NEEDS``),
    a long device tensor; over: 0-d bool, whether a need exceeded its size. With a
    ``capacity`` nothing is read on the host and every shape depends only on (S, N, H, W,
    segments, capacity); where ``over``, rgb is NaN. With ``capacity=None`` the sizes are
    the needs (read on the host) and ``over`` is False.
    """
    _check_shapes(points, half_widths, opacities, height, width)
    height, width = int(height), int(width)
    segments = int(segments)
    s, n = points.shape[:2]
    dtype, device = points.dtype, points.device
    if s * n == 0:
        needs = torch.zeros(6, dtype=torch.long, device=device)
        return torch.ones(s, 3, height, width, dtype=dtype, device=device) + 0 * points.sum(), needs, needs[0] > 0
    num_pixels = s * height * width
    p = points.reshape(s * n, 4, 2)
    r = half_widths.to(dtype).reshape(s * n)
    alpha = opacities.to(dtype).reshape(s * n)
    k = power_basis(p)  # [8, B], differentiable (a linear map of the points)

    with torch.no_grad():
        pairs, patches, needs = search_pairs(p.detach(), k.detach(), r.detach(), height, width, capacity)
        stroke, valid = pairs["stroke"], pairs["valid"]
        rows = torch.cat((k, r[None], alpha[None])).index_select(1, stroke)  # [10, M]
        pairs["t"] = t = newton(rows[:8].view(4, 2, -1), pairs["c"], pairs["t"])
        need_path = torch.zeros_like(needs[0])
        if segments > 1:
            valid, need_path = nearest_segment(rows, pairs, patches, segments, capacity)
        # padding pairs (and the segments that are not the nearest) add to a trash pixel
        image = torch.div(stroke, n, rounding_mode="floor") * (height * width) + pairs["pixel"]
        index = torch.where(valid, image, num_pixels)
        needs = (*needs[:3], need_path, *needs[3:])  # NEEDS order
        needs = torch.stack(needs)
        if capacity is None:
            over = torch.zeros((), dtype=torch.bool, device=device)
        else:
            over = torch.stack([v > c for v, c in zip(needs.unbind(0), capacity.as_needs())]).any()

    log_image = LogTransmittance.apply(k, r, alpha, rows, stroke, index, t, pairs["c"], num_pixels + 1)[:num_pixels]
    if capacity is not None:
        log_image = torch.where(over, float("nan"), log_image)
    rgb = log_image.exp().view(s, 1, height, width)
    return rgb.expand(s, 3, height, width).contiguous(), needs, over


def render_strokes(points: Tensor, half_widths: Tensor, opacities: Tensor, height: int, width: int,
                   segments: int = 1, capacity: Capacity | None = None) -> Tensor:
    """Rasterize S sketches of N black cubic Bézier strokes over a white canvas.

    points: Tensor       # [S, N, 4, 2] control points P0..P3, pixels (x, y)
    half_widths: Tensor  # [S, N] pixels (diffvg's stroke_width)
    opacities: Tensor    # [S, N] in [0, 1]
    segments: int        # consecutive strokes that form one path (N a multiple of it)
    capacity: Capacity   # static buffer sizes (no host sync; NaN image on overflow), or None: exact
    returns: Tensor      # [S, 3, H, W] in [0, 1], the same value in every channel

    Strokes are composited "over" in index order; for black strokes the result is
    prod_i (1 - opacity_i * coverage_i). With ``segments`` = K > 1, every K consecutive
    strokes are the segments of one path (the same width and opacity), drawn as diffvg
    draws a path: once, covering the union of its segments' bands (each pixel takes the
    coverage of its nearest segment). Differentiable w.r.t. all three inputs.
    """
    return rasterize(points, half_widths, opacities, height, width, segments, capacity)[0]
