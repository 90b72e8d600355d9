"""The object mask of a scene photo, and the foreground / background images built from it.

Where a mask comes from, in order: a mask file (``mask=<file>``: its alpha channel when it
has one, else its grey levels > 50%), the alpha channel of an RGBA target, or a
background-removal model (``rembg``) when that package is installed *and* its weights are
already on disk (weights are never downloaded here). Nothing else guesses an object: with
none of these, :func:`object_mask` raises a :class:`ClipassoError` saying what to pass.

Images here are tensors ``[3, H, W]`` in [0, 1]; masks are bool tensors ``[H, W]``
(True = object). Square working images come from :func:`square_image`, the same
padding (``fix_scale``) the core uses for sketch targets.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .errors import ClipassoError
from .images import open_image_rgba, pad_to_square, pil_to_tensor, to_uint8

MASK_HINT = "pass mask=<mask image>, a target PNG with an alpha channel, or parts=[background] for no object"


def square_image(img: Image.Image, max_size: int = 512, fix_scale: bool = True,
                 resample: Image.Resampling = Image.Resampling.BICUBIC, fill=None) -> Image.Image:
    """A square copy of ``img`` no larger than ``max_size`` px per side.

    fix_scale=True pads the shorter side with ``fill`` (default white; for a grey/mask
    image 0); False squashes. RGBA is resized channel-wise, not premultiplied, so the
    photo under a transparent object mask keeps its colours; its padding is transparent
    only when the image has transparency (an opaque photo stays opaque).
    """
    if img.mode == "RGBA":
        alpha = img.getchannel("A")
        alpha_fill = 0 if np.asarray(alpha).min() < 255 else 255
        rgb = square_image(img.convert("RGB"), max_size, fix_scale, resample)
        alpha = square_image(alpha, max_size, fix_scale, resample, fill=alpha_fill)
        return Image.merge("RGBA", (*rgb.split(), alpha))
    if fix_scale:
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


def mask_from_file(path: str | Path, size: int, fix_scale: bool = True, image_size: tuple[int, int] | None = None) -> Tensor:
    """A mask image -> bool [size, size] placed as the target is (same padding, same resize).

    image_size: the target's (width, height); a mask of another size is refused, since it
    would not line up with the photo.
    """
    img = open_image_rgba(path, what="mask")
    if image_size is not None and img.size != tuple(image_size):
        raise ClipassoError(f"mask {path} is {img.width}x{img.height} px but the target is "
                            f"{image_size[0]}x{image_size[1]}: give a mask of the target's size")
    alpha = alpha_mask(img)
    grey = img.convert("L") if alpha is None else img.getchannel("A")
    grey = square_image(grey, size, fix_scale, Image.Resampling.BILINEAR)
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
                what: str = "target") -> Tensor:
    """The object mask [H, W] (bool) of the square RGBA working image ``img``.

    original_size: the target file's (width, height), to check a mask file against it.
    Raises ClipassoError when no mask can be had, or when it is empty or covers everything.
    """
    side = img.width
    if mask_path:
        mask = mask_from_file(mask_path, side, fix_scale, original_size)
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


def dilate(mask: Tensor, size: int = 11) -> Tensor:
    """Grow a bool mask [H, W] by a size x size square (size odd; 1 = unchanged)."""
    if size <= 1:
        return mask.clone()
    if size % 2 == 0:
        raise ClipassoError(f"dilation={size} must be odd, e.g. 11")
    grown = F.max_pool2d(mask[None, None].float(), size, stride=1, padding=size // 2)
    return grown[0, 0] > 0.5


def inpaint(image: Tensor, mask: Tensor, radius: int = 3, method: str = "telea") -> Tensor:
    """Fill the masked region of ``image`` [3, H, W] from its surroundings (OpenCV inpainting).

    method: ``telea`` (Telea's fast marching) or ``ns`` (Navier-Stokes).
    """
    import cv2

    flags = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
    if method not in flags:
        raise ClipassoError(f"inpaint method '{method}' unknown: use telea or ns")
    src = np.ascontiguousarray(to_uint8(image))
    hole = np.ascontiguousarray(mask.cpu().numpy().astype(np.uint8) * 255)
    filled = cv2.inpaint(src, hole, float(radius), flags[method])
    return torch.from_numpy(filled).permute(2, 0, 1).float() / 255.0


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


def photo_tensor(img: Image.Image) -> Tensor:
    """The photo of an RGBA working image, [3, H, W]: its colour channels, alpha ignored
    (in a scene target the alpha channel marks the object, it does not hide the background)."""
    return pil_to_tensor(img.convert("RGB"))
