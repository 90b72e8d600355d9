"""Picture of a saliency map over its image with the stroke start points (attention.png)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ..images import to_uint8


def _ramp(values: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] in [0, 1]: a blue-cyan-yellow-red ramp (jet-like)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.concatenate([r, g, b], axis=-1)


def _colormap(values: np.ndarray) -> np.ndarray:
    try:  # matplotlib is optional; its jet is what the paper's figures use
        from matplotlib import colormaps

        return colormaps["jet"](np.clip(values, 0, 1))[..., :3]
    except Exception:
        return _ramp(values)


def overlay(image: Tensor, saliency: Tensor, starts: Tensor, alpha: float = 0.5) -> np.ndarray:
    """Blend a heatmap of ``saliency`` over ``image`` and mark ``starts``.

    image: Tensor  # [3, H, W] in [0, 1]
    saliency: Tensor  # [H, W] in [0, 1]
    starts: Tensor  # [N, 2] (x, y) pixels
    returns: np.ndarray  # [H, W, 3] uint8; each start is a white dot with a black ring
    """
    base = to_uint8(image).astype(np.float64) / 255.0  # [H, W, 3]
    H, W = base.shape[:2]
    heat = _colormap(saliency.detach().float().cpu().numpy())
    if heat.shape[:2] != (H, W):
        raise ValueError(f"saliency {heat.shape[:2]} does not match image {(H, W)}")
    out = (1 - alpha) * base + alpha * heat
    radius = max(1.5, min(H, W) / 90)
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    for x, y in starts.detach().float().cpu().numpy().reshape(-1, 2):
        d2 = (xx - x) ** 2 + (yy - y) ** 2
        out[d2 <= (radius + 1) ** 2] = 0.0
        out[d2 <= radius**2] = 1.0
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


__all__ = ["overlay"]
