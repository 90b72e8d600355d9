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


@dataclass
class Strokes:
    """A batch of S sketches of N open cubic Bézier strokes each.

    points: Tensor       # [S, N, 4, 2] control points P0..P3, pixels (x, y)
    half_widths: Tensor  # [S, N] pixels
    opacities: Tensor    # [S, N] in [0, 1]
    """

    points: Tensor
    half_widths: Tensor
    opacities: Tensor

    def __post_init__(self) -> None:
        if self.points.ndim != 4 or self.points.shape[-2:] != (4, 2):
            raise ValueError(f"points must be [S, N, 4, 2], got {tuple(self.points.shape)}")
        sn = self.points.shape[:2]
        for name in ("half_widths", "opacities"):
            if getattr(self, name).shape != sn:
                raise ValueError(f"{name} must be [S, N] = {list(sn)}, got {tuple(getattr(self, name).shape)}")

    @classmethod
    def constant(cls, points: Tensor, half_width: float = 1.5, opacity: float = 1.0) -> "Strokes":
        """Strokes with one half-width and one opacity for every stroke. points: [S, N, 4, 2]."""
        sn = points.shape[:2]
        return cls(points, points.new_full(sn, half_width), points.new_full(sn, opacity))

    @property
    def num_sketches(self) -> int:
        return self.points.shape[0]

    @property
    def num_strokes(self) -> int:
        return self.points.shape[1]

    def select(self, index: int) -> "Strokes":
        """The sketch ``index`` as a batch of one."""
        sl = slice(index, index + 1)
        return Strokes(self.points[sl], self.half_widths[sl], self.opacities[sl])

    def detach(self) -> "Strokes":
        return Strokes(self.points.detach(), self.half_widths.detach(), self.opacities.detach())


def svg_string(points: Tensor, half_widths: Tensor, opacities: Tensor, height: int, width: int) -> str:
    """One sketch as SVG text: one ``<path>`` per stroke, ``M x y C x y x y x y``.

    points: [N, 4, 2] pixels; half_widths, opacities: [N]. Coordinates are written
    with 3 decimals, so a read-back is within 1e-3 px (rounding is deterministic).
    """
    pts = points.detach().double().cpu().tolist()
    hws = half_widths.detach().double().cpu().tolist()
    ops = opacities.detach().double().cpu().tolist()
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="{SVG_NS}" version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
    ]
    for p, hw, op in zip(pts, hws, ops):
        d = "M {:.3f} {:.3f} C {:.3f} {:.3f} {:.3f} {:.3f} {:.3f} {:.3f}".format(*(c for xy in p for c in xy))
        lines.append(
            f'<path d="{d}" fill="none" stroke="black" stroke-width="{2 * hw:.4f}" '
            f'stroke-opacity="{op:.4f}" stroke-linecap="round" stroke-linejoin="round"/>'
        )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def write_svg(path: str | Path, points: Tensor, half_widths: Tensor, opacities: Tensor, height: int, width: int) -> Path:
    """Write one sketch (points [N, 4, 2]) to ``path`` atomically; returns the path."""
    return atomic_write_text(path, svg_string(points, half_widths, opacities, height, width))


def _length(value: str | None, default: float) -> float:
    if value is None:
        return default
    m = re.match(_NUMBER, value.strip())
    return float(m.group(0)) if m else default


def read_svg(path: str | Path, num_strokes: int | None = None) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
    """Read a sketch written by :func:`write_svg` or by diffvg's ``save_svg``.

    Each ``<path>`` must be ``M`` followed by one ``C`` segment (one cubic).
    Returns points [N, 4, 2], half_widths [N], opacities [N] (float32) and
    (height, width). Raises :class:`ClipassoError` for anything else, and when
    ``num_strokes`` is given and the file holds a different number of paths.
    """
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
    pts, hws, ops = [], [], []
    for el in root.iter():
        if not el.tag.endswith("path"):
            continue
        d = el.get("d", "")
        cmds = re.findall(r"[A-Za-z]", d)
        nums = [float(v) for v in re.findall(_NUMBER, d)]
        if [c.upper() for c in cmds] != ["M", "C"] or len(nums) != 8 or cmds != ["M", "C"]:
            raise ClipassoError(
                f"path_svg {path}: path {len(pts)} is '{d[:40]}', expected one absolute cubic 'M x y C x y x y x y'"
            )
        pts.append(torch.tensor(nums, dtype=torch.float32).view(4, 2))
        style = dict(kv.split(":", 1) for kv in el.get("style", "").replace(" ", "").split(";") if ":" in kv)
        hws.append(_length(el.get("stroke-width", style.get("stroke-width")), 3.0) / 2)
        ops.append(_length(el.get("stroke-opacity", style.get("stroke-opacity")), 1.0))
    if not pts:
        raise ClipassoError(f"path_svg {path} holds no <path>: pass an SVG written by clipasso-pl")
    if num_strokes is not None and len(pts) != num_strokes:
        raise ClipassoError(f"path_svg {path} has {len(pts)} paths but strokes={num_strokes}: set strokes={len(pts)}")
    return torch.stack(pts), torch.tensor(hws), torch.tensor(ops), (int(round(h)), int(round(w)))
