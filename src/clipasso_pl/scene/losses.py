"""CLIPascene's losses: the fidelity CLIP loss on ViT blocks, sparsity and ratio.

Every function returns per-seed values [S]; seeds never mix.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ClipassoError
from ..losses import ClipassoLoss


def block_name(layer: int, layer_names: list[str]) -> str:
    name = f"block{layer}"
    if name not in layer_names:
        raise ClipassoError(f"layer {layer} does not exist: the CLIP model has {len(layer_names)} transformer blocks "
                            f"(0..{len(layer_names) - 1}); choose layers within that range")
    return name


class SceneClipLoss(nn.Module):
    """The geometric CLIP loss of one fidelity level: L2 on ViT block outputs, no semantic term.

    Background: ``layer_weight`` * L2(block l). Objects: ``anchor_weight`` * L2(block a) +
    ``layer_weight`` * b * L2(block l) where b (``balance``, set by the module from gradient
    norms, GradNorm-style) makes the two terms pull with equal strength; when l == a only
    block l counts.

    forward(sketch_feats, target_feats, num_seeds, balance) -> dict of [S] tensors:
    ``conv/block<i>`` (unweighted) for each used block and ``clip`` (the weighted total).
    """

    def __init__(self, layer_names: list[str], layer: int, anchor_layer: int | None = None,
                 anchor_weight: float = 0.5, layer_weight: float = 1.0):
        super().__init__()
        if not all(n.startswith("block") for n in layer_names):
            raise ClipassoError("the scene method taps ViT transformer blocks: use a ViT CLIP (clip=vit_b32), "
                                f"not a ResNet (layers {', '.join(layer_names)})")
        self.layer_key = block_name(layer, layer_names)
        self.anchor_key = None if anchor_layer is None or anchor_layer == layer else block_name(anchor_layer, layer_names)
        self.anchor_weight = float(anchor_weight)
        self.layer_weight = float(layer_weight)
        weights = [0.0] * len(layer_names)
        weights[layer_names.index(self.layer_key)] = 1.0
        if self.anchor_key is not None:
            weights[layer_names.index(self.anchor_key)] = 1.0
        # Unweighted per-layer terms come from the core loss; the weighting and balance are ours.
        self.terms = ClipassoLoss(weights, fc_weight=0.0, layer_names=layer_names)

    @property
    def balanced(self) -> bool:
        """True when two blocks are combined and a balance factor applies."""
        return self.anchor_key is not None

    def forward(self, sketch_feats: dict[str, Tensor], target_feats: dict[str, Tensor], num_seeds: int,
                balance: Tensor | float = 1.0) -> dict[str, Tensor]:
        terms = self.terms(sketch_feats, target_feats, num_seeds)
        terms.pop("loss")
        layer = terms[f"conv/{self.layer_key}"]
        if self.anchor_key is None:
            terms["clip"] = self.layer_weight * layer
        else:
            terms["clip"] = self.anchor_weight * terms[f"conv/{self.anchor_key}"] + self.layer_weight * balance * layer
        return terms


def inside_canvas(points: Tensor, height: int, width: int) -> Tensor:
    """[S, N] bool: a stroke counts as on the canvas when any of its control points is."""
    x, y = points[..., 0], points[..., 1]
    return ((x >= 0) & (x <= width) & (y >= 0) & (y <= height)).any(dim=-1)


def sparsity_loss(keep: Tensor, inside: Tensor) -> Tensor:
    """Sum of the keep-probabilities (widths / max width) of on-canvas strokes over their number.

    keep: [S, N] in [0, 1]; inside: [S, N] bool -> [S] in [0, 1].
    """
    inside = inside.to(keep.dtype)
    return (keep * inside).sum(-1) / inside.sum(-1).clamp_min(1.0)


def ratio_loss(sparsity: Tensor, clip: Tensor, ratio: float) -> Tensor:
    """(sparsity - r_k * clip)^2 per seed: ties how many strokes survive to how much fidelity is lost."""
    return (sparsity - ratio * clip) ** 2


def grad_norm(value: Tensor, params: list[Tensor]) -> Tensor:
    """The L2 norm of d value / d params (graph kept for the real backward)."""
    grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
    return torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), value.new_zeros(())))
