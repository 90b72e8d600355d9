"""The object mask of a scene photo, and the foreground / background images built from it.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .choices import INPAINT_METHODS, SQUARE_MODES
from .errors import ClipassoError
from .images import open_image_rgba, pad_to_square, pil_to_tensor, to_uint8

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


LAMA_FILE = "big-lama.pt"


def lama_weights_path(path: str | Path | None = None) -> Path | None:
    """Where the big-lama TorchScript file is, when it is on disk; None otherwise.

    Looked up in order: ``path`` (the ``lama_weights`` setting), ``$LAMA_MODEL``, and
    ``<torch hub dir>/checkpoints/big-lama.pt`` (where simple-lama-inpainting keeps it).
    Nothing is downloaded.
    """
    candidates = [path, os.environ.get("LAMA_MODEL")]
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / LAMA_FILE)
    for c in candidates:
        if c and Path(c).expanduser().is_file():
            return Path(c).expanduser()
    return None


def inpaint_lama(image: Tensor, mask: Tensor, weights: str | Path) -> Tensor:
    """Fill the masked region of ``image`` [3, H, W] with LaMa (big-lama, TorchScript export).

    The model takes (image [1, 3, H', W'] in [0, 1], mask [1, 1, H', W'] in {0, 1}) with
    sides padded to a multiple of 8 and returns the inpainted image; only the masked pixels
    are taken from it.
    """
    model = torch.jit.load(str(weights), map_location="cpu").eval()
    H, W = image.shape[-2:]
    ph, pw = (-H) % 8, (-W) % 8
    img = F.pad(image[None].float(), (0, pw, 0, ph), mode="reflect" if min(H, W) > max(ph, pw) else "replicate")
    m = F.pad(mask[None, None].float(), (0, pw, 0, ph))
    with torch.no_grad():
        out = model(img, m)[0, :, :H, :W].float().clamp(0, 1)
    hole = mask.to(image.dtype)[None]
    return image * (1 - hole) + out * hole


def fill_background(image: Tensor, mask: Tensor, method: str = "auto", radius: int = 3,
                    lama_weights: str | Path | None = None) -> tuple[Tensor, str]:
    """The background image: ``image`` [3, H, W] with ``mask`` [H, W] inpainted; returns (image, backend).

    method: ``auto`` (the official LaMa when its weights are on disk, else OpenCV Telea),
    ``lama`` (refuses to run without the weights, saying where to put them), ``telea`` or
    ``ns`` (OpenCV). backend: ``lama`` / ``opencv-telea`` / ``opencv-ns``.
    """
    if method not in INPAINT_METHODS:
        raise ClipassoError(f"inpaint_method={method!r} unknown: use one of {', '.join(INPAINT_METHODS)}")
    if method in ("auto", "lama"):
        weights = lama_weights_path(lama_weights)
        if weights is not None:
            return inpaint_lama(image, mask, weights), "lama"
        if method == "lama":
            raise ClipassoError(f"inpaint_method=lama needs the big-lama TorchScript file ({LAMA_FILE}) on disk: pass "
                                f"lama_weights=<file>, set $LAMA_MODEL, or put it in "
                                f"{Path(torch.hub.get_dir()) / 'checkpoints'}; or use inpaint_method=telea")
        method = "telea"
    return inpaint(image, mask, radius, method), f"opencv-{method}"


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


def photo_tensor(img: Image.Image) -> Tensor:
    """The photo of an RGBA working image, [3, H, W]: its colour channels, alpha ignored
    (in a scene target the alpha channel marks the object, it does not hide the background)."""
    return pil_to_tensor(img.convert("RGB"))
