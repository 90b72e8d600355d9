"""The scene's foreground image: the object on white, enlarged when it is small.

The official CLIPascene preprocessing rescales a single small object so that its bounding box
fills ``object_fraction`` (0.7) of the canvas; :class:`Placement` records the move so the
object's sketch can be put back where the object is in the scene.
Images are tensors ``[3, H, W]`` in [0, 1]; masks are bool tensors ``[H, W]`` (True = object).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ClipassoError


def should_resize_object(mask: Tensor, fraction: float = 0.7) -> bool:
    """The official condition for rescaling an object: one object (components smaller than a
    third of the largest ignored) whose bounding box's longer side is below ``fraction`` of
    the canvas side. Larger or several objects stay as they are."""
    from scipy import ndimage

    labels, count = ndimage.label(mask.cpu().numpy())
    if count == 0:
        return False
    sizes = np.bincount(labels.ravel())[1:]
    big = np.flatnonzero(sizes >= sizes.max() / 3) + 1
    if len(big) != 1:
        return False
    ys, xs = np.nonzero(labels == big[0])
    longest = max(ys.max() - ys.min(), xs.max() - xs.min())
    return bool(longest < fraction * min(mask.shape))


def on_white(image: Tensor, mask: Tensor) -> Tensor:
    """The masked part of ``image`` [3, H, W] on a white background."""
    m = mask.to(image.dtype)[None]
    return image * m + (1 - m)


@dataclass(frozen=True)
class Placement:
    """Where a rescaled object sits: ``p_new = (p_old - old_center) * scale + new_center``.

    Coordinates are fractions of the square side (0..1), x right, y down; the identity
    placement is scale 1 with equal centres.
    """

    scale: float = 1.0
    old_center: tuple[float, float] = (0.5, 0.5)
    new_center: tuple[float, float] = (0.5, 0.5)

    def inverse(self, points: Tensor, side: float) -> Tensor:
        """Points in the rescaled frame (pixels of a ``side`` canvas) -> the original frame."""
        new = points.new_tensor(self.new_center) * side
        old = points.new_tensor(self.old_center) * side
        return (points - new) / self.scale + old


def resize_obj(image: Tensor, mask: Tensor, fraction: float = 0.7) -> tuple[Tensor, Tensor, Placement]:
    """Rescale the object so its bounding box's longer side is ``fraction`` of the canvas, centred.

    image: [3, H, W] (the object on white); mask: [H, W] bool. Returns the new image, the
    new mask and the :class:`Placement` that maps sketch points back to the scene.
    """
    if not 0 < fraction <= 1:
        raise ClipassoError(f"object_fraction={fraction} must be in (0, 1], e.g. 0.7")
    H, W = mask.shape
    ys, xs = torch.nonzero(mask, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    scale = fraction * min(H, W) / max(y1 - y0, x1 - x0)
    h, w = max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale))
    crop = image[:, y0:y1, x0:x1][None]
    crop_mask = mask[y0:y1, x0:x1][None, None].float()
    crop = F.interpolate(crop, size=(h, w), mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)
    crop_mask = F.interpolate(crop_mask, size=(h, w), mode="bilinear", align_corners=False)[0, 0] > 0.5
    top, left = (H - h) // 2, (W - w) // 2
    out = torch.ones_like(image)
    out_mask = torch.zeros_like(mask)
    out[:, top:top + h, left:left + w] = crop
    out_mask[top:top + h, left:left + w] = crop_mask
    out = on_white(out, out_mask)
    placement = Placement(
        scale=h / (y1 - y0),
        old_center=((x0 + x1) / 2 / W, (y0 + y1) / 2 / H),
        new_center=((left + w / 2) / W, (top + h / 2) / H),
    )
    return out, out_mask, placement
