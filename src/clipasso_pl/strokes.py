"""Strokes: the sketch as tensors, and its SVG form.

Coordinate convention, stated once for the whole package: points are in pixels,
origin at the top-left corner of the canvas, x to the right, y down; pixel
(row i, col j) has its centre at (j + 0.5, i + 0.5). A stroke's width is kept as
a *half-width* (diffvg's ``stroke_width``); the SVG ``stroke-width`` is twice it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .errors import ClipassoError
from .images import atomic_write_text

SVG_NS = "http://www.w3.org/2000/svg"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


# SVG path command of a segment with c control points (diffvg's save_svg writes the same).
SEGMENT_COMMANDS = {4: "C", 3: "Q", 2: "L"}


def points_per_stroke(num_segments: int, control_points_per_seg: int = 4) -> int:
    """P = K (c - 1) + 1 points of a stroke of K segments of c control points joined end to end."""
    return int(num_segments) * (int(control_points_per_seg) - 1) + 1


def cubic_segments(points: Tensor, control_points_per_seg: int = 4) -> Tensor:
    """Every segment of a stroke as an exact cubic. points: [..., P, 2] -> [..., K, 4, 2].

    c = 4: the cubics themselves; c = 3: quadratics raised to degree 3; c = 2: straight
    lines with their inner control points at 1/3 and 2/3 (the same curves, drawn alike).
    """
    c = int(control_points_per_seg)
    seg = points.unfold(-2, c, c - 1).transpose(-1, -2)  # [..., K, c, 2]
    if c == 4:
        return seg
    a, b = seg[..., 0, :], seg[..., -1, :]
    if c == 3:
        m = seg[..., 1, :]
        inner = (a + 2 * (m - a) / 3, b + 2 * (m - b) / 3)
    else:
        inner = (a + (b - a) / 3, a + 2 * (b - a) / 3)
    return torch.stack((a, *inner, b), dim=-2)


@dataclass
class Strokes:
    """A batch of S sketches of N open strokes each; a stroke is K Bézier segments joined end to end.

    points: Tensor       # [S, N, P, 2] pixels (x, y), P = K (c - 1) + 1 (one cubic: [S, N, 4, 2])
    half_widths: Tensor  # [S, N] pixels
    opacities: Tensor    # [S, N] in [0, 1]
    control_points_per_seg: int  # c: 4 cubic (default), 3 quadratic, 2 straight lines
    """

    points: Tensor
    half_widths: Tensor
    opacities: Tensor
    control_points_per_seg: int = 4

    def __post_init__(self) -> None:
        c = self.control_points_per_seg
        if c not in SEGMENT_COMMANDS:
            raise ValueError(f"control_points_per_seg must be 2, 3 or 4, got {c}")
        if self.points.ndim != 4 or self.points.shape[-1] != 2 or self.points.shape[-2] < c or (self.points.shape[-2] - 1) % (c - 1):
            raise ValueError(f"points must be [S, N, K*{c - 1}+1, 2] (one cubic: [S, N, 4, 2]), got {tuple(self.points.shape)}")
        sn = self.points.shape[:2]
        for name in ("half_widths", "opacities"):
            if getattr(self, name).shape != sn:
                raise ValueError(f"{name} must be [S, N] = {list(sn)}, got {tuple(getattr(self, name).shape)}")

    @classmethod
    def constant(cls, points: Tensor, half_width: float = 1.5, opacity: float = 1.0, control_points_per_seg: int = 4) -> "Strokes":
        """Strokes with one half-width and one opacity for every stroke. points: [S, N, P, 2]."""
        sn = points.shape[:2]
        return cls(points, points.new_full(sn, half_width), points.new_full(sn, opacity), control_points_per_seg)

    @property
    def num_segments(self) -> int:
        return (self.points.shape[2] - 1) // (self.control_points_per_seg - 1)

    def cubics(self) -> "Strokes":
        """The same drawing as S sketches of N*K one-cubic strokes (each segment its own stroke,
        with its stroke's width and opacity); ``self`` when every stroke already is one cubic."""
        if self.control_points_per_seg == 4 and self.points.shape[2] == 4:
            return self
        s, n, k = self.num_sketches, self.num_strokes, self.num_segments
        seg = cubic_segments(self.points, self.control_points_per_seg).reshape(s, n * k, 4, 2)
        return Strokes(seg, self.half_widths.repeat_interleave(k, dim=1), self.opacities.repeat_interleave(k, dim=1))

    @property
    def num_sketches(self) -> int:
        return self.points.shape[0]

    @property
    def num_strokes(self) -> int:
        return self.points.shape[1]

    def select(self, index: int) -> "Strokes":
        """The sketch ``index`` as a batch of one."""
        sl = slice(index, index + 1)
        return Strokes(self.points[sl], self.half_widths[sl], self.opacities[sl], self.control_points_per_seg)

    def detach(self) -> "Strokes":
        return Strokes(self.points.detach(), self.half_widths.detach(), self.opacities.detach(), self.control_points_per_seg)


def svg_string(points: Tensor, half_widths: Tensor, opacities: Tensor, height: int, width: int,
               control_points_per_seg: int = 4) -> str:
    """One sketch as SVG text: one ``<path>`` per stroke, ``M x y C x y x y x y`` for one cubic.

    points: [N, P, 2] pixels; half_widths, opacities: [N]. A stroke of K segments is
    ``M`` then K commands (``C`` cubic, ``Q`` quadratic, ``L`` line, by
    ``control_points_per_seg``), as diffvg's save_svg writes them. Coordinates are written
    with 3 decimals, so a read-back is within 1e-3 px (rounding is deterministic).
    """
    c = int(control_points_per_seg)
    pts = points.detach().double().cpu().tolist()
    hws = half_widths.detach().double().cpu().tolist()
    ops = opacities.detach().double().cpu().tolist()
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="{SVG_NS}" version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
    ]
    for p, hw, op in zip(pts, hws, ops):
        if c == 4 and len(p) == 4:  # one cubic: the original writer's exact text
            d = "M {:.3f} {:.3f} C {:.3f} {:.3f} {:.3f} {:.3f} {:.3f} {:.3f}".format(*(v for xy in p for v in xy))
        else:
            parts = ["M {:.3f} {:.3f}".format(*p[0])]
            for j in range(1, len(p), c - 1):
                parts.append(SEGMENT_COMMANDS[c] + "".join(" {:.3f} {:.3f}".format(*xy) for xy in p[j : j + c - 1]))
            d = " ".join(parts)
        lines.append(
            f'<path d="{d}" fill="none" stroke="black" stroke-width="{2 * hw:.4f}" '
            f'stroke-opacity="{op:.4f}" stroke-linecap="round" stroke-linejoin="round"/>'
        )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def write_svg(path: str | Path, points: Tensor, half_widths: Tensor, opacities: Tensor, height: int, width: int,
              control_points_per_seg: int = 4) -> Path:
    """Write one sketch (points [N, P, 2]) to ``path`` atomically; returns the path."""
    return atomic_write_text(path, svg_string(points, half_widths, opacities, height, width, control_points_per_seg))


def _length(value: str | None, default: float) -> float:
    if value is None:
        return default
    m = re.match(_NUMBER, value.strip())
    return float(m.group(0)) if m else default


def _parse_svg(path: str | Path) -> tuple[list[tuple[str, list[str], list[float], float, float]], tuple[int, int]]:
    """Every ``<path>`` of an SVG as (d, commands, numbers, half-width, opacity), and (height, width)."""
    path = Path(path)
    if not path.is_file():
        raise ClipassoError(f"path_svg {path} does not exist: pass an SVG written by clipasso-pl")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ClipassoError(f"path_svg {path} is not valid XML ({e}): pass an SVG written by clipasso-pl") from None
    if not root.tag.endswith("svg"):
        raise ClipassoError(f"path_svg {path} has root <{root.tag}>, not <svg>: pass an SVG written by clipasso-pl")
    vb = root.get("viewBox")
    if vb:
        _, _, w, h = (float(v) for v in re.findall(_NUMBER, vb)[:4])
    else:
        w, h = _length(root.get("width"), 224), _length(root.get("height"), 224)
    found = []
    for el in root.iter():
        if not el.tag.endswith("path"):
            continue
        d = el.get("d", "")
        style = dict(kv.split(":", 1) for kv in el.get("style", "").replace(" ", "").split(";") if ":" in kv)
        hw = _length(el.get("stroke-width", style.get("stroke-width")), 3.0) / 2
        op = _length(el.get("stroke-opacity", style.get("stroke-opacity")), 1.0)
        found.append((d, re.findall(r"[A-Za-z]", d), [float(v) for v in re.findall(_NUMBER, d)], hw, op))
    if not found:
        raise ClipassoError(f"path_svg {path} holds no <path>: pass an SVG written by clipasso-pl")
    return found, (int(round(h)), int(round(w)))


def read_svg(path: str | Path, num_strokes: int | None = None) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
    """Read a sketch of one-cubic strokes written by :func:`write_svg` or by diffvg's ``save_svg``.

    Each ``<path>`` must be ``M`` followed by one ``C`` segment (one cubic); for strokes of
    several segments, quadratics or lines use :func:`read_strokes`.
    Returns points [N, 4, 2], half_widths [N], opacities [N] (float32) and
    (height, width). Raises :class:`ClipassoError` for anything else, and when
    ``num_strokes`` is given and the file holds a different number of paths.
    """
    found, size = _parse_svg(path)
    pts = []
    for i, (d, cmds, nums, _, _) in enumerate(found):
        if [c.upper() for c in cmds] != ["M", "C"] or len(nums) != 8 or cmds != ["M", "C"]:
            raise ClipassoError(
                f"path_svg {path}: path {i} is '{d[:40]}', expected one absolute cubic 'M x y C x y x y x y'"
            )
        pts.append(torch.tensor(nums, dtype=torch.float32).view(4, 2))
    if num_strokes is not None and len(pts) != num_strokes:
        raise ClipassoError(f"path_svg {path} has {len(pts)} paths but strokes={num_strokes}: set strokes={len(pts)}")
    hws = torch.tensor([f[3] for f in found])
    ops = torch.tensor([f[4] for f in found])
    return torch.stack(pts), hws, ops, size


def read_strokes(path: str | Path, num_strokes: int | None = None) -> tuple[Strokes, tuple[int, int]]:
    """Read a sketch whose strokes are K segments each (``M`` then K absolute ``C``, ``Q`` or
    ``L`` segments, as :func:`write_svg` and diffvg's ``save_svg`` write them).

    Every path must have the same kind and number of segments. Returns a batch of one
    sketch (points [1, N, P, 2] float32, its ``control_points_per_seg``) and (height, width).
    """
    found, size = _parse_svg(path)
    layouts, pts = set(), []
    for i, (d, cmds, nums, _, _) in enumerate(found):
        kinds = set(cmds[1:])
        c = {"C": 4, "Q": 3, "L": 2}.get(next(iter(kinds)), 0) if len(kinds) == 1 else 0
        per = 2 * (c - 1)
        if not cmds or cmds[0] != "M" or "M" in cmds[1:] or c == 0 or len(nums) < 2 + per or (len(nums) - 2) % per:
            raise ClipassoError(
                f"path_svg {path}: path {i} is '{d[:40]}', expected 'M x y' then absolute segments of one kind (C, Q or L)"
            )
        layouts.add((c, len(nums) // 2))
        pts.append(torch.tensor(nums, dtype=torch.float32).view(-1, 2))
    if len(layouts) > 1:
        raise ClipassoError(f"path_svg {path}: its paths have different segment kinds or counts; every stroke must have the same")
    if num_strokes is not None and len(pts) != num_strokes:
        raise ClipassoError(f"path_svg {path} has {len(pts)} paths but strokes={num_strokes}: set strokes={len(pts)}")
    c, _ = layouts.pop()
    hws = torch.tensor([f[3] for f in found])
    ops = torch.tensor([f[4] for f in found])
    return Strokes(torch.stack(pts)[None], hws[None], ops[None], c), size
