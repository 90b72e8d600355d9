"""Pure-PyTorch differentiable rasterizer for black cubic Bézier strokes.

Coordinates: pixels, origin top-left, x right, y down; pixel (row i, col j) has its
centre at (j + 0.5, i + 0.5). A point is inside a stroke when its distance to the
curve is below the half-width (diffvg's ``stroke_width``); ends are round caps.

How a pixel is covered: the coverage of a pixel by a stroke is the area of the
unit pixel square inside the stroke edge, with the edge taken as the straight
line through the nearest curve point (its normal is the direction from that point
to the pixel centre). That is exactly a box filter of radius 0.5, the filter diffvg
applies to its 2x2 jittered samples, so our image is the limit diffvg's samples
average to (its ``rgb_mean16``), and the gradient is the exact derivative of it.

Where the work goes (all batched, no Python loop over strokes):

1. each cubic becomes a polyline of ``K`` segments (fixed Bernstein matrix);
2. each stroke's bounding box is cut into ``T x T`` pixel tiles; a (stroke, tile)
   pair survives when the polyline passes within reach of the tile, and keeps at
   most ``k`` candidate segments (those that can be nearest for some pixel of
   the tile that can be covered at all);
3. for every pixel of a surviving tile the nearest candidate segment is found
   without autograd; only pixels within reach of the stroke are kept;
4. the distance to the winning segment is recomputed with autograd for those
   pixels alone (the nearest-point parameter is detached: the distance is
   stationary in it), giving a coverage and a factor ``1 - opacity * coverage``;
5. a custom autograd Function multiplies the factors into each pixel with
   ``index_add`` of logarithms, counting exact zeros apart so that full coverage
   at opacity 1 still has the right gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Pixels farther than this beyond the half-width can not be touched: the box-filter
# ramp of a straight edge reaches at most sqrt(2)/2 from the pixel centre.
_REACH = 0.75


def _bernstein(k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[k + 1, 4] cubic Bernstein weights at k + 1 evenly spaced parameters."""
    t = torch.linspace(0.0, 1.0, k + 1, dtype=torch.float64)
    u = 1.0 - t
    b = torch.stack([u**3, 3 * u * u * t, 3 * u * t * t, t**3], dim=1)
    return b.to(dtype=dtype, device=device)


def _segment_dist2(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Squared distance from points p to segments [a, b] (broadcasting, no autograd needed)."""
    ab = b - a
    ap = p - a
    den = (ab * ab).sum(-1).clamp_min(1e-12)
    s = ((ap * ab).sum(-1) / den).clamp(0.0, 1.0)
    d = ap - s.unsqueeze(-1) * ab
    return (d * d).sum(-1)


def _box_coverage(t: Tensor, na: Tensor, nb: Tensor) -> Tensor:
    """Area of the unit square (centre 0) on the inner side of a straight edge.

    t: signed distance of the pixel centre inside the edge (positive = inside);
    na >= nb >= 0: absolute components of the edge normal, na >= 1/sqrt(2).
    The projection of a uniform point of the square on the normal is the sum of
    two uniforms of widths na and nb; its CDF is a smoothed ramp (linear in the
    middle, quadratic at the ends).
    """
    nb = nb.clamp_min(1e-3)
    h = 0.5 * (na + nb)
    m = 0.5 * (na - nb)
    u = t.clamp(-h, h)
    inv2ab = 0.5 / (na * nb)
    low = (u + h).square() * inv2ab
    high = 1.0 - (h - u).square() * inv2ab
    mid = 0.5 + u / na
    return torch.where(u < -m, low, torch.where(u > m, high, mid))


class _Composite(torch.autograd.Function):
    """T[key] = prod over items with that key of factor[item]; exact gradient with zeros.

    factors: [M] in [0, 1]; keys: [M] int64 in [0, size). Returns [size].
    """

    @staticmethod
    def forward(ctx, factors: Tensor, keys: Tensor, size: int) -> Tensor:
        tiny = torch.finfo(factors.dtype).tiny * 1e6
        zero = factors <= tiny
        logf = torch.log(torch.where(zero, torch.ones_like(factors), factors))
        log_sum = factors.new_zeros(size).index_add_(0, keys, logf)
        zeros = factors.new_zeros(size).index_add_(0, keys, zero.to(factors.dtype))
        out = torch.where(zeros > 0, torch.zeros_like(log_sum), log_sum.exp())
        ctx.save_for_backward(keys, logf, zero, log_sum, zeros)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        keys, logf, zero, log_sum, zeros = ctx.saved_tensors
        g = grad_out[keys]
        ls = log_sum[keys]
        nz = zeros[keys]
        # d prod / d f_i = product of the other factors.
        others = torch.where(zero, torch.where(nz == 1, ls.exp(), torch.zeros_like(ls)),
                             torch.where(nz == 0, (ls - logf).exp(), torch.zeros_like(ls)))
        return g * others, None, None


def _check_shapes(points: Tensor, half_widths: Tensor, opacities: Tensor, height: int, width: int) -> None:
    if not isinstance(points, Tensor) or points.ndim != 4 or tuple(points.shape[-2:]) != (4, 2):
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"points must be a tensor [S, N, 4, 2], got {shape}")
    sn = tuple(points.shape[:2])
    for name, value in (("half_widths", half_widths), ("opacities", opacities)):
        if not isinstance(value, Tensor) or tuple(value.shape) != sn:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{name} must be a tensor [S, N] = {list(sn)} matching points, got {shape}")
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"height and width must be positive, got height={height}, width={width}")
    if not points.is_floating_point():
        raise ValueError(f"points must be floating point, got {points.dtype}")


def render_strokes(
    points: Tensor,  # [S, N, 4, 2] control points P0..P3, pixels (x, y)
    half_widths: Tensor,  # [S, N] pixels
    opacities: Tensor,  # [S, N] in [0, 1]
    height: int,
    width: int,
    *,
    segments: int | None = None,
    tile: int = 4,
    candidates: int = 8,
) -> Tensor:  # [S, 3, H, W] in [0, 1]
    """Render S sketches of N black strokes over white, differentiably.

    ``segments`` is the polyline resolution per cubic (default: chosen from the
    longest control polygon, about 2 px per segment, 8..64); ``tile`` the tile side in
    pixels; ``candidates`` the most segments tested per pixel.
    """
    _check_shapes(points, half_widths, opacities, height, width)
    H, W = int(height), int(width)
    S, N = points.shape[:2]
    dtype, device = points.dtype, points.device
    half_widths = half_widths.to(dtype)
    opacities = opacities.to(dtype)
    size = S * H * W
    if N == 0:
        return points.new_ones(S, 3, H, W) + 0.0 * points.sum()

    flat_p = points.reshape(S * N, 4, 2)
    r_all = half_widths.reshape(S * N)
    with torch.no_grad():
        fin = torch.isfinite(flat_p).all(dim=(1, 2)) & torch.isfinite(r_all)
        pd = torch.where(fin[:, None, None], flat_p, torch.zeros_like(flat_p))
        if segments is None:
            poly_len = (pd[:, 1:] - pd[:, :-1]).norm(dim=-1).sum(-1).max().item() if S * N else 0.0
            segments = int(min(64, max(8, math.ceil(poly_len / 2.0))))
    K = int(segments)
    bern = _bernstein(K, dtype, device)  # [K+1, 4]
    verts = torch.einsum("kj,gjc->gkc", bern, flat_p)  # [G, K+1, 2] with autograd

    with torch.no_grad():
        v = torch.einsum("kj,gjc->gkc", bern, pd)
        r = torch.where(fin, r_all.detach().clamp_min(0.0), torch.zeros_like(r_all))
        alive = fin & (r > 0)
        reach = r + _REACH  # pixels farther than this from the curve are untouched
        lo = v.amin(1) - reach[:, None]
        hi = v.amax(1) + reach[:, None]
        nty, ntx = -(-H // tile), -(-W // tile)
        tx0 = (lo[:, 0] / tile).floor().clamp(0, ntx).long()
        tx1 = (hi[:, 0] / tile).ceil().clamp(0, ntx).long()
        ty0 = (lo[:, 1] / tile).floor().clamp(0, nty).long()
        ty1 = (hi[:, 1] / tile).ceil().clamp(0, nty).long()
        nx = (tx1 - tx0).clamp_min(0)
        ny = (ty1 - ty0).clamp_min(0)
        counts = torch.where(alive, nx * ny, torch.zeros_like(nx))
        total = int(counts.sum().item())
        if total == 0:
            return points.new_ones(S, 3, H, W) + 0.0 * (points.sum() + half_widths.sum() + opacities.sum())
        # Enumerate (stroke, tile) pairs of every bounding box in one go.
        g = torch.repeat_interleave(torch.arange(S * N, device=device), counts)
        start = torch.cumsum(counts, 0) - counts
        local = torch.arange(total, device=device) - start[g]
        tx = tx0[g] + local % nx[g]
        ty = ty0[g] + local // nx[g]
        half = 0.5 * tile
        centre = torch.stack([tx * tile + half, ty * tile + half], dim=-1).to(dtype)  # [P, 2]
        a = v[g, :-1]  # [P, K, 2]
        b = v[g, 1:]
        dc = _segment_dist2(centre[:, None, :], a, b).sqrt()  # [P, K]
        # Farthest pixel centre of the tile from the tile centre.
        hd = (tile - 1) / math.sqrt(2.0)
        rg = reach[g]
        dmin = dc.amin(1)
        keep = dmin <= rg + hd
        # A segment can be nearest for some pixel of the tile that can be covered only
        # if it is within dmin + 2 hd and within reach + hd of the tile centre.
        limit = torch.minimum(dmin + 2 * hd, rg + hd)[:, None]
        g, tx, ty, dc, limit = g[keep], tx[keep], ty[keep], dc[keep], limit[keep]
        kc = min(candidates, K)
        dk, seg = torch.topk(dc, kc, dim=1, largest=False)  # [P, kc]
        seg_ok = dk <= limit
        # Pixels of each surviving tile.
        iy, ix = torch.meshgrid(torch.arange(tile, device=device), torch.arange(tile, device=device), indexing="ij")
        px = (tx[:, None] * tile + ix.reshape(1, -1))  # [P, T*T]
        py = (ty[:, None] * tile + iy.reshape(1, -1))
        pxy = torch.stack([px, py], dim=-1).to(dtype) + 0.5  # [P, T*T, 2]
        vg = v[g]  # [P, K+1, 2]
        sa = torch.gather(vg, 1, seg[..., None].expand(-1, -1, 2))  # [P, kc, 2]
        sb = torch.gather(vg, 1, (seg + 1)[..., None].expand(-1, -1, 2))
        d2 = _segment_dist2(pxy[:, :, None, :], sa[:, None], sb[:, None])  # [P, T*T, kc]
        d2 = torch.where(seg_ok[:, None, :], d2, torch.full_like(d2, float("inf")))
        best_d2, best_j = d2.min(dim=2)  # [P, T*T]
        inside = (px < W) & (py < H) & (best_d2 < reach[g][:, None].square())
        pi, qi = inside.nonzero(as_tuple=True)
        item_g = g[pi]
        item_seg = torch.gather(seg, 1, best_j)[pi, qi]
        item_p = pxy[pi, qi]  # [M, 2]
        item_key = (item_g // N) * (H * W) + py[pi, qi] * W + px[pi, qi]
        # Nearest-point parameter on the winning segment (detached: stationary).
        ea = v[item_g, item_seg]
        eb = v[item_g, item_seg + 1]
        ab = eb - ea
        s = (((item_p - ea) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)
        off = item_p - (ea + s[:, None] * ab)
        nrm = off.norm(dim=-1, keepdim=True)
        n = torch.where(nrm > 1e-9, off / nrm.clamp_min(1e-9), torch.tensor([1.0, 0.0], dtype=dtype, device=device))
        na = n.abs().amax(-1)
        nb = n.abs().amin(-1)

    # Differentiable part, on the kept pixels only.
    qa = verts[item_g, item_seg]
    qb = verts[item_g, item_seg + 1]
    q = qa + s[:, None] * (qb - qa)
    diff = item_p - q
    dist = (diff.square().sum(-1) + 1e-12).sqrt()
    t = half_widths.reshape(-1)[item_g] - dist
    cov = _box_coverage(t, na, nb)
    factor = 1.0 - opacities.reshape(-1)[item_g] * cov
    trans = _Composite.apply(factor, item_key, size)  # [S*H*W]
    img = trans.view(S, 1, H, W).expand(S, 3, H, W).contiguous()
    return img.clamp(0.0, 1.0)
