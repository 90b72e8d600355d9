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
   The non-empty patch entries are the (stroke, pixel) pairs that can be covered.
2. (no grad) The curve parameter t* of the nearest point is refined by guarded Newton
   steps on the true cubic.
3. Per pair, q = B(t*) and the coverage; ``log(1 - opacity * coverage)`` is summed per
   pixel and the image is exp of that sum ("over" compositing of black strokes on
   white). t* is held fixed: at a nearest point the distance's derivative w.r.t. t is
   zero (or t* sits at an end), so d distance / d points = d |c - B(t*)| / d points.
   A custom autograd Function keeps only a few numbers per pair for the backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Chord length (px) when flattening a stroke: the search window of a chord is about
# (CHORD + 2 * margin)^2 pixels, so this trades the number of chords against window size.
CHORD = 4.0
# Most chords per stroke (a very long stroke gets longer chords; Newton corrects).
MAX_CHORDS = 256
# A pixel square cannot touch a band of half-width r farther than r + sqrt(2)/2 from
# its centre; the rest covers the gap between a chord and the curve it replaces.
MARGIN = 0.7072 + 0.35
# Keys: floor(d^2 * KEY_SCALE / margin^2) + 0.99 t; for pixels within the margin the
# integer part stays below 2^12, so a float32 key keeps t to ~1e-3 in its fraction.
KEY_SCALE = 4096.0
T_PACK = 0.99
# Offset given to pixels outside a stroke's patch (its key is then far above KEY_SCALE).
BIG = 1e15
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


def bernstein(t: Tensor) -> Tensor:
    """Cubic Bernstein weights. t: [...] -> [..., 4]."""
    s = 1 - t
    return torch.stack((s * s * s, 3 * s * s * t, 3 * s * t * t, t * t * t), dim=-1)


def _bezier(p: Tensor, t: Tensor) -> Tensor:
    """p: [..., 4, 2], t: [...] -> [..., 2]."""
    return (bernstein(t).unsqueeze(-1) * p).sum(-2)


def _power_basis(p: Tensor) -> Tensor:
    """Coefficients of B(t) = k0 + k1 t + k2 t^2 + k3 t^3. p: [B, 4, 2] -> [8, B] (x0..x3, y0..y3)."""
    p0, p1, p2, p3 = p.unbind(-2)
    k = torch.stack((p0, 3 * (p1 - p0), 3 * (p0 - 2 * p1 + p2), p3 - p0 + 3 * (p1 - p2)), 0)  # [4, B, 2]
    return k.permute(2, 0, 1).reshape(8, -1).contiguous()


def _chords(p: Tensor, count: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split each stroke into ``count`` chords of equal arc length.

    p: [B, 4, 2]; count: [B] chords per stroke (0 allowed).
    Returns stroke_of [G], t0 [G], t1 [G] (curve parameters of each chord's ends).
    """
    device, dtype = p.device, p.dtype
    num = p.shape[0]
    dense = torch.linspace(0, 1, ARC_SAMPLES + 1, device=device, dtype=dtype)
    pts = (bernstein(dense)[None, :, :, None] * p[:, None]).sum(-2)  # [B, T+1, 2]
    seg = (pts[:, 1:] - pts[:, :-1]).norm(dim=-1)
    cum = torch.cat((torch.zeros(num, 1, device=device, dtype=dtype), seg.cumsum(1)), 1)  # [B, T+1]
    stroke_of = torch.repeat_interleave(torch.arange(num, device=device), count)  # [G]
    j = torch.arange(stroke_of.numel(), device=device) - (torch.cumsum(count, 0) - count)[stroke_of]
    n = count[stroke_of].to(dtype)
    ends = torch.stack((j / n, (j + 1) / n), 1) * cum[stroke_of, -1:]  # [G, 2] arc length of chord ends
    table = cum[stroke_of]  # [G, T+1]
    k = torch.searchsorted(table, ends.contiguous()).clamp(1, ARC_SAMPLES)  # segment k-1..k holds the end
    c0, c1 = table.gather(1, k - 1), table.gather(1, k)
    frac = ((ends - c0) / (c1 - c0).clamp_min(1e-12)).clamp(0, 1)
    t = (k - 1 + frac).to(dtype) / ARC_SAMPLES
    t[:, 0] = torch.where(j == 0, 0.0, t[:, 0])
    t[:, 1] = torch.where(j + 1 == count[stroke_of], 1.0, t[:, 1])
    return stroke_of, t[:, 0].contiguous(), t[:, 1].contiguous()


def _search(p: Tensor, r: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """(stroke, pixel) pairs that may be covered, with the nearest curve parameter.

    p: [B, 4, 2] control points; r: [B] half-widths (no grad).
    Returns stroke [M] (long), pixel [M] = y * width + x (long), t [M] (p.dtype).
    """
    device, dtype = p.device, p.dtype
    num = p.shape[0]
    long = dict(dtype=torch.long, device=device)
    margin = r.clamp_min(0) + MARGIN  # [B]
    empty = torch.zeros(0, **long)
    if num == 0:
        return empty, empty, torch.zeros(0, dtype=dtype, device=device)

    # --- stroke patches: control-point bounding box + margin, clipped to the canvas ---
    size = torch.full((2,), width, **long)  # filled on the device: torch.tensor([...]) would be a blocking copy
    size[1] = height
    lo = (p.amin(1) - margin[:, None]).floor().clamp(-1, 1 << 20).long().clamp(min=0).minimum(size)  # [B, 2]
    hi = (p.amax(1) + margin[:, None]).ceil().clamp(-1, 1 << 20).long().add(1).maximum(lo).minimum(size)
    extent = hi - lo  # [B, 2] patch (w, h)
    area = extent[:, 0] * extent[:, 1]
    end = torch.cumsum(area, 0)
    offset = end - area
    total = int(end[-1])
    if total == 0:
        return empty, empty, torch.zeros(0, dtype=dtype, device=device)

    # --- chords of equal arc length (strokes with an empty patch get none) -------
    poly = (p[:, 1:] - p[:, :-1]).norm(dim=-1).sum(-1)  # [B] >= arc length
    count = (poly / CHORD).ceil().clamp(1, MAX_CHORDS).long() * (area > 0)
    stroke_of, t0, t1 = _chords(p, count)
    pg = p[stroke_of]  # [G, 4, 2]
    a, c = _bezier(pg, t0), _bezier(pg, t1)  # chord ends [G, 2]
    e = c - a
    length = e.norm(dim=-1)  # [G]
    zero = length < 1e-9  # a point: any unit direction works, take x
    ux = torch.where(zero, 1.0, e[:, 0] / length.clamp_min(1e-9))
    uy = torch.where(zero, 0.0, e[:, 1] / length.clamp_min(1e-9))
    mg = margin[stroke_of]
    # pixel k (centre k + 0.5) can be within mg of the chord when lo - mg <= k + 0.5 <= hi + mg
    first = (torch.minimum(a, c) - mg[:, None] - 0.5).ceil()  # [G, 2] first pixel of the window
    win = int(((torch.maximum(a, c) + mg[:, None] - 0.5).floor() - first).max()) + 1
    best = torch.full((total,), float("inf"), dtype=dtype, device=device)
    per_chunk = max(1, CHUNK_ELEMENTS // (win * win))
    for s in range(0, stroke_of.numel(), per_chunk):
        sl = slice(s, s + per_chunk)
        _scatter_chords(
            best, stroke_of[sl], a[sl], first[sl], ux[sl], uy[sl], length[sl], mg[sl], t0[sl], t1[sl],
            lo, extent, offset, win,
        )  # fmt: skip

    # --- decode the pairs: keys below KEY_SCALE are within the margin --------------
    pos = (best < KEY_SCALE).nonzero().squeeze(1)  # [M]
    key = best[pos]
    t = (key - key.floor()) / T_PACK
    stroke = torch.searchsorted(end, pos, right=True)
    local = pos - offset[stroke]
    pw = extent[stroke, 0]
    py = torch.div(local, pw, rounding_mode="floor")
    px = local - py * pw
    pixel = (lo[stroke, 1] + py) * width + lo[stroke, 0] + px
    return stroke, pixel, t.clamp(0, 1)


def _scatter_chords(best, stroke_of, a, first, ux, uy, length, mg, t0, t1, lo, extent, offset, win):
    """Scatter min(key) of every chord's window into the stroke patches ``best``.

    The window tensors are laid out [win (row), win (col), G] so that the innermost,
    contiguous axis is the long chord axis, and every [win, win, G] quantity is one
    broadcast op on [win, 1, G] / [1, win, G] parts: this is the renderer's hot spot.
    Distances are pre-scaled by sqrt(KEY_SCALE) / margin, so key < KEY_SCALE means
    "within the margin"; pixels outside the stroke's patch get a huge offset instead.
    """
    device, dtype = a.device, a.dtype
    ar = torch.arange(win, device=device)[:, None]  # [win, 1]
    col = first[:, 0].long() + ar - lo[stroke_of, 0]  # [win, G] column inside the patch
    row = first[:, 1].long() + ar - lo[stroke_of, 1]
    pw, ph = extent[stroke_of, 0], extent[stroke_of, 1]
    scale = KEY_SCALE**0.5 / mg  # [G]
    arf = ar.to(dtype)
    dx = torch.where((col >= 0) & (col < pw), (first[:, 0] + 0.5 - a[:, 0] + arf) * scale, BIG)  # [win, G]
    dy = torch.where((row >= 0) & (row < ph), (first[:, 1] + 0.5 - a[:, 1] + arf) * scale, BIG)
    along = torch.add((dx * ux)[None], (dy * uy)[:, None])  # [win, win, G], along the chord
    cross = torch.sub((dx * uy)[None], (dy * ux)[:, None])  # across it
    on = torch.clamp(along, torch.zeros_like(length), length * scale)  # nearest point's coordinate
    d2 = torch.addcmul(cross.mul_(cross), along.sub_(on), along)  # (scaled distance)^2
    # key = floor(scaled d^2) + T_PACK * t(nearest point)
    slope = T_PACK * (t1 - t0) / (length * scale).clamp_min(1e-12)
    key = d2.floor_().add_(T_PACK * t0).addcmul_(on, slope)
    index = (offset[stroke_of] + row.clamp(min=0).minimum(ph - 1) * pw)[:, None] + col.clamp(min=0).minimum(pw - 1)
    best.scatter_reduce_(0, index.view(-1), key.view(-1), "amin")


def _newton(k: Tensor, cx: Tensor, cy: Tensor, t: Tensor, steps: int = 2) -> Tensor:
    """Refine t towards a local minimum of |B(t) - c|^2 on [0, 1]; a step is kept only if it helps.

    k: [8, M] power-basis coefficients per pair (x0..x3, y0..y3); cx, cy, t: [M].
    """
    x0, x1, x2, x3, y0, y1, y2, y3 = k.unbind(0)
    x0, y0 = x0 - cx, y0 - cy

    def dist2(tt):
        bx = x0 + tt * (x1 + tt * (x2 + tt * x3))
        by = y0 + tt * (y1 + tt * (y2 + tt * y3))
        return bx * bx + by * by

    best = dist2(t)
    for _ in range(steps):
        bx = x0 + t * (x1 + t * (x2 + t * x3))
        by = y0 + t * (y1 + t * (y2 + t * y3))
        dbx = x1 + t * (2 * x2 + 3 * t * x3)
        dby = y1 + t * (2 * y2 + 3 * t * y3)
        g = bx * dbx + by * dby
        h = dbx * dbx + dby * dby + bx * (2 * x2 + 6 * t * x3) + by * (2 * y2 + 6 * t * y3)
        cand = torch.where(h > 1e-12, t - g / h.clamp_min(1e-12), t - g.sign() * 1e-3).clamp(0, 1)
        cd = dist2(cand)
        better = cd < best
        t = torch.where(better, cand, t)
        best = torch.where(better, cd, best)
    return t


def _band_coverage(d: Tensor, r: Tensor, nx: Tensor, ny: Tensor, grad: bool):
    """Area of the unit pixel square inside a straight band of half-width r.

    d: distance of the pixel centre to the band's centre line, (nx, ny) the band's unit
    normal, all [M]. Coverage = G(r - d) + G(r + d), G the centred CDF of the square
    projected on the normal: a trapezoid density of widths w1 = max(|nx|, |ny|) and
    w2 = min(...). With ``grad``, also d cov / d (d, r, nx, ny).
    """
    ax, ay = nx.abs(), ny.abs()
    xmajor = ax >= ay
    w1, w2 = torch.maximum(ax, ay), torch.minimum(ax, ay).clamp_min(1e-6)
    h1, h2 = (w1 - w2) / 2, (w1 + w2) / 2
    inv_w1, inv_2w1w2 = 1 / w1, 1 / (2 * w1 * w2)

    def half_cdf(x):  # x >= 0 here; returns G, G', dG/dw1, dG/dw2
        s = x.minimum(h2)
        v = h2 - s
        linear = s <= h1
        g = torch.where(linear, s * inv_w1, 0.5 - v * v * inv_2w1w2)
        if not grad:
            return g, None, None, None
        dg = torch.where(linear, inv_w1, 2 * v * inv_2w1w2)
        k = v * inv_2w1w2
        dw1 = torch.where(linear, -s * inv_w1 * inv_w1, -k * (1 - v * inv_w1))
        dw2 = torch.where(linear, torch.zeros_like(s), -k * (1 - v / w2))
        return g, dg, dw1, dw2

    u = r - d
    sign = torch.where(u < 0, -1.0, 1.0).to(d.dtype)
    g1, dg1, a1, b1 = half_cdf(u.abs())
    g2, dg2, a2, b2 = half_cdf(r + d)
    cover = sign * g1 + g2
    if not grad:
        return cover, None
    d_d = dg2 - dg1  # G' is even
    d_r = dg1 + dg2
    d_w1, d_w2 = sign * a1 + a2, sign * b1 + b2
    d_ax = torch.where(xmajor, d_w1, d_w2)
    d_ay = torch.where(xmajor, d_w2, d_w1)
    return cover, (d_d, d_r, d_ax * torch.where(nx < 0, -1.0, 1.0), d_ay * torch.where(ny < 0, -1.0, 1.0))


class _LogTransmittance(torch.autograd.Function):
    """Sum over strokes of log(1 - opacity * coverage) per pixel, with a per-pair backward.

    Inputs: k [8, B] power-basis coefficients (grad), r [B], alpha [B] (grad), and the
    pairs: stroke [M], image index [M], t [M], pixel centre cx, cy [M] (no grad).
    Output: [num_pixels] (S * H * W).
    """

    @staticmethod
    def forward(ctx, k, r, alpha, stroke, index, t, cx, cy, num_pixels):
        grad = any(ctx.needs_input_grad[:3])
        ks = k[:, stroke]  # [8, M]
        x0, x1, x2, x3, y0, y1, y2, y3 = ks.unbind(0)
        qx = x0 + t * (x1 + t * (x2 + t * x3))
        qy = y0 + t * (y1 + t * (y2 + t * y3))
        dx, dy = cx - qx, cy - qy
        d = (dx * dx + dy * dy).add_(1e-12).sqrt_()
        # A pixel centre on the centre line (d ~ 0) has no normal; any unit vector will do
        # there (the band covers that pixel fully for r >= sqrt(2)/2), and (1, 0) avoids 0/0.
        on_line = d < 1e-5
        nx = torch.where(on_line, torch.ones_like(d), dx / d)
        ny = torch.where(on_line, torch.zeros_like(d), dy / d)
        rs, al = r[stroke], alpha[stroke]
        cover, parts = _band_coverage(d, rs, nx, ny, grad)
        keep = 1 - al * cover
        kept = keep > LOG_FLOOR
        log_keep = torch.log(keep.clamp_min(LOG_FLOOR))
        out = torch.zeros(num_pixels, dtype=k.dtype, device=k.device).index_add_(0, index, log_keep)
        if grad:
            d_d, d_r, d_nx, d_ny = parts
            # d log_keep / d cover, zero where the floor was hit
            dl_dc = torch.where(kept, -al / keep.clamp_min(LOG_FLOOR), torch.zeros_like(keep))
            # d cover / d(pixel centre - q): radial part plus the normal's rotation
            tangential = (d_nx * ny - d_ny * nx) / d
            gx = dl_dc * (d_d * nx + tangential * ny)
            gy = dl_dc * (d_d * ny - tangential * nx)
            ctx.save_for_backward(stroke, index, t, gx, gy, dl_dc * d_r, torch.where(kept, -cover / keep, 0.0))
            ctx.num_strokes = k.shape[1]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        stroke, index, t, gx, gy, gr, ga = ctx.saved_tensors
        go = grad_out[index]  # [M]
        # d/d q = -(d/d (centre - q)); q = sum_i t^i k_i
        gqx, gqy = -go * gx, -go * gy
        t2 = t * t
        powers = torch.stack((torch.ones_like(t), t, t2, t2 * t), 0)  # [4, M]
        src = torch.cat((powers * gqx, powers * gqy), 0)  # [8, M]
        num = ctx.num_strokes
        grad_k = torch.zeros(num, 8, dtype=src.dtype, device=src.device).index_add_(0, stroke, src.T)
        grad_r = torch.zeros(num, dtype=src.dtype, device=src.device).index_add_(0, stroke, go * gr)
        grad_a = torch.zeros(num, dtype=src.dtype, device=src.device).index_add_(0, stroke, go * ga)
        return grad_k.T, grad_r, grad_a, None, None, None, None, None, None


def _nearest_segment(k: Tensor, stroke: Tensor, pixel: Tensor, t: Tensor, cx: Tensor, cy: Tensor,
                     segments: int, num_pixels: int) -> Tensor:
    """Mask [M] keeping, for every (path, pixel), only the pair of the path's nearest segment.

    A path is ``segments`` consecutive strokes; its band is the union of theirs, whose
    distance to a pixel centre is the least of the segments' distances (ties: the first).
    """
    x0, x1, x2, x3, y0, y1, y2, y3 = k[:, stroke].unbind(0)
    dx = cx - (x0 + t * (x1 + t * (x2 + t * x3)))
    dy = cy - (y0 + t * (y1 + t * (y2 + t * y3)))
    d2 = dx * dx + dy * dy
    group = torch.div(stroke, segments, rounding_mode="floor") * num_pixels + pixel
    _, inv = torch.unique(group, return_inverse=True)
    groups = int(inv.max()) + 1 if inv.numel() else 0
    least = torch.full((groups,), float("inf"), dtype=d2.dtype, device=d2.device).scatter_reduce(0, inv, d2, "amin")
    pair = torch.arange(inv.numel(), device=inv.device)
    near = d2 <= least[inv]
    first = torch.full((groups,), inv.numel(), dtype=torch.long, device=inv.device)
    first = first.scatter_reduce(0, inv[near], pair[near], "amin")
    return first[inv] == pair


def render_strokes(points: Tensor, half_widths: Tensor, opacities: Tensor, height: int, width: int,
                   segments: int = 1) -> Tensor:
    """Rasterize S sketches of N black cubic Bézier strokes over a white canvas.

    points: Tensor       # [S, N, 4, 2] control points P0..P3, pixels (x, y)
    half_widths: Tensor  # [S, N] pixels (diffvg's stroke_width)
    opacities: Tensor    # [S, N] in [0, 1]
    segments: int        # consecutive strokes that form one path (N a multiple of it)
    returns: Tensor      # [S, 3, H, W] in [0, 1], the same value in every channel

    Strokes are composited "over" in index order; for black strokes the result is
    prod_i (1 - opacity_i * coverage_i). With ``segments`` = K > 1, every K consecutive
    strokes are the segments of one path (the same width and opacity), drawn as diffvg
    draws a path: once, covering the union of its segments' bands (each pixel takes the
    coverage of its nearest segment). Differentiable w.r.t. all three inputs.
    """
    _check_shapes(points, half_widths, opacities, height, width)
    height, width = int(height), int(width)
    s, n = points.shape[:2]
    dtype = points.dtype
    p = points.reshape(s * n, 4, 2)
    r = half_widths.to(dtype).reshape(s * n)
    alpha = opacities.to(dtype).reshape(s * n)
    k = _power_basis(p)  # [8, B], differentiable (a linear map of the points)

    with torch.no_grad():
        stroke, pixel, t = _search(p.detach(), r.detach(), height, width)
        cx = (pixel % width).to(dtype) + 0.5
        cy = torch.div(pixel, width, rounding_mode="floor").to(dtype) + 0.5
        t = _newton(k.detach()[:, stroke], cx, cy, t)
        if segments > 1:
            keep = _nearest_segment(k.detach(), stroke, pixel, t, cx, cy, int(segments), height * width)
            stroke, pixel, t, cx, cy = stroke[keep], pixel[keep], t[keep], cx[keep], cy[keep]
        index = torch.div(stroke, n, rounding_mode="floor") * (height * width) + pixel

    log_image = _LogTransmittance.apply(k, r, alpha, stroke, index, t, cx, cy, s * height * width)
    rgb = log_image.exp().view(s, 1, height, width)
    return rgb.expand(s, 3, height, width).contiguous()
