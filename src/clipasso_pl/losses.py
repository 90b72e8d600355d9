"""CLIPasso's loss over tapped CLIP features, kept per seed.

geometric = sum_l w_l * mean((f_l(sketch) - f_l(target))^2)   over the weighted layers
            (``conv_loss_type``: ``L2`` as above, ``L1`` mean |difference|, ``Cos`` mean of
            1 - cos along dim 1, the official ``l1_layers`` / ``cos_layers``)
semantic  = fc_weight * (1 - cos(e(sketch), e(target)))          on the final embeddings
Each term is averaged over the views of one seed, so seeds never mix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .choices import CONV_LOSS_TYPES

DEFAULT_LAYERS = ("stem", "layer1", "layer2", "layer3", "layer4")


def layer_distance(fs: Tensor, ft: Tensor, kind: str = "L2") -> Tensor:
    """Per-row distance of two feature maps [B, ...] -> [B].

    L2: mean squared difference; L1: mean absolute difference; Cos: mean over the
    remaining positions of 1 - cosine similarity along dim 1. Dim 1 is what the official
    ``cos_layers`` uses: the channels of a ResNet map [B, C, h, w], the tokens of a ViT
    block [B, T, D] (the official RN branch of ``Cos`` cannot run; this is its evident intent).
    """
    if kind == "L2":
        return (fs - ft).pow(2).flatten(1).mean(dim=1)
    if kind == "L1":
        return (fs - ft).abs().flatten(1).mean(dim=1)
    if kind == "Cos":
        return (1.0 - F.cosine_similarity(fs, ft, dim=1)).flatten(1).mean(dim=1)
    raise ValueError(f"conv_loss_type={kind!r}: use one of {', '.join(CONV_LOSS_TYPES)}")


def per_seed_mean(per_view: Tensor, num_seeds: int) -> Tensor:
    """per_view: [S * V] values, seed-major (V views per seed) -> [S] unweighted mean over each seed's views."""
    if per_view.ndim != 1 or num_seeds <= 0 or per_view.shape[0] % num_seeds:
        raise ValueError(f"per_seed_mean: {tuple(per_view.shape)} values do not split into num_seeds={num_seeds} equal groups")
    return per_view.view(num_seeds, -1).mean(dim=1)


def _match_target(target: Tensor, batch: int, num_seeds: int) -> Tensor:
    """Target rows for each sketch row: the same batch, one row per seed (shared by its views), or one row."""
    n = target.shape[0]
    if n == batch:
        return target
    if n == num_seeds:
        return target.repeat_interleave(batch // num_seeds, dim=0)
    if n == 1:
        return target.expand(batch, *target.shape[1:])
    raise ValueError(f"target features have batch {n}; expected {batch}, {num_seeds} (one per seed) or 1")


class ClipassoLoss(nn.Module):
    """forward(sketch_feats, target_feats, num_seeds) -> dict of per-seed tensors [S].

    Keys: ``conv/<layer>`` for each layer with a nonzero weight (unweighted
    :func:`layer_distance` of ``conv_loss_type``), ``fc`` (unweighted 1 - cos, when fc_weight != 0) and ``loss`` (weighted total).
    sketch_feats rows are seed-major: S * V rows, V views per seed.
    """

    def __init__(self, conv_layer_weights: Sequence[float] = (0.0, 0.0, 1.0, 1.0, 0.0), fc_weight: float = 0.1, layer_names: Sequence[str] | None = None,
                 conv_loss_type: str = "L2"):
        super().__init__()
        if conv_loss_type not in CONV_LOSS_TYPES:
            from .errors import ClipassoError

            raise ClipassoError(f"clip.conv_loss_type={conv_loss_type}: use one of {', '.join(CONV_LOSS_TYPES)}")
        self.conv_loss_type = conv_loss_type
        names = list(layer_names) if layer_names is not None else list(DEFAULT_LAYERS)
        weights = [float(w) for w in conv_layer_weights]
        if len(weights) != len(names):
            raise ValueError(
                f"conv_layer_weights has {len(weights)} entries but the CLIP model has {len(names)} layers "
                f"({', '.join(names)}): give one weight per layer"
            )
        self.layer_names = names
        self.conv_layer_weights = weights
        self.fc_weight = float(fc_weight)
        self.active = {n: w for n, w in zip(names, weights) if w != 0.0}

    def extra_repr(self) -> str:
        return f"conv={self.active}, conv_loss_type={self.conv_loss_type}, fc_weight={self.fc_weight}"

    def forward(self, sketch_feats: dict[str, Tensor], target_feats: dict[str, Tensor], num_seeds: int) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        total = None
        for name in list(self.active) + (["fc"] if self.fc_weight != 0.0 else []):
            if name not in sketch_feats or name not in target_feats:
                raise ValueError(f"ClipassoLoss needs feature {name!r} but got {', '.join(sketch_feats)}: "
                                 "conv_layer_weights must follow the feature extractor's layer_names")
            fs = sketch_feats[name]
            B = fs.shape[0]
            if B % num_seeds:
                raise ValueError(f"sketch features have batch {B}, not a multiple of num_seeds={num_seeds}")
            ft = _match_target(target_feats[name].detach(), B, num_seeds)
            if name == "fc":
                per_view = 1.0 - F.cosine_similarity(fs.flatten(1), ft.flatten(1), dim=1)
                weight = self.fc_weight
                key = "fc"
            else:
                per_view = layer_distance(fs, ft, self.conv_loss_type)
                weight = self.active[name]
                key = f"conv/{name}"
            per_seed = per_seed_mean(per_view, num_seeds)
            terms[key] = per_seed
            total = weight * per_seed if total is None else total + weight * per_seed
        if total is None:
            any_feat = next(iter(sketch_feats.values()))
            total = any_feat.new_zeros(num_seeds)
        terms["loss"] = total
        return terms
