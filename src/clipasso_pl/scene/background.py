"""The scene's background image: the photo with the (dilated) object region filled in.

CLIPascene sketches the background separately from the object, on a photo whose object has
been removed: the object mask is dilated (11 x 11 in the official code) and the hole is
inpainted, with LaMa (big-lama) when its TorchScript file is on disk, else with OpenCV.
Images are tensors ``[3, H, W]`` in [0, 1]; masks are bool tensors ``[H, W]`` (True = object).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..choices import INPAINT_METHODS
from ..errors import ClipassoError
from ..images import to_uint8


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
