"""Differentiable rasterization of stroke sketches: ``render_strokes`` and Renderer objects."""

from .core import render_strokes
from .renderers import DiffvgRenderer, Renderer, TorchRenderer, build_renderer

__all__ = ["render_strokes", "Renderer", "TorchRenderer", "DiffvgRenderer", "build_renderer"]
