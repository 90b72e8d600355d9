"""Stroke initialisation: CLIP saliency, XDoG edges, start-point sampling, random walk.

Coordinates are pixels, origin top-left, x right, y down.
"""

from .overlay import overlay
from .saliency import cls_attention_grid, saliency_map
from .sampling import random_walk, sample_start_points, sampling_probability, uniform_start_points
from .stroke_init import MODES, InitResult, StrokeInit
from .xdog import xdog_edges

__all__ = [
    "MODES",
    "InitResult",
    "StrokeInit",
    "cls_attention_grid",
    "overlay",
    "random_walk",
    "sample_start_points",
    "sampling_probability",
    "saliency_map",
    "uniform_start_points",
    "xdog_edges",
]
