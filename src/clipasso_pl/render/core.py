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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .capacity import CHORD, MARGIN, Capacity

# Keys: floor(d^2 * KEY_SCALE / margin^2) + 0.99 t; for pixels within the margin the
# integer part stays below 2^12, so a float32 key keeps t to ~1e-3 in its fraction.
# Patch entries start at KEY_SCALE ("out of reach"), which keeps every decoded key finite.
KEY_SCALE = 4096.0
T_PACK = 0.99
# Offset given to pixels outside a stroke's patch (its key is then far above KEY_SCALE).
BIG = 1e15
# Most chords per stroke when sized exactly (a very long stroke gets longer chords and a
# larger window; Newton corrects). Sized statically, a stroke has at most MAX_STATIC_CHORDS
# and a chord that then outgrows its window is an overflow.
MAX_CHORDS = 256
MAX_STATIC_CHORDS = 1 << 16
# Shortest chord of a stroke too wide for the static window (it overflows the window).
MIN_CHORD = 0.25
# Samples per stroke for the arc-length table that places the chords.
ARC_SAMPLES = 32
# Most chord-window elements computed at once (bounds the search's temporary memory).
CHUNK_ELEMENTS = 1 << 22
# Smallest 1 - opacity * coverage kept in the log-sum (full coverage gives exactly 0).
LOG_FLOOR = 1e-10


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


def _power_basis(p: Tensor) -> Tensor:
    """Coefficients of B(t) = k0 + k1 t + k2 t^2 + k3 t^3. p: [B, 4, 2] -> [8, B], rows x0, y0, x1, y1, ..., y3

    (so that ``k.view(4, 2, B)`` is [coefficient, coordinate, stroke]: one op evaluates x and y)."""
    p0, p1, p2, p3 = p.unbind(-2)
    k = torch.stack((p0, 3 * (p1 - p0), 3 * (p0 - 2 * p1 + p2), p3 - p0 + 3 * (p1 - p2)), 0)  # [4, B, 2]
    return k.transpose(1, 2).reshape(8, -1)


def _horner(k: Tensor, t: Tensor) -> Tensor:
    """B(t) from power-basis coefficients k [4, 2, ...] and t [...] (broadcast) -> [2, ...] (x, y)."""
    return k[0] + t * (k[1] + t * (k[2] + t * k[3]))


def _size(need: Tensor, cap: int | None) -> int:
    """A buffer size: the host capacity, or (exact sizing) the need read on the host."""
    return int(need) if cap is None else cap


def _canvas_clip(v: Tensor, height: int, width: int) -> Tensor:
    """Clamp [B, 2] long (x, y) to [0, width] x [0, height] without a tensor of Python data."""
    limit = torch.arange(2, device=v.device).mul_(height - width).add_(width)  # (width, height)
    return torch.minimum(v.clamp(min=0), limit)


def _patches(p: Tensor, margin: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each stroke's patch: its control points' bounding box + margin, clipped to the canvas.

    p: [B, 4, 2]; margin: [B]. Returns lo [B, 2] and extent [B, 2] (x, y; long), area [B].
    """
    big = float(1 << 20)  # keeps the cast to long finite for far-away or non-finite points
    lo = _canvas_clip((p.amin(1) - margin[:, None]).floor().clamp(-1, big).long(), height, width)
    hi = _canvas_clip((p.amax(1) + margin[:, None]).ceil().clamp(-1, big).long().add(1), height, width)
    extent = (hi - lo).clamp(min=0)
    return lo, extent, extent[:, 0] * extent[:, 1]


def _chords(k: Tensor, count: Tensor, num_chords: int) -> tuple[Tensor, Tensor, Tensor]:
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


def _search(p: Tensor, k: Tensor, r: Tensor, height: int, width: int, cap: Capacity | None):
    """(stroke, pixel) pairs that may be covered, with the nearest curve parameter.

    p: [B, 4, 2] control points, k [8, B] their power basis; r: [B] half-widths (no grad);
    cap: sizes, or None (exact). Returns a dict of pair tensors: stroke [M] (long), t [M],
    the pixel centre c [2, M], its pixel y * width + x [M] (long), valid [M] (bool; padding
    pairs have finite values but must not be drawn); the patches (lo, extent [B, 2]); and
    the needs: chords, patch, pairs, window major, window minor (0-d long tensors).
    """
    device, dtype = p.device, p.dtype
    num = p.shape[0]
    margin = r.clamp_min(0) + MARGIN  # [B]

    # --- stroke patches ---------------------------------------------------------------
    lo, extent, area = _patches(p, margin, height, width)
    end = torch.cumsum(area, 0)
    need_patch = end[-1]
    num_patch = _size(need_patch, None if cap is None else cap.patch)
    offset = end - area
    # A stroke whose patch is empty or does not fit writes to the trash entry num_patch.
    fits = (end <= num_patch) & (area > 0)
    w_offset = torch.where(fits, offset, num_patch)
    w_extent = torch.where(fits[:, None], extent, 1)

    # --- chords: the static window fixes the longest chord (shorter for wide strokes) -----
    poly = (p[:, 1:] - p[:, :-1]).norm(dim=-1).sum(-1).nan_to_num(0.0)  # [B] >= arc length
    if cap is None:
        count = (poly / CHORD).ceil().clamp(1, MAX_CHORDS).long()
    else:
        wmaj, wmin = cap.window
        longest = torch.minimum(wmaj - 2 * margin - 0.25, math.sqrt(2) * (wmin - 2 * margin) - 0.05)
        count = (poly / longest.clamp(MIN_CHORD, CHORD)).ceil().clamp(1, MAX_STATIC_CHORDS).long()
    count = count * (area > 0)
    need_chords = count.sum()
    num_chords = _size(need_chords, None if cap is None else cap.chords)
    stroke_of, t = _chords(k, count, num_chords)  # [G], [2 (ends), G]
    ends = _horner(k.view(4, 2, 1, -1).index_select(3, stroke_of), t)  # [2 (x, y), 2 (ends), G]
    mg = margin.index_select(0, stroke_of)
    # pixel k (centre k + 0.5) can be within mg of the chord when lo - mg <= k + 0.5 <= hi + mg
    first = (ends.amin(1) - mg - 0.5).ceil()  # [2, G] first pixel of the window
    span = ((ends.amax(1) + mg - 0.5).floor() - first + 1).clamp(0, 1 << 20)  # [2, G]
    need_window = span.sort(dim=0, descending=True).values.amax(1).long()  # (major, minor)
    if cap is None:
        wmaj, wmin = (int(w) for w in need_window.clamp(min=1))
    best = torch.full((num_patch + 1,), KEY_SCALE, dtype=dtype, device=device)
    per_chunk = max(1, CHUNK_ELEMENTS // (wmaj * wmin))
    for s in range(0, num_chords, per_chunk):
        sl = slice(s, s + per_chunk)
        _scatter_chords(best, stroke_of[sl], ends[..., sl], first[:, sl], mg[sl], t[:, sl], lo, w_extent, w_offset,
                        wmaj, wmin)

    # --- the pairs: patch entries within reach, compacted in patch (= stroke) order ---------
    within = best[:num_patch] < KEY_SCALE
    need_pairs = within.sum()
    num_pairs = _size(need_pairs, None if cap is None else cap.pairs)
    pos = torch.nonzero_static(within, size=num_pairs, fill_value=num_patch).squeeze(1)  # [M]
    key = best.index_select(0, pos)
    stroke = torch.searchsorted(end, pos, right=True).clamp_(max=num - 1)
    # decode the patch position in floats (exact: positions stay far below 2^24 / 2^53)
    fdtype = torch.float32 if num_patch < (1 << 22) else torch.float64
    local = (pos - offset.index_select(0, stroke)).to(fdtype)
    table = torch.cat((lo, w_extent[:, :1]), 1).to(fdtype).T  # [3, B]: lo x, lo y, patch width
    lx, ly, pw = table.index_select(1, stroke).unbind(0)
    py = ((local + 0.5) / pw).floor_()
    xy = torch.stack((lx + local - py * pw, ly + py))  # [2, M] pixel column, row
    pairs = {
        "stroke": stroke,
        "t": ((key - key.floor()) / T_PACK).clamp_(0, 1),
        "c": (xy + 0.5).to(dtype),
        "pixel": (xy[1] * width + xy[0]).long(),
        "valid": pos < num_patch,
    }
    needs = (need_chords, need_patch, need_pairs, need_window[0], need_window[1])
    return pairs, (lo, extent), needs


def _scatter_chords(best, stroke_of, ends, first, mg, t, lo, extent, offset, wmaj, wmin):
    """Scatter min(key) of every chord's window into the stroke patches ``best``.

    ends: [2 (x, y), 2 (start, end), G] chord end points, first [2, G] the window's first
    pixel, mg [G] margin, t [2, G] the ends' curve parameters. A chord's window is ``wmaj``
    pixels along its major axis (x when |dx| >= |dy|) by ``wmin`` along the other, laid out
    [wmin, wmaj, G] so that the innermost, contiguous axis is the long chord axis; every
    [wmin, wmaj, G] quantity is one broadcast op on [wmin, 1, G] / [1, wmaj, G] parts: this
    is the renderer's hot spot. Distances are pre-scaled by sqrt(KEY_SCALE) / margin, so
    key < KEY_SCALE means "within the margin"; pixels outside the stroke's patch get a huge
    offset instead.
    """
    device, dtype = ends.device, ends.dtype
    a = ends[:, 0]  # [2, G]
    e = ends[:, 1] - a
    length = e.norm(dim=0)  # [G]
    point = (length < 1e-9).to(dtype)  # a point: any unit direction works, take x
    u = e * ((1 - point) / length.clamp_min(1e-9))
    u[0] += point
    # (major, minor) order of the axes per chord: one gather for all the per-axis values
    ymajor = (e[1].abs() > e[0].abs()).long()
    order = torch.stack((ymajor, 1 - ymajor))  # [2, G]
    patch = torch.cat((lo, extent), 1).T.index_select(1, stroke_of).to(dtype).view(2, 2, -1)
    per_axis = torch.cat((torch.stack((first, a, u)), patch))  # [5, 2, G]
    f, a0, u, lo_g, ext = per_axis.gather(1, order.expand(5, 2, -1)).unbind(0)  # each [2, G] (major, minor)
    scale = KEY_SCALE**0.5 / mg  # [G]
    # patch strides of the major and minor axes: x steps by 1, y by the patch width
    pw = extent[:, 0].index_select(0, stroke_of)
    stride = torch.stack((ymajor * (pw - 1) + 1, pw - ymajor * (pw - 1)))  # [2, G]
    big = torch.full_like(scale, BIG)

    def axis(i, size):  # pixel offsets along axis i: scaled distance [size, G] and patch index part
        ar = torch.arange(size, device=device, dtype=dtype)[:, None]
        kk = f[i] - lo_g[i] + ar  # [size, G] coordinate inside the patch
        kc = torch.minimum(kk.clamp(min=0), ext[i] - 1)
        # outside the patch (kc != kk): add BIG, so the key is far out of reach
        d = torch.addcmul((f[i] + 0.5 - a0[i] + ar) * scale, (kc - kk).abs_(), big)
        return d, kc.long() * stride[i]

    du, iu = axis(0, wmaj)  # [wmaj, G]
    dv, iv = axis(1, wmin)  # [wmin, G]
    along = torch.add((du * u[0])[None], (dv * u[1])[:, None])  # [wmin, wmaj, G], along the chord
    cross = torch.sub((du * u[1])[None], (dv * u[0])[:, None])  # across it
    lscale = length * scale
    on = torch.clamp(along, torch.zeros_like(length), lscale)  # nearest point's coordinate
    d2 = torch.addcmul(cross.mul_(cross), along.sub_(on), along)  # (scaled distance)^2
    # key = floor(scaled d^2) + T_PACK * t(nearest point)
    slope = T_PACK * (t[1] - t[0]) / lscale.clamp_min(1e-12)
    key = d2.floor_().add_(T_PACK * t[0]).addcmul_(on, slope)
    index = torch.add((iu + offset.index_select(0, stroke_of))[None], iv[:, None])
    best.scatter_reduce_(0, index.view(-1), key.view(-1), "amin")


def _newton(k: Tensor, c: Tensor, t: Tensor, steps: int = 2) -> Tensor:
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


def _band_coverage(d: Tensor, r: Tensor, nx: Tensor, ny: Tensor, grad: bool):
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


class _LogTransmittance(torch.autograd.Function):
    """Sum over strokes of log(1 - opacity * coverage) per pixel, with a per-pair backward.

    Inputs: k [8, B] power-basis coefficients (grad), r [B], alpha [B] (grad); the pairs'
    copy of them, rows [10, M] = (k, r, alpha)[:, stroke] (no grad); the pairs: stroke [M],
    image index [M], t [M], pixel centre c [2, M] (no grad). Output: [num_pixels].
    """

    @staticmethod
    def forward(ctx, k, r, alpha, rows, stroke, index, t, c, num_pixels):
        grad = any(ctx.needs_input_grad[:3])
        dxy = c - _horner(rows[:8].view(4, 2, -1), t)  # [2, M] pixel centre - nearest point
        rs, al = rows[8], rows[9]
        d = (dxy * dxy).sum(0).add_(1e-12).sqrt_()
        # A pixel centre on the centre line (d ~ 0) has no normal; any unit vector will do
        # there (the band covers that pixel fully for r >= sqrt(2)/2), and (1, 0) avoids 0/0.
        on_line = (d < 1e-5).to(d.dtype)
        n = dxy * ((1 - on_line) / d)
        nx, ny = n[0] + on_line, n[1]
        cover, parts = _band_coverage(d, rs, nx, ny, grad)
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


def _nearest_segment(rows: Tensor, pairs: dict, patches: tuple[Tensor, Tensor], segments: int,
                     cap: Capacity | None) -> tuple[Tensor, Tensor]:
    """Mask [M] keeping, for every (path, pixel), only the pair of the path's nearest segment.

    A path is ``segments`` consecutive strokes; its band is the union of theirs, whose
    distance to a pixel centre is the least of the segments' distances (ties: the first,
    which is the earlier pair). The least is found by ``scatter_reduce(amin)`` into the
    paths' patches (the union of their segments' patches), sized like the stroke patches.
    Returns the mask and the paths' patch need (0-d long).
    """
    stroke, t, c, valid = (pairs[n] for n in ("stroke", "t", "c", "valid"))
    dxy = c - _horner(rows[:8].view(4, 2, -1), t)
    d2 = (dxy * dxy).sum(0)
    lo, extent = patches
    lo_s = lo.view(-1, segments, 2)
    plo = lo_s.amin(1)  # [B / K, 2]; an empty segment patch has lo on the canvas: harmless
    pext = ((lo_s + extent.view(-1, segments, 2)).amax(1) - plo).clamp(min=0)
    area = pext[:, 0] * pext[:, 1]
    end = torch.cumsum(area, 0)
    need = end[-1]
    size = _size(need, None if cap is None else cap.path_patch)
    path = torch.div(stroke, segments, rounding_mode="floor")
    table = torch.cat((plo, pext[:, :1], (end - area)[:, None], (end <= size)[:, None]), 1).T
    plx, ply, ppw, poff, fits = table.index_select(1, path).unbind(0)
    xy = c.long()  # pixel column, row
    local = poff + (xy[1] - ply) * ppw + xy[0] - plx
    slot = torch.where(valid & fits.bool(), local, size)  # padding pairs meet in the trash entry
    least = torch.full((size + 1,), float("inf"), dtype=d2.dtype, device=d2.device).scatter_reduce_(0, slot, d2, "amin")
    pair = torch.arange(stroke.numel(), device=stroke.device)
    near = torch.where(d2 <= least.index_select(0, slot), slot, size)
    first = torch.full((size + 1,), stroke.numel(), dtype=torch.long, device=stroke.device)
    first = first.scatter_reduce_(0, near, pair, "amin")
    return valid & (first.index_select(0, slot) == pair), need


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
    k = _power_basis(p)  # [8, B], differentiable (a linear map of the points)

    with torch.no_grad():
        pairs, patches, needs = _search(p.detach(), k.detach(), r.detach(), height, width, capacity)
        stroke, valid = pairs["stroke"], pairs["valid"]
        rows = torch.cat((k, r[None], alpha[None])).index_select(1, stroke)  # [10, M]
        pairs["t"] = t = _newton(rows[:8].view(4, 2, -1), pairs["c"], pairs["t"])
        need_path = torch.zeros_like(needs[0])
        if segments > 1:
            valid, need_path = _nearest_segment(rows, pairs, patches, segments, capacity)
        # padding pairs (and the segments that are not the nearest) add to a trash pixel
        image = torch.div(stroke, n, rounding_mode="floor") * (height * width) + pairs["pixel"]
        index = torch.where(valid, image, num_pixels)
        needs = (*needs[:3], need_path, *needs[3:])  # NEEDS order
        needs = torch.stack(needs)
        if capacity is None:
            over = torch.zeros((), dtype=torch.bool, device=device)
        else:
            over = torch.stack([v > c for v, c in zip(needs.unbind(0), capacity.as_needs())]).any()

    log_image = _LogTransmittance.apply(k, r, alpha, rows, stroke, index, t, pairs["c"], num_pixels + 1)[:num_pixels]
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
