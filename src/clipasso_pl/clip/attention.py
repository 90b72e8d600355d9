"""Attention probabilities of every block of an open_clip ViT.

open_clip's blocks call ``nn.MultiheadAttention`` with ``need_weights=False``, so the
probabilities are never materialised. A forward hook on each block's ``ln_1`` keeps the
normalised tokens that enter the attention, and the softmax(QK^T / sqrt(d)) is recomputed
from them with the block's own in-projection weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ClipassoError
from .features import is_vit, prepare


def attention_probs(attn: nn.MultiheadAttention, x: Tensor) -> Tensor:
    """x: [B, T, D] attention input (after ln_1) -> probabilities [B, heads, T, T]."""
    B, T, D = x.shape
    heads = attn.num_heads
    w_q, w_k, _ = attn.in_proj_weight.chunk(3, dim=0)
    b_q, b_k = (attn.in_proj_bias.chunk(3)[:2] if attn.in_proj_bias is not None else (None, None))
    q = nn.functional.linear(x, w_q, b_q).view(B, T, heads, D // heads).transpose(1, 2)
    k = nn.functional.linear(x, w_k, b_k).view(B, T, heads, D // heads).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), dim=-1)


def vit_attention(model: nn.Module, images: Tensor) -> Tensor:
    """Attention probabilities of each block.

    model: open_clip CLIP with a ViT visual tower
    images: Tensor  # [B, 3, H, W] in [0, 1]
    returns: Tensor  # [B, L, heads, T, T], T = 1 + number of patches (CLS first)
    """
    if not is_vit(model):
        raise ClipassoError("vit_attention needs a ViT CLIP model (e.g. ViT-B-32-quickgelu), not a ResNet")
    visual = model.visual
    blocks = list(visual.transformer.resblocks)
    if not all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in blocks):
        raise ClipassoError("vit_attention supports open_clip's standard ViT blocks (nn.MultiheadAttention) only")
    batch_first = getattr(visual.transformer, "batch_first", True)
    inputs: list[Tensor] = []

    def keep(_module, _args, output):
        inputs.append(output if batch_first else output.transpose(0, 1))

    handles = [b.ln_1.register_forward_hook(keep) for b in blocks]
    try:
        visual(prepare(model, images))
    finally:
        for h in handles:
            h.remove()
    probs = [attention_probs(b.attn, x) for b, x in zip(blocks, inputs)]
    return torch.stack(probs, dim=1).float()
