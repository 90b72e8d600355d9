"""Intermediate features of a frozen CLIP image tower, as CLIPasso's geometric loss needs them.

The forward pass walks open_clip's own submodules (stem, layer1..4, attnpool; or the
ViT embedding, each residual block, pooling and projection), so the numbers are those of
the real model and gradients reach the input images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import load_clip_model

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESNET_LAYERS = ("stem", "layer1", "layer2", "layer3", "layer4")


def is_vit(model: nn.Module) -> bool:
    """True for open_clip's VisionTransformer tower, False for ModifiedResNet."""
    visual = getattr(model, "visual", model)
    return hasattr(visual, "transformer") and hasattr(visual, "_embeds")


def image_size(model: nn.Module) -> tuple[int, int]:
    size = getattr(getattr(model, "visual", model), "image_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def register_normalization(module: nn.Module, device: torch.device | str = "cpu") -> None:
    """Give ``module`` the CLIP normalisation constants as buffers ``clip_mean`` / ``clip_std`` [1, 3, 1, 1].

    Buffers move with the module, so a training step makes no tensor from Python data (on a GPU a
    blocking copy); non-persistent, so checkpoints are unchanged.
    """
    for name, values in (("clip_mean", CLIP_MEAN), ("clip_std", CLIP_STD)):
        module.register_buffer(name, torch.tensor(values, device=device).view(1, 3, 1, 1), persistent=False)


def normalize(images: Tensor, mean: Tensor | None = None, std: Tensor | None = None) -> Tensor:
    """images: [B, 3, H, W] in [0, 1] -> CLIP-normalised; mean / std [1, 3, 1, 1] (default: built here,
    for one-off use outside a training step)."""
    mean = images.new_tensor(CLIP_MEAN).view(1, 3, 1, 1) if mean is None else mean
    std = images.new_tensor(CLIP_STD).view(1, 3, 1, 1) if std is None else std
    return (images - mean.to(images)) / std.to(images)


def prepare(model: nn.Module, images: Tensor, norm: nn.Module | None = None) -> Tensor:
    """Resize to the tower's input size when needed (positional embeddings fix it), then normalise
    (with ``norm``'s buffers from :func:`register_normalization`, when given)."""
    size = image_size(model)
    if tuple(images.shape[-2:]) != size:
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    dtype = next(model.parameters()).dtype
    if norm is None:
        return normalize(images).to(dtype)
    return normalize(images, norm.clip_mean, norm.clip_std).to(dtype)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def vit_blocks(visual: nn.Module, x: Tensor):
    """Yield each transformer block's output [B, T, D] (batch first) of an embedded ViT input."""
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in visual.transformer.resblocks:
        x = block(x)
        yield x if batch_first else x.transpose(0, 1)


def resnet_features(visual: nn.Module, x: Tensor) -> dict[str, Tensor]:
    x = visual.stem(x)
    feats = {"stem": x}
    for name in RESNET_LAYERS[1:]:
        x = feats[name] = getattr(visual, name)(x)
    feats["fc"] = visual.attnpool(x)
    return feats


def vit_features(visual: nn.Module, x: Tensor) -> dict[str, Tensor]:
    feats = {}
    tokens = visual._embeds(x)
    for i, tokens in enumerate(vit_blocks(visual, tokens)):
        feats[f"block{i}"] = tokens
    pooled, _ = visual._pool(tokens)
    feats["fc"] = pooled @ visual.proj if visual.proj is not None else pooled
    return feats


class ClipFeatures(nn.Module):
    """Frozen CLIP image tower returning the tapped layers and the final embedding.

    forward(images: [B, 3, H, W] in [0, 1]) -> dict:
      ResNet: stem [B, C, H/4, W/4], layer1..layer4 [B, C_l, h_l, w_l], fc [B, E]
      ViT:    block0..block{L-1} [B, T, D] (CLS + patch tokens), fc [B, E]
    """

    def __init__(self, model: str | nn.Module, pretrained: str | None = None, device: str | torch.device = "cpu",
                 key: str = "clip"):
        super().__init__()
        self.model = load_clip_model(model, pretrained, device=device, key=key) if isinstance(model, str) else model
        self.model.requires_grad_(False).eval()
        self.name = model if isinstance(model, str) else type(model).__name__
        self.pretrained = pretrained
        self.is_vit = is_vit(self.model)
        if self.is_vit:
            n = len(self.model.visual.transformer.resblocks)
            self.layer_names = [f"block{i}" for i in range(n)]
        else:
            self.layer_names = list(RESNET_LAYERS)
        self.channels_last = False
        self._features = self._eager_features
        register_normalization(self, model_device(self.model))

    def speed(self, channels_last: bool = False, compile: bool | str = False) -> "ClipFeatures":
        """Speed switches, numerically equivalent to float tolerance.

        channels_last: NHWC memory format for a ResNet tower's weights and input (no effect on a ViT);
        compile: ``torch.compile`` the tower's forward, True for the default backend (inductor) or a
        backend name (e.g. ``aot_eager``); each new input shape or grad mode compiles once.
        """
        self.channels_last = bool(channels_last) and not self.is_vit
        if self.channels_last:
            self.model.visual.to(memory_format=torch.channels_last)
        if compile:
            backend = "inductor" if compile is True else str(compile)
            self._features = torch.compile(self._eager_features, backend=backend, dynamic=False)
        else:
            self._features = self._eager_features
        return self

    def _eager_features(self, x: Tensor) -> dict[str, Tensor]:
        visual = self.model.visual
        return vit_features(visual, x) if self.is_vit else resnet_features(visual, x)

    def train(self, mode: bool = True):
        # The CLIP stays in eval mode (batch-norm statistics, no dropout) whatever the parent does.
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = prepare(self.model, images, self)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return {k: v.float() for k, v in self._features(x).items()}
