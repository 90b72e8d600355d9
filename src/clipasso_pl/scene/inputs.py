"""From a scene photo to the two targets CLIPascene sketches: foreground and background.

The photo is made square at no more than ``max_size`` px (``square``: the official rule,
squash above max_size, else centre-crop; or ``pad`` / ``squash``); the object mask comes
from :mod:`clipasso_pl.masking`; the background (:mod:`.background`) is the photo with the dilated
object region inpainted (LaMa when its weights are on disk, else OpenCV; or a user-given background
file), the foreground (:mod:`.foreground`) is the object on white, rescaled as the official code does
(``resize_obj``: a single object smaller than ``object_fraction`` of the side is enlarged).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .. import masking
from ..choices import PARTS
from ..errors import ClipassoError
from . import foreground
from .background import dilate, fill_background
from ..images import open_image, open_image_rgba, pil_to_tensor, resolve_target, save_png



@dataclass
class SceneInputs:
    """The working images of one scene, all square at ``side`` px.

    image: [3, side, side] the photo on white; mask / dilated: [side, side] bool or None
    (background only); background, foreground: [3, side, side] (foreground None when not
    sketched); placement: where a rescaled object came from (identity without resize_obj);
    inpainting: how the background was made (``lama``, ``opencv-telea``, ``opencv-ns``,
    ``file`` or ``none``).
    """

    image: Tensor
    mask: Tensor | None
    dilated: Tensor | None
    background: Tensor
    foreground: Tensor | None
    placement: foreground.Placement
    inpainting: str = "none"

    @property
    def side(self) -> int:
        return self.image.shape[-1]

    def target(self, part: str, canvas: int) -> Tensor:
        """The ``part`` image resized to the sketch canvas: [3, canvas, canvas] in [0, 1]."""
        image = getattr(self, part)
        if image.shape[-1] != canvas:
            image = F.interpolate(image[None], size=(canvas, canvas), mode="bicubic", align_corners=False,
                                  antialias=True)[0].clamp(0, 1)
        return image

    def save(self, folder: Path) -> None:
        """input.png, mask.png, background.png, foreground.png (what exists)."""
        save_png(folder / "input.png", self.image)
        if self.mask is not None:
            save_png(folder / "mask.png", self.mask.float())
        save_png(folder / "background.png", self.background)
        if self.foreground is not None:
            save_png(folder / "foreground.png", self.foreground)


def prepare_inputs(target: str | Path | None, parts: list[str], mask: str | Path | None = None,
                   background: str | Path | None = None, max_size: int = 512, square: str = "official",
                   dilation: int = 11, inpaint_radius: int = 3, inpaint_method: str = "auto",
                   resize_obj: bool = True, object_fraction: float = 0.7,
                   mask_model: str | None = "u2net", lama_weights: str | Path | None = None) -> SceneInputs:
    """Load and split a scene photo. Raises ClipassoError for missing files or no mask."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ClipassoError(f"parts={list(parts)}: choose from {', '.join(PARTS)}")
    path = resolve_target(target)
    rgba = open_image_rgba(path, "target")
    original_size = rgba.size
    rgba = masking.square_image(rgba, max_size, mode=square)
    image = masking.photo_tensor(rgba)
    needs_mask = "foreground" in parts or (background is None and mask is not None)
    obj = dilated = None
    if needs_mask:
        obj = masking.object_mask(rgba, mask, original_size=original_size, model=mask_model, mode=square,
                                  max_size=max_size)
        dilated = dilate(obj, dilation)
    if background is not None:
        bg = masking.square_image(open_image(background, "background"), max_size, mode=square)
        back = pil_to_tensor(bg.resize(rgba.size, Image.Resampling.BICUBIC))
        how = "file"
    elif dilated is not None:
        back, how = fill_background(image, dilated, inpaint_method, inpaint_radius, lama_weights)
    else:
        back, how = image.clone(), "none"  # background only, no object: the whole photo
    fore = None
    placement = foreground.Placement()
    if "foreground" in parts:
        fore = foreground.on_white(image, obj)
        if resize_obj and foreground.should_resize_object(obj, object_fraction):
            fore, _, placement = foreground.resize_obj(fore, obj, object_fraction)
    return SceneInputs(image, obj, dilated, back, fore, placement, how)

