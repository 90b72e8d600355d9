"""CLIP ViT relevancy map: how much the class token attends to each image patch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ClipassoError


def cls_attention_grid(attention: Tensor) -> Tensor:
    """CLS-to-patch attention averaged over blocks and heads, on the patch grid.

    attention: Tensor  # [B, L, heads, T, T] softmax attention, token 0 = CLS, T = 1 + g*g
    returns: Tensor  # [B, g, g]
    """
    cls_to_patch = attention[:, :, :, 0, 1:].mean(dim=(1, 2))  # [B, T - 1]
    g = math.isqrt(cls_to_patch.shape[-1])
    if g * g != cls_to_patch.shape[-1]:
        raise ValueError(f"{cls_to_patch.shape[-1]} patch tokens do not form a square grid")
    return cls_to_patch.reshape(-1, g, g)


def minmax(x: Tensor) -> Tensor:
    """[..., H, W] -> same shape rescaled to [0, 1] per map; a constant map becomes all ones."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(x))


@torch.no_grad()
def saliency_map(image: Tensor, model, model_key: str = "init.model") -> Tensor:
    """Relevancy of each pixel for a CLIP ViT.

    image: Tensor  # [3, H, W] RGB in [0, 1]
    model: an open_clip CLIP with a ViT visual tower (e.g. ViT-B-32-quickgelu)
    returns: Tensor  # [H, W] float32 in [0, 1] (min 0, max 1)

    The image is resized (bicubic) to the model's input size, attention is read from
    every block, the CLS row over the patches is averaged over heads and blocks
    (7x7 for ViT-B/32 at 224), upsampled bicubically to [H, W] and min-max normalised.
    """
    from ..clip import vit_attention
    from ..clip.features import image_size, is_vit

    if not is_vit(model):
        raise ClipassoError(
            f"{model_key} must be a ViT CLIP model (e.g. ViT-B-32-quickgelu) for saliency initialisation; "
            "set it to a ViT or use init=random"
        )
    H, W = image.shape[-2:]
    size = image_size(model)
    x = image[None].float()
    if (H, W) != size:
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(device=param.device)
    grid = cls_attention_grid(vit_attention(model, x).float())  # [1, g, g]
    up = F.interpolate(grid[:, None], size=(H, W), mode="bicubic", align_corners=False)[0, 0]
    return minmax(up).cpu()
