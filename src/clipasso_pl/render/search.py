"""Which (stroke, pixel) pairs a render can cover, found without a Python loop over strokes.

Step 1 of :mod:`~clipasso_pl.render.core` (no grad): each stroke is flattened into chords
of about ``CHORD`` px; every chord computes the squared distance to the pixel centres of a
small window around it and scatters ``min`` of a key (quantized distance, curve parameter
in the fraction) into its stroke's patch (the stroke's bounding box) with
``scatter_reduce(amin)``. The patch entries whose key is within reach are the pairs. Every
buffer is sized by a :class:`~clipasso_pl.render.capacity.Capacity`, or exactly (host reads)
when there is none. For paths of several segments, :func:`nearest_segment` keeps each
pixel's pair of the path's nearest segment.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .bezier import arc_chords, horner
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
# Most chord-window elements computed at once (bounds the search's temporary memory).
CHUNK_ELEMENTS = 1 << 22


def buffer_size(need: Tensor, cap: int | None) -> int:
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


def search_pairs(p: Tensor, k: Tensor, r: Tensor, height: int, width: int, cap: Capacity | None):
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
    num_patch = buffer_size(need_patch, None if cap is None else cap.patch)
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
    num_chords = buffer_size(need_chords, None if cap is None else cap.chords)
    stroke_of, t = arc_chords(k, count, num_chords)  # [G], [2 (ends), G]
    ends = horner(k.view(4, 2, 1, -1).index_select(3, stroke_of), t)  # [2 (x, y), 2 (ends), G]
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
    num_pairs = buffer_size(need_pairs, None if cap is None else cap.pairs)
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


def nearest_segment(rows: Tensor, pairs: dict, patches: tuple[Tensor, Tensor], segments: int,
                     cap: Capacity | None) -> tuple[Tensor, Tensor]:
    """Mask [M] keeping, for every (path, pixel), only the pair of the path's nearest segment.

    A path is ``segments`` consecutive strokes; its band is the union of theirs, whose
    distance to a pixel centre is the least of the segments' distances (ties: the first,
    which is the earlier pair). The least is found by ``scatter_reduce(amin)`` into the
    paths' patches (the union of their segments' patches), sized like the stroke patches.
    Returns the mask and the paths' patch need (0-d long).
    """
    stroke, t, c, valid = (pairs[n] for n in ("stroke", "t", "c", "valid"))
    dxy = c - horner(rows[:8].view(4, 2, -1), t)
    d2 = (dxy * dxy).sum(0)
    lo, extent = patches
    lo_s = lo.view(-1, segments, 2)
    plo = lo_s.amin(1)  # [B / K, 2]; an empty segment patch has lo on the canvas: harmless
    pext = ((lo_s + extent.view(-1, segments, 2)).amax(1) - plo).clamp(min=0)
    area = pext[:, 0] * pext[:, 1]
    end = torch.cumsum(area, 0)
    need = end[-1]
    size = buffer_size(need, None if cap is None else cap.path_patch)
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
