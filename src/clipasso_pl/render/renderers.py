"""Renderer objects that configs build (``renderer=torch`` | ``renderer=diffvg``).

Both follow one protocol: ``render(strokes, height, width) -> [S, 3, H, W]`` in [0, 1],
black strokes composited "over" in index order on a white background, a stroke's
half-width being diffvg's ``stroke_width``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..accel import host_side
from ..errors import ClipassoError
from ..strokes import Strokes
from .capacity import NEEDS, Budget, Capacity
from .core import rasterize

DIFFVG_MISSING = (
    "renderer=diffvg needs pydiffvg, which is not importable: build and install it from "
    "https://github.com/BachiLi/diffvg (python setup.py install), or use renderer=torch"
)


@runtime_checkable
class Renderer(Protocol):
    def render(self, strokes: Strokes, height: int, width: int) -> Tensor:
        """strokes: S sketches of N strokes -> pixels [S, 3, height, width] in [0, 1]."""
        ...


class TorchRenderer:
    """The pure-PyTorch renderer (default): :func:`render_strokes`, batched over sketches.

    A stroke of K segments (quadratics and lines raised to cubics) is drawn as diffvg draws
    a path: once, over the union of its segments' bands.

    Two sizings (see :mod:`.capacity`):
    - a render that autograd tracks (a training step) is *static*: its buffers are sized by
      ``budget`` for the number of strokes, it reads nothing on the host (no CUDA sync) and
      compiles as one graph. What it needed is kept on the device (``peak``, per stroke);
      if it needed more than its sizes, its image is NaN (the step is skipped as non-finite)
      and ``overflows`` (a 0-d device tensor: read it on eval steps only) counts it;
    - any other render (eval, snapshots, outputs: under ``no_grad``) is sized exactly from
      the strokes (a few host reads) and then refits ``budget`` to the largest needs seen
      since the last refit, with headroom.
    Between eval steps the strokes grow (Adam moves every point by up to ``lr`` px a step), so
    each static render also sends its needs to the host without waiting (a pinned buffer and an
    event on CUDA) and the next static render grows ``budget`` from them once they have
    arrived (it never shrinks there): an overflow then takes a jump of more than HEADROOM in one
    step. Sizes never change a render's values (padding draws nothing), so when the refit lands
    does not matter.

    Under ``compile=step`` the render is traced into the step's graph, so what the graph reads of
    this object must change only when the sizes do: the step calls :meth:`before_static_render`
    eagerly first (the growth, and the sizes as ints in ``planned``), ``peak`` and ``overflows``
    stay tensors, and the graph never reads ``budget``'s floats. A graph is then recompiled only
    when the sizes change (rarely: the grid and the hysteresis), never at an eval step's refit.
    """

    def __init__(self, budget: Budget | None = None) -> None:
        self.budget = budget if budget is not None else Budget()
        self.peak: Tensor | None = None  # [6] float: per-stroke needs (windows: pixels), max since the last refit
        self.overflows: Tensor | None = None  # 0-d long: static renders that overflowed (NaN)
        self._sent: Tensor | None = None  # [6]: the last static render's per-stroke needs, on the host
        self._arrived = None  # torch.cuda.Event of that copy (None: a CPU copy, there at once)
        self._unread = False  # whether ``_sent`` holds needs not yet refitted to
        self.planned: tuple[int, int, Capacity] | None = None  # (strokes, segments, sizes) of the next static render
        self.compiled = False  # a compiled step renders (set by its module): sizes only grow, by COMPILED_HEADROOM

    def capacity(self, num_strokes: int, segments: int = 1) -> Capacity:
        """The static sizes for ``num_strokes`` one-cubic strokes (S x N x segments)."""
        return self.budget.capacity(num_strokes, segments)

    def render(self, strokes: Strokes, height: int, width: int) -> Tensor:
        segments = strokes.num_segments
        strokes = strokes.cubics()
        args = (strokes.points, strokes.half_widths, strokes.opacities)
        num = strokes.num_sketches * strokes.num_strokes
        tracked = torch.is_grad_enabled() and any(a.requires_grad for a in args)
        static = tracked and num > 0
        eager = not torch.compiler.is_compiling()
        if static and eager:
            self.before_static_render(num, segments, strokes.points.device)
        capacity = None
        if static:  # traced without a plan for this shape, the sizes come from the budget (the step plans first)
            planned = self.planned
            capacity = planned[2] if planned is not None and planned[:2] == (num, segments) else self.capacity(num, segments)
        rgb, needs, over = rasterize(*args, height, width, segments, capacity)
        per_stroke = torch.cat((needs[:4] / max(num, 1), needs[4:])).detach()
        if static:
            self.peak = per_stroke if self.peak is None else torch.maximum(self.peak, per_stroke)
            self.overflows = over.long() if self.overflows is None else self.overflows + over
            if eager:
                self._send(per_stroke)
        elif num > 0:
            self.refit(per_stroke)
        return rgb

    def before_static_render(self, num_strokes: int, segments: int, device: torch.device) -> None:
        """Eager work before a static render of ``num_strokes`` one-cubic strokes of ``segments``: grow
        ``budget`` from needs that reached the host, fix the sizes in ``planned``, and make ``peak`` and
        ``overflows`` tensors. For a compiled step (``compiled``), which cannot send from inside its
        graph: start sending ``peak``, the needs of the steps so far, to be read before a later step."""
        self._refit_from_sent()
        if self.peak is None:
            self.peak = torch.zeros(len(NEEDS), device=device)
        if self.overflows is None:
            self.overflows = torch.zeros((), dtype=torch.long, device=device)
        if self.compiled:
            # Fresh copies: under CUDA graphs the last replay's outputs may be overwritten by the next.
            self.peak, self.overflows = self.peak.clone(), self.overflows.clone()
            self._send(self.peak)
        self.planned = (num_strokes, segments, self.capacity(num_strokes, segments))

    def _send(self, per_stroke: Tensor) -> None:
        """Start copying ``per_stroke`` [6] to the host; on CUDA without blocking (pinned memory)."""
        self._unread = True
        if per_stroke.device.type != "cuda":
            self._sent, self._arrived = per_stroke.float(), None
            return
        if self._sent is None or not self._sent.is_pinned():
            self._sent = torch.empty(per_stroke.shape, dtype=torch.float32, pin_memory=True)
        self._sent.copy_(per_stroke, non_blocking=True)
        self._arrived = torch.cuda.Event()
        self._arrived.record()

    def _refit_from_sent(self) -> None:
        """Refit ``budget`` to the last sent needs if they have reached the host (never waits)."""
        if not self._unread or (self._arrived is not None and not self._arrived.query()):
            return
        with host_side():  # host memory: a read, not a device sync
            top = self._sent.tolist()
        self._unread = False
        # Grow only: a training step's needs are one sample (a scene's MLP can jump between steps); the
        # exact renders of eval steps are where sizes may also shrink.
        self.budget = self.budget.fit(top[:4], (int(top[4]), int(top[5])), shrink=False, headroom=self._headroom())

    def refit(self, per_stroke: Tensor | None = None) -> Budget:
        """Refit ``budget`` to the peak needs of the static renders since the last refit and
        ``per_stroke`` (needs of an exact render, same layout as ``peak``). Reads the device."""
        needs = [t for t in (self.peak, per_stroke) if t is not None]
        if needs:
            top = torch.stack([t.to(needs[0].device) for t in needs]).amax(0).tolist()
            self.budget = self.budget.fit(top[:4], (int(top[4]), int(top[5])), shrink=not self.compiled,
                                          headroom=self._headroom())
            # zeros, not None: a compiled step's graph reads ``peak``; its type must not change
            self.peak = None if self.peak is None else torch.zeros_like(self.peak)
        return self.budget

    def _headroom(self) -> float:
        return self.budget.COMPILED_HEADROOM if self.compiled else self.budget.HEADROOM

    def __repr__(self) -> str:
        return "TorchRenderer()"


def _import_pydiffvg():
    try:
        import pydiffvg  # noqa: PLC0415 (optional dependency, imported on use)
    except ImportError:
        raise ClipassoError(DIFFVG_MISSING) from None
    return pydiffvg


class DiffvgRenderer:
    """diffvg (pydiffvg) as the rasterizer, set up as CLIPasso uses it.

    Each stroke is one open cubic path with its own shape group (stroke colour
    (0, 0, 0, opacity), no fill), drawn in index order with a box pixel filter and
    ``num_samples`` x ``num_samples`` jittered samples per pixel (seeded by ``seed``,
    0 as in CLIPasso), then composited over white.
    """

    def __init__(self, num_samples: int = 2, seed: int = 0) -> None:
        self.pydiffvg = _import_pydiffvg()
        self.num_samples = int(num_samples)
        self.seed = int(seed)

    def _render_one(self, points: Tensor, half_widths: Tensor, opacities: Tensor, height: int, width: int,
                    control_points_per_seg: int = 4) -> Tensor:
        """points: [N, P, 2], one path of K = (P - 1) / (c - 1) segments per stroke (as CLIPasso's get_path)."""
        pydiffvg = self.pydiffvg
        segments = (points.shape[1] - 1) // (control_points_per_seg - 1)
        # diffvg counts the control points between a segment's ends: 2 cubic, 1 quadratic, 0 line.
        inner = torch.full((segments,), control_points_per_seg - 2, dtype=torch.int32)
        device = points.device
        pydiffvg.set_use_gpu(device.type == "cuda")
        if device.type == "cuda":
            pydiffvg.set_device(device)
        shapes, groups = [], []
        for i in range(points.shape[0]):
            shapes.append(
                pydiffvg.Path(
                    num_control_points=inner,
                    points=points[i].float(),
                    stroke_width=half_widths[i].float(),
                    is_closed=False,
                )
            )
            colour = torch.cat((torch.zeros(3, device=device), opacities[i : i + 1].float()))
            groups.append(pydiffvg.ShapeGroup(shape_ids=torch.tensor([i]), fill_color=None, stroke_color=colour))
        args = pydiffvg.RenderFunction.serialize_scene(width, height, shapes, groups)
        rgba = pydiffvg.RenderFunction.apply(width, height, self.num_samples, self.num_samples, self.seed, None, *args)
        a = rgba[:, :, 3:4]
        rgb = a * rgba[:, :, :3] + (1 - a)  # over white
        return rgb.permute(2, 0, 1).to(points.dtype)

    def render(self, strokes: Strokes, height: int, width: int) -> Tensor:
        return torch.stack(
            [
                self._render_one(strokes.points[k], strokes.half_widths[k], strokes.opacities[k], height, width,
                                 strokes.control_points_per_seg)
                for k in range(strokes.num_sketches)
            ]
        )

    def __repr__(self) -> str:
        return f"DiffvgRenderer(num_samples={self.num_samples}, seed={self.seed})"


RENDERERS = {"torch": TorchRenderer, "diffvg": DiffvgRenderer}


def build_renderer(name: str, **kwargs) -> Renderer:
    """``"torch"`` or ``"diffvg"`` -> a Renderer; anything else is a :class:`ClipassoError`."""
    if name not in RENDERERS:
        raise ClipassoError(f"unknown renderer {name!r}: use renderer=torch or renderer=diffvg")
    return RENDERERS[name](**kwargs)


def diffvg_if_available(**kwargs) -> Renderer:
    """diffvg (the official rasterizer) when ``pydiffvg`` imports, else the torch renderer with a one-line note."""
    try:
        return DiffvgRenderer(**kwargs)
    except ClipassoError:
        import sys

        print("note: pydiffvg is not installed, so the torch renderer (diffvg's semantics) is used", file=sys.stderr)
        return TorchRenderer()
