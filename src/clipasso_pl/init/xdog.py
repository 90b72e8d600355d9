"""XDoG edge detection (eXtended Difference of Gaussians), binarised with Otsu.

Pure function of an image tensor; scikit-image does the filtering so the
numbers match the scikit-image based pipeline of the paper.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.color import rgb2gray
from skimage.filters import gaussian, threshold_otsu
from torch import Tensor

from ..clip.features import CLIP_MEAN, CLIP_STD


def xdog_edges(
    image: Tensor,
    gamma: float = 0.98,
    phi: float = 200.0,
    eps: float = -0.1,
    sigma: float = 0.8,
    k: float = 10.0,
    normalized_input: bool = True,
) -> Tensor:
    """Binary XDoG edge mask.

    image: Tensor  # [3, H, W] RGB in [0, 1]
    returns: Tensor  # [H, W] float32, **1.0 on an edge (a dark XDoG line), 0.0 elsewhere**

    Steps: grayscale (scikit-image luminance weights) -> D = G_sigma - gamma * G_{k*sigma}
    -> soft threshold T = 1 where D < eps, else 1 + tanh(phi * D) -> min-max to [0, 1]
    -> Otsu threshold. XDoG draws "ink" where T is low, i.e. where D lies in [eps, 0)
    (just darker than the wide blur: the dark side of an intensity step). Those pixels
    are below the Otsu threshold and are returned as 1. The paper's code keeps the XDoG
    *image* (1 = white paper, 0 = line) and multiplies saliency by ``1 - image``; this
    mask is exactly that ``1 - image``, so ``saliency * edges`` keeps saliency on lines.

    normalized_input: run XDoG on the CLIP-normalised image (the paper's code does
    this, default) instead of [0, 1] pixels. Note that with normalised input a flat
    region darker than CLIP's mean has D = (1 - gamma) * I slightly negative, which can
    land in [eps, 0) and be marked as "edge" too: this is the reference behaviour.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    arr = image.detach().to(torch.float64).cpu().numpy().transpose(1, 2, 0)  # [H, W, 3]
    if normalized_input:
        arr = (arr - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    gray = rgb2gray(arr)  # [H, W]; a weighted channel sum, fine for negative values
    fine = gaussian(gray, sigma=sigma, mode="reflect")  # reflect: same borders as scipy.ndimage
    wide = gaussian(gray, sigma=sigma * k, mode="reflect")
    diff = fine - gamma * wide
    soft = np.where(diff < eps, 1.0, 1.0 + np.tanh(phi * diff))
    soft = soft - soft.min()
    top = soft.max()
    if top <= 0:  # a perfectly flat response has no lines
        return torch.zeros(gray.shape, dtype=torch.float32)
    soft = soft / top
    try:
        threshold = threshold_otsu(soft)
    except ValueError:  # single-valued input
        return torch.zeros(gray.shape, dtype=torch.float32)
    return torch.from_numpy((soft < threshold).astype(np.float32))
