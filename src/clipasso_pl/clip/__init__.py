"""Frozen CLIP models for CLIPasso: loading, tapped features, ViT attention, joint augmentation."""

from .attention import vit_attention
from .augment import JointAugment
from .features import CLIP_MEAN, CLIP_STD, ClipFeatures, is_vit
from .models import TINY_RN, TINY_VIT, load_clip_model, register_tiny_models

register_tiny_models()

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "TINY_RN",
    "TINY_VIT",
    "ClipFeatures",
    "JointAugment",
    "is_vit",
    "load_clip_model",
    "register_tiny_models",
    "vit_attention",
]
