"""The sketch target: the photo, its optional object mask, and how both become a square.

The one loader of a target photo for every command that sketches one: ``sketch``, ``bench``
and ``evaluate`` (its jobs are sketch runs; its photo ceiling is the photos as those jobs
saw them) go through :func:`config_target`, so the same config gives the same tensor.
The scene squares its photo otherwise (:func:`clipasso_pl.masking.square_image`): it works
on a ``max_size`` image whose alpha channel is the object mask, dilates and inpaints at that
resolution, and its official rule centre-crops a small photo, as the CLIPascene code does.

The official ``get_target`` order: an RGBA photo is composited on white; with an object
mask the background becomes white; then the photo is padded (``fix_scale``) or squashed
to a square and resized (bicubic) to the canvas. The mask goes through the same padding
and resize, so ``mask_object_attention`` can restrict the saliency map on the canvas.

Where the mask comes from: ``mask=<file>`` (white or opaque = object, read by
:func:`clipasso_pl.masking.mask_from_file`, the scene path's loader), else with
``mask_object=true`` the target's own alpha channel when it has transparency, else the
U2Net background-removal model through ``rembg`` when it and its weights are on disk
(:func:`clipasso_pl.masking.removal_model_mask`; never downloaded here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import ClipassoError
from .images import _to_rgb, open_image_rgba, pad_to_square, pil_to_tensor, resolve_target

OFFICIAL_MARGIN = 20  # px the official fix_image_scale adds to the longer side
MASK_OBJECT_HINT = ("mask_object=true needs the U2Net model: pip install rembg and put u2net.onnx in $U2NET_HOME "
                    "(default ~/.u2net), or pass mask=<mask image> (white = object)")


@dataclass
class SketchTarget:
    """image: [3, size, size] in [0, 1]; mask: bool [size, size] (True = object) or None."""

    image: Tensor
    mask: Tensor | None = None


def official_pad(img: Image.Image, fill=(255, 255, 255)) -> Image.Image:
    """The official ``fix_image_scale``: a square of the longer side + 20 px, the image at
    (side // 2 - w // 2, side // 2 - h // 2) on ``fill`` (square images are padded too)."""
    side = max(img.size) + OFFICIAL_MARGIN
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, (side // 2 - img.width // 2, side // 2 - img.height // 2))
    return canvas


def to_square(img: Image.Image, size: int, fix_scale: bool, official_padding: bool,
              resample: Image.Resampling, fill) -> Image.Image:
    """Pad (``fix_scale``; tight or the official margin) or squash ``img`` to ``size`` x ``size``."""
    if fix_scale:
        img = official_pad(img, fill) if official_padding else pad_to_square(img, fill)
    return img.resize((size, size), resample)


def original_mask(photo: Image.Image, mask: str | Path | None, mask_object: bool) -> Tensor | None:
    """The object mask at the photo's own resolution, bool [H, W], or None without one.

    photo: the target as opened (RGBA, alpha 255 where the file has none).
    """
    from .masking import alpha_mask, mask_from_file, removal_model_mask

    W, H = photo.size
    if mask:
        side = max(W, H)  # the scene loader pads to a square; at this size it does not resize
        square = mask_from_file(mask, side, fix_scale=True, image_size=(W, H))
        top, left = (side - H) // 2, (side - W) // 2
        found = square[top:top + H, left:left + W]
    elif mask_object:
        found = alpha_mask(photo)
        if found is None:
            found = removal_model_mask(_to_rgb(photo), "u2net")
        if found is None:
            raise ClipassoError(MASK_OBJECT_HINT)
    else:
        return None
    if not bool(found.any()):
        raise ClipassoError(f"the object mask ({mask or 'mask_object'}) marks no object pixel: white marks the object")
    return found


def load_sketch_target(path: str | Path, size: int = 224, fix_scale: bool = True, mask: str | Path | None = None,
                       mask_object: bool = False, official_padding: bool = False, what: str = "target") -> SketchTarget:
    """Image file (and mask) -> :class:`SketchTarget` on a ``size`` canvas, background white where masked out.

    ``fix_scale=True`` pads a non-square image to a square with white (the whole object,
    undistorted; ``official_padding``: the official margin); ``False`` squashes it, as the
    official code does. Resizing is bicubic. ``what`` names the file in error messages.
    """
    photo = open_image_rgba(path, what)
    rgb = _to_rgb(photo)
    found = original_mask(photo, mask, mask_object)
    if found is not None:
        keep = found.numpy()[:, :, None]
        rgb = Image.fromarray(np.where(keep, np.asarray(rgb), np.uint8(255)))
    image = pil_to_tensor(to_square(rgb, size, fix_scale, official_padding, Image.Resampling.BICUBIC, (255, 255, 255)))
    if found is None:
        return SketchTarget(image)
    grey = Image.fromarray(found.numpy().astype(np.uint8) * 255, mode="L")
    placed = torch.from_numpy(np.asarray(to_square(grey, size, fix_scale, official_padding, Image.Resampling.BILINEAR, 0)) > 127)
    # Resampling blends a little object colour across the border: every pixel outside the placed mask is white.
    return SketchTarget(torch.where(placed, image, torch.ones_like(image)), placed)


def load_target(path: str | Path, size: int = 224, fix_scale: bool = True, what: str = "target") -> Tensor:
    """An image file as [3, size, size] in [0, 1], RGB on white: :func:`load_sketch_target` without a mask."""
    return load_sketch_target(path, size, fix_scale, what=what).image


def config_target(cfg, path: str | Path | None = None, what: str = "target") -> SketchTarget:
    """The target of a sketch config as the model sees it: ``cfg.target`` (or ``path``) on ``canvas``
    with ``fix_scale``, ``official_padding``, ``mask`` and ``mask_object``."""
    return load_sketch_target(resolve_target(cfg.target) if path is None else path, size=int(cfg.canvas),
                              fix_scale=bool(cfg.fix_scale), mask=cfg.mask, mask_object=bool(cfg.mask_object),
                              official_padding=bool(cfg.official_padding), what=what)
