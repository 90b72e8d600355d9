"""Differentiable rasterization of stroke sketches: ``render_strokes`` and Renderer objects."""

from .capacity import Budget, Capacity
from .core import rasterize, render_strokes
from .renderers import DiffvgRenderer, Renderer, TorchRenderer, build_renderer

__all__ = ["render_strokes", "rasterize", "Capacity", "Budget", "Renderer", "TorchRenderer", "DiffvgRenderer",
           "build_renderer"]
