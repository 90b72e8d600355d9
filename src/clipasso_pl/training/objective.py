"""The CLIPasso objective of a batch of sketches: joint augmentation, the frozen CLIP towers, the loss.

Pure functions of their arguments (``SketchModule`` passes its CLIP, loss and augmentation);
everything outside the CLIP forward runs in float32 even under a mixed-precision trainer (the
augmentation's resampling and the loss), as :meth:`SketchingModule.full_precision` does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def full_precision(device: torch.device):
    """A float32 region on ``device`` (autocast off)."""
    return torch.autocast(device.type, enabled=False)


def augmented_terms(clip: nn.Module, loss_fn: nn.Module, augment: nn.Module, sketches: Tensor, target: Tensor,
                    views: Tensor | None, num_seeds: int) -> tuple[dict[str, Tensor], Tensor]:
    """(per-seed terms [S], the sketch views [S * V, 3, h, w]) of sketches [S, 3, H, W] against target
    [1, 3, H, W] under the drawn ``views`` (``JointAugment.device_params``: [S * A, 12] or None).

    The target's towers run without gradient; the sketch's carry it back to the sketches."""
    with full_precision(sketches.device):
        sketch_views, target_views = augment.apply(sketches, target, views)
    with torch.no_grad():
        target_feats = clip(target_views)
    sketch_feats = clip(sketch_views)
    with full_precision(sketches.device):
        terms = loss_fn(sketch_feats, target_feats, num_seeds)
    return terms, sketch_views


def plain_terms(clip: nn.Module, loss_fn: nn.Module, sketches: Tensor, target_feats: dict[str, Tensor],
                num_seeds: int) -> dict[str, Tensor]:
    """Per-seed terms [S] of the plain sketches [S, 3, H, W] (no augmentation) against the target's
    features ``target_feats`` (each [S, ...], the eval's)."""
    sketch_feats = clip(sketches)
    with full_precision(sketches.device):
        return loss_fn(sketch_feats, target_feats, num_seeds)
