"""CLIPasso's joint augmentation of (sketch, target) pairs, batched into one grid_sample.

Each augmented view is RandomPerspective(distortion_scale, p=1, fill=0) followed by
RandomResizedCrop(size, scale=(crop_scale, crop_scale), ratio=(1, 1)), with parameters drawn
exactly as torchvision draws them, but from the seed's own generator, and applied
identically to the sketch and the target. Instead of warping then cropping (two
interpolations, one Python call per image), every output pixel is mapped through
crop -> homography -> source pixel and all views are sampled at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..accel import host_side, host_to_device
from ..choices import AUGMENTATIONS


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    return int(torch.randint(low, high, (1,), generator=generator).item())


def perspective_params(width: int, height: int, distortion_scale: float, generator: torch.Generator):
    """torchvision's RandomPerspective.get_params, drawn from ``generator``: (startpoints, endpoints)."""
    half_h, half_w = height // 2, width // 2
    dw, dh = int(distortion_scale * half_w), int(distortion_scale * half_h)
    topleft = [_randint(0, dw + 1, generator), _randint(0, dh + 1, generator)]
    topright = [_randint(width - dw - 1, width, generator), _randint(0, dh + 1, generator)]
    botright = [_randint(width - dw - 1, width, generator), _randint(height - dh - 1, height, generator)]
    botleft = [_randint(0, dw + 1, generator), _randint(height - dh - 1, height, generator)]
    startpoints = [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]]
    return startpoints, [topleft, topright, botright, botleft]


def resized_crop_params(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                        generator: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawn from ``generator``: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(0, height - h + 1, generator), _randint(0, width - w + 1, generator), h, w
    # Fallback to a central crop, as torchvision does.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def perspective_coeffs(startpoints: Tensor, endpoints: Tensor) -> Tensor:
    """Homographies mapping output (end) points to input (start) points, as torchvision's.

    startpoints, endpoints: [V, 4, 2] -> coefficients [V, 8] (a, b, c, d, e, f, g, h), float64.
    """
    V = startpoints.shape[0]
    s, e = startpoints.double(), endpoints.double()
    A = torch.zeros(V, 8, 8, dtype=torch.float64)
    ex, ey, sx, sy = e[..., 0], e[..., 1], s[..., 0], s[..., 1]
    A[:, 0::2, 0], A[:, 0::2, 1], A[:, 0::2, 2] = ex, ey, 1.0
    A[:, 0::2, 6], A[:, 0::2, 7] = -sx * ex, -sx * ey
    A[:, 1::2, 3], A[:, 1::2, 4], A[:, 1::2, 5] = ex, ey, 1.0
    A[:, 1::2, 6], A[:, 1::2, 7] = -sy * ex, -sy * ey
    b = s.reshape(V, 8)
    return torch.linalg.solve(A, b)


def view_grid(coeffs: Tensor, crops: Tensor, size: int, height: int, width: int) -> Tensor:
    """Sampling grid [V, size, size, 2] (grid_sample, align_corners=False) of crop-then-warp views.

    coeffs: [V, 8] homographies (output pixel centre -> input pixel centre convention of torchvision:
            input_index = H(output_index + 0.5) - 0.5); crops: [V, 4] (top, left, h, w) in the warped image.
    Built on the device and in the dtype of ``coeffs``, from these 12 numbers per view alone.
    """
    V = coeffs.shape[0]
    c = coeffs
    top, left, ch, cw = (crops[:, k].view(V, 1, 1) for k in range(4))
    steps = (torch.arange(size, dtype=c.dtype, device=c.device) + 0.5) / size  # output pixel centres in [0, 1]
    # Bilinear resize of the crop (align_corners=False): output u -> pixel-centre coordinate in the warped image.
    x = left + steps.view(1, 1, size) * cw  # [V, 1, size]
    y = top + steps.view(1, size, 1) * ch  # [V, size, 1]
    a, b, cc, d, e, f, g, h = (c[:, k].view(V, 1, 1) for k in range(8))
    den = g * x + h * y + 1.0  # [V, size, size]
    sx = (a * x + b * y + cc) / den  # = input index + 0.5
    sy = (d * x + e * y + f) / den
    return torch.stack([sx * (2.0 / width) - 1.0, sy * (2.0 / height) - 1.0], dim=-1)


class JointAugment(nn.Module):
    """forward(sketch [S, 3, H, W], target [S or 1, 3, H, W], generators: S CPU generators)
    -> (sketch_views, target_views), each [S * (1 + A), 3, size, size].

    Rows are seed-major: row s * (1 + A) is seed s's plain pair (resized to ``size`` if
    needed), then its A augmented pairs. Seed s's draws come only from ``generators[s]``.
    Sketch views are differentiable w.r.t. the sketch; target views are detached.

    augmentations: the official option of that name. ``affine`` (default) draws the views
    as above; ``none`` makes the A views copies of the plain pair, as the official code
    does when ``affine`` is absent (its other, experimental words are not supported).
    """

    def __init__(self, num_augs: int = 4, distortion_scale: float = 0.5, crop_scale: float = 0.8, size: int = 224,
                 augmentations: str = "affine"):
        super().__init__()
        if num_augs < 0:
            raise ValueError(f"num_augs must be >= 0, got {num_augs}")
        if augmentations not in AUGMENTATIONS:
            from ..errors import ClipassoError

            raise ClipassoError(f"augment.augmentations={augmentations}: use one of {', '.join(AUGMENTATIONS)} "
                                "(the official noise/eraserchunks/press variants are not supported)")
        self.augmentations = augmentations
        self.num_augs = int(num_augs)
        self.distortion_scale = float(distortion_scale)
        self.crop_scale = float(crop_scale)
        self.size = int(size)

    def extra_repr(self) -> str:
        return (f"num_augs={self.num_augs}, distortion_scale={self.distortion_scale}, "
                f"crop_scale={self.crop_scale}, size={self.size}, augmentations={self.augmentations}")

    def draw(self, generators: list[torch.Generator], height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per view (seed-major, A per seed): startpoints [V, 4, 2], endpoints [V, 4, 2], crops [V, 4]."""
        starts, ends, crops = [], [], []
        scale = (self.crop_scale, self.crop_scale)
        for gen in generators:
            for _ in range(self.num_augs):
                # RandomPerspective draws its p-test (p=1: always applied) before its corners; drawing it
                # too keeps each seed's stream identical to torchvision's transforms on that seed.
                torch.rand(1, generator=gen)
                s, e = perspective_params(width, height, self.distortion_scale, gen)
                starts.append(s)
                ends.append(e)
                crops.append(resized_crop_params(width, height, scale, (1.0, 1.0), gen))
        as_t = lambda xs, shape: torch.tensor(xs, dtype=torch.float64).view(*shape)  # noqa: E731
        V = len(starts)
        return as_t(starts, (V, 4, 2)), as_t(ends, (V, 4, 2)), as_t(crops, (V, 4))

    def draw_params(self, generators: list[torch.Generator], height: int, width: int) -> Tensor:
        """[V, 12] float64 on the host, seed-major: each view's homography (8) then its crop (4).

        Drawn from the seeds' CPU generators and solved on the host (host work, not a device sync):
        only these numbers cross to the device.
        """
        with host_side():
            starts, ends, crops = self.draw(generators, height, width)
            return torch.cat([perspective_coeffs(starts, ends), crops], dim=1)

    def plain(self, images: Tensor) -> Tensor:
        if tuple(images.shape[-2:]) == (self.size, self.size):
            return images
        return F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)

    def device_params(self, generators: list[torch.Generator], height: int, width: int, device: torch.device,
                      dtype: torch.dtype) -> Tensor | None:
        """This step's draws [V, 12] on ``device`` (one copy, see :meth:`draw_params`), or None when the
        views need none (``num_augs`` = 0 or ``augmentations=none``)."""
        if self.num_augs == 0 or self.augmentations == "none":
            return None
        return host_to_device(self.draw_params(generators, height, width), device, dtype)

    def forward(self, sketch: Tensor, target: Tensor, generators: list[torch.Generator]) -> tuple[Tensor, Tensor]:
        S, C, H, W = sketch.shape
        if len(generators) != S:
            raise ValueError(f"JointAugment: {S} sketches but {len(generators)} generators")
        return self.apply(sketch, target, self.device_params(generators, H, W, sketch.device, sketch.dtype))

    def apply(self, sketch: Tensor, target: Tensor, params: Tensor | None) -> tuple[Tensor, Tensor]:
        """The views of drawn ``params`` [S * A, 12] (:meth:`device_params`): device work only, no draws."""
        S, C, H, W = sketch.shape
        if target.shape[0] not in (1, S):
            raise ValueError(f"JointAugment: target batch {target.shape[0]} must be 1 or {S}")
        target = target.to(sketch.dtype).expand(S, -1, -1, -1)
        A = self.num_augs
        plain_s, plain_t = self.plain(sketch), self.plain(target.detach())
        if A == 0:
            return plain_s, plain_t
        if self.augmentations == "none":
            return plain_s.repeat_interleave(1 + A, dim=0), plain_t.repeat_interleave(1 + A, dim=0)
        grid = view_grid(params[:, :8], params[:, 8:], self.size, H, W).view(S, A * self.size, self.size, 2)
        # One grid_sample for every view of both images: the A grids of a seed stacked along the output
        # rows and the (sketch, target) pair stacked along the channels, so neither the images nor the
        # grids are repeated. Target views never need a gradient (the loss detaches them): detaching
        # here keeps the target out of the sketch's graph.
        src = torch.cat([sketch, target.detach()], dim=1)  # [S, 2C, H, W]
        views = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        views = views.view(S, 2 * C, A, self.size, self.size).transpose(1, 2)  # [S, A, 2C, size, size]

        def interleave(plain: Tensor, aug: Tensor) -> Tensor:
            both = torch.cat([plain[:, None], aug], dim=1)  # [S, 1 + A, C, size, size]
            return both.reshape(S * (1 + A), C, self.size, self.size)

        return interleave(plain_s, views[:, :, :C]), interleave(plain_t, views[:, :, C:].detach())
