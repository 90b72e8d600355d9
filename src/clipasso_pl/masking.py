"""The object mask of a photo, and the scene's square working image.

Where a mask comes from, in order: a mask file (``mask=<file>``: its alpha channel when it
has one, else its grey levels > 50%), the alpha channel of an RGBA target, or a
background-removal model (``rembg``) when that package is installed *and* its weights are
already on disk (weights are never downloaded here). Nothing else guesses an object: with
none of these, :func:`object_mask` raises a :class:`ClipassoError` saying what to pass.

Images here are tensors ``[3, H, W]`` in [0, 1]; masks are bool tensors ``[H, W]``
(True = object). The scene's square working images come from :func:`square_image`. It is not
the sketch's loader (:func:`clipasso_pl.sketch_target.config_target`) on purpose: the scene
squares an RGBA photo whose alpha channel is the object mask, keeps it at up to ``max_size`` px
(mask dilation and inpainting happen at that size, then each part is resized to the canvas),
and its official rule squashes a large photo but centre-crops a small one, as the CLIPascene
code does; the sketch pads (or squashes) straight to the canvas, as the CLIPasso code does.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .choices import SQUARE_MODES
from .errors import ClipassoError
from .images import open_image_rgba, pad_to_square, pil_to_tensor

MASK_HINT = "pass mask=<mask image>, a target PNG with an alpha channel, or parts=[background] for no object"


def square_image(img: Image.Image, max_size: int = 512, fix_scale: bool = True,
                 resample: Image.Resampling = Image.Resampling.BICUBIC, fill=None,
                 mode: str | None = None) -> Image.Image:
    """A square copy of ``img`` no larger than ``max_size`` px per side.

    mode (default: ``pad`` when fix_scale else ``squash``):
    ``pad`` pads the shorter side with ``fill`` (default white; for a grey/mask image 0);
    ``squash`` resizes to a square; ``official`` does what the CLIPascene code does: a photo
    larger than ``max_size`` is squashed to ``max_size`` x ``max_size``, a smaller one is
    centre-cropped to its shorter side (its sketch canvas is a resize + centre crop).
    RGBA is resized channel-wise, not premultiplied, so the photo under a transparent object
    mask keeps its colours; its padding is transparent only when the image has transparency
    (an opaque photo stays opaque).
    """
    mode = mode or ("pad" if fix_scale else "squash")
    if mode not in SQUARE_MODES:
        raise ClipassoError(f"square={mode!r} unknown: use one of {', '.join(SQUARE_MODES)}")
    if img.mode == "RGBA":
        alpha = img.getchannel("A")
        alpha_fill = 0 if np.asarray(alpha).min() < 255 else 255
        rgb = square_image(img.convert("RGB"), max_size, fix_scale, resample, mode=mode)
        alpha = square_image(alpha, max_size, fix_scale, resample, fill=alpha_fill, mode=mode)
        return Image.merge("RGBA", (*rgb.split(), alpha))
    if mode == "official":
        if max(img.size) > max_size:
            return img.resize((max_size, max_size), resample)
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        return img.crop((left, top, left + side, top + side))
    if mode == "pad":
        if fill is None:
            fill = 0 if img.mode == "L" else (255, 255, 255)
        img = pad_to_square(img, fill)
    side = min(max_size, max(img.size))
    if img.size != (side, side):
        img = img.resize((side, side), resample)
    return img


def alpha_mask(img: Image.Image) -> Tensor | None:
    """Alpha > 50% of an RGBA image as a bool mask [H, W]; None when the image is fully opaque."""
    alpha = np.asarray(img.getchannel("A"))
    if alpha.min() == 255:
        return None
    return torch.from_numpy(alpha > 127)


def mask_from_file(path: str | Path, size: int, fix_scale: bool = True, image_size: tuple[int, int] | None = None,
                   mode: str | None = None, max_size: int | None = None) -> Tensor:
    """A mask image -> bool [size, size] placed as the target is (same padding/crop, same resize).

    image_size: the target's (width, height); a mask of another size is refused, since it
    would not line up with the photo. mode / max_size: as :func:`square_image` made the
    target (max_size defaults to ``size``).
    """
    img = open_image_rgba(path, what="mask")
    if image_size is not None and img.size != tuple(image_size):
        raise ClipassoError(f"mask {path} is {img.width}x{img.height} px but the target is "
                            f"{image_size[0]}x{image_size[1]}: give a mask of the target's size")
    alpha = alpha_mask(img)
    grey = img.convert("L") if alpha is None else img.getchannel("A")
    grey = square_image(grey, max_size or size, fix_scale, Image.Resampling.BILINEAR, mode=mode)
    if grey.size != (size, size):
        grey = grey.resize((size, size), Image.Resampling.BILINEAR)
    mask = torch.from_numpy(np.asarray(grey) > 127)
    if not mask.any():
        raise ClipassoError(f"mask {path} marks no object pixel (all dark/transparent): white or opaque marks the object")
    return mask


def removal_model_mask(img: Image.Image, model: str = "u2net") -> Tensor | None:
    """The object mask from rembg's ``model`` when rembg is installed and its weights are on disk; else None.

    rembg keeps its ONNX weights in ``$U2NET_HOME`` (default ``~/.u2net``); when the file is
    missing we return None rather than let rembg download it.
    """
    if not model or importlib.util.find_spec("rembg") is None:
        return None
    home = Path(os.environ.get("U2NET_HOME", Path.home() / ".u2net")).expanduser()
    if not (home / f"{model}.onnx").is_file():
        return None
    from rembg import new_session, remove

    cut = remove(img.convert("RGB"), session=new_session(model))
    return alpha_mask(cut.convert("RGBA"))


def object_mask(img: Image.Image, mask_path: str | Path | None = None, fix_scale: bool = True,
                original_size: tuple[int, int] | None = None, model: str | None = "u2net",
                what: str = "target", mode: str | None = None, max_size: int | None = None) -> Tensor:
    """The object mask [H, W] (bool) of the square RGBA working image ``img``.

    original_size: the target file's (width, height), to check a mask file against it.
    Raises ClipassoError when no mask can be had, or when it is empty or covers everything.
    """
    side = img.width
    if mask_path:
        mask = mask_from_file(mask_path, side, fix_scale, original_size, mode=mode, max_size=max_size)
        source = f"mask {mask_path}"
    else:
        mask = alpha_mask(img)
        source = f"the alpha channel of the {what}"
        if mask is None:
            mask = removal_model_mask(img, model) if model else None
            source = f"background-removal model {model}"
        if mask is None:
            raise ClipassoError(f"no object mask for the {what}: it has no alpha channel and no mask was given; {MASK_HINT}")
    if not mask.any():
        raise ClipassoError(f"{source} marks no object pixel; {MASK_HINT}")
    if mask.all():
        raise ClipassoError(f"{source} marks every pixel as object, leaving no background; {MASK_HINT}")
    return mask


def photo_tensor(img: Image.Image) -> Tensor:
    """The photo of an RGBA working image, [3, H, W]: its colour channels, alpha ignored
    (in a scene target the alpha channel marks the object, it does not hide the background)."""
    return pil_to_tensor(img.convert("RGB"))
