"""CLIPascene's losses: the per-block CLIP terms, sparsity, ratio, and their gradnorm weighting.

Every function returns per-seed values [S]; seeds never mix.

The official objective of a simplicity level (per seed, per step):

    total = sum_i c_i * w_i * L_i  +  (S - r_k * sum_j L_j)^2

where L_i runs over the unweighted CLIP block terms (block l; objects also block 4) and the
sparsity S, c_i is the fixed coefficient (1 for block l, 0.5 for the object's block 4, 1 for
S), w_i the gradnorm weight of that step (:func:`gradnorm_weights`, measured on the width
MLP), and the ratio term ties S to r_k times the *unweighted* CLIP sum. Fidelity rows of
objects use the same weighting of their two blocks, measured on the location MLP.
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
    """The geometric CLIP terms of one fidelity row on ViT block outputs, no semantic term.

    The distance per block is the core loss's :func:`clipasso_pl.losses.layer_distance` of
    ``conv_loss_type`` (``clip.conv_loss_type``: L2, L1 or Cos, as the official
    ``--clip_conv_loss_type``; default L2).

    Background: block l with coefficient ``layer_weight``. Objects: block l and block a
    (``anchor_layer``) with coefficient ``anchor_weight``; when l == a only block l counts.

    forward(sketch_feats, target_feats, num_seeds) -> {``conv/block<i>``: [S]} unweighted;
    ``coefficients`` maps the same keys to their fixed weights.
    """

    def __init__(self, layer_names: list[str], layer: int, anchor_layer: int | None = None,
                 anchor_weight: float = 0.5, layer_weight: float = 1.0, conv_loss_type: str = "L2"):
        super().__init__()
        if not all(n.startswith("block") for n in layer_names):
            raise ClipassoError("the scene method taps ViT transformer blocks: use a ViT CLIP (clip=vit_b32), "
                                f"not a ResNet (layers {', '.join(layer_names)})")
        self.layer_key = block_name(layer, layer_names)
        self.anchor_key = None if anchor_layer is None or anchor_layer == layer else block_name(anchor_layer, layer_names)
        self.coefficients = {f"conv/{self.layer_key}": float(layer_weight)}
        if self.anchor_key is not None:
            self.coefficients[f"conv/{self.anchor_key}"] = float(anchor_weight)
        weights = [0.0] * len(layer_names)
        for key in self.coefficients:
            weights[layer_names.index(key.split("/", 1)[1])] = 1.0
        # Unweighted per-block terms come from the core loss; weighting is the module's.
        self.terms = ClipassoLoss(weights, fc_weight=0.0, layer_names=layer_names, conv_loss_type=conv_loss_type)

    @property
    def balanced(self) -> bool:
        """True when two blocks are combined (objects), which the official code gradnorm-weights."""
        return self.anchor_key is not None

    def forward(self, sketch_feats: dict[str, Tensor], target_feats: dict[str, Tensor],
                num_seeds: int) -> dict[str, Tensor]:
        terms = self.terms(sketch_feats, target_feats, num_seeds)
        return {key: terms[key] for key in self.coefficients}


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
    """(sparsity - r_k * clip)^2 per seed, clip = the unweighted sum of the CLIP block terms."""
    return (sparsity - ratio * clip) ** 2


def mean_abs_grad(value: Tensor, params: list[list[Tensor]]) -> Tensor:
    """Per seed s: mean |d value / d p| over the parameters ``params[s]`` that receive a gradient.

    value: a scalar whose seed-s part depends only on params[s] (e.g. a per-seed loss summed
    over seeds); params: S lists of tensors -> [S]. The graph is kept for later backward passes.
    """
    flat = [p for group in params for p in group]
    grads = torch.autograd.grad(value, flat, retain_graph=True, allow_unused=True)
    out, k = [], 0
    for group in params:
        total = value.new_zeros(())
        count = 0
        for g, p in zip(grads[k:k + len(group)], group):
            if g is not None:
                total = total + g.detach().abs().sum()
                count += p.numel()
        k += len(group)
        out.append(total / max(count, 1))
    return torch.stack(out)


def gradnorm_weights(losses: dict[str, Tensor], params: list[list[Tensor]]) -> dict[str, Tensor]:
    """The official per-step loss balance: w_i = (G - g_i) / ((n - 1) G), per seed.

    losses: name -> [S] per-seed loss; params: the S parameter lists the gradients are
    measured on (the width MLP in simplicity levels, the location MLP in object fidelity
    rows). g_i is the mean |gradient| of loss i over those parameters, G = sum_i g_i.
    A loss that pulls harder gets the smaller weight; with n == 1 (or all g_i == 0) the
    weights are 1 / n. Returns name -> [S] weights (detached).
    """
    names = list(losses)
    n = len(names)
    S = len(params)
    if n == 1:
        return {names[0]: torch.ones(S, device=losses[names[0]].device)}
    g = torch.stack([mean_abs_grad(losses[name].sum(), params) for name in names])  # [n, S]
    G = g.sum(0)
    w = torch.where(G > 0, (G - g) / ((n - 1) * G.clamp_min(1e-30)), torch.full_like(g, 1.0 / n))
    return {name: w[i].detach() for i, name in enumerate(names)}


def combine_terms(raw: dict[str, Tensor], coefficients: dict[str, float], clip_keys, weights: dict[str, Tensor] | None,
                  ratio: float | None) -> dict[str, Tensor]:
    """Raw terms (each [S]) -> every logged term and the total ``loss`` = sum c_i w_i L_i (+ ratio).

    coefficients: c_i per balanced term; clip_keys: the CLIP block terms summed as ``clip``;
    weights: the gradnorm weights w_i (each [S]) or None (all 1); ratio: the simplicity level's
    target ratio (adds ``ratio`` = :func:`ratio_loss` of ``sparsity`` and ``clip``), None in fidelity.
    """
    terms = dict(raw)
    clip = sum(raw[k] for k in clip_keys)
    terms["clip"] = clip
    total = 0.0
    for key, c in coefficients.items():
        w = weights[key] if weights is not None else 1.0
        total = total + c * w * raw[key]
        if weights is not None:
            terms[f"weight/{key}"] = weights[key].expand_as(raw[key])
    if ratio is not None:
        terms["ratio"] = ratio_loss(raw["sparsity"], clip, ratio)
        total = total + terms["ratio"]
    terms["loss"] = total
    return terms
