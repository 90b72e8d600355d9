"""The zero-shot CLIP classifier of the evaluation: image and class-prompt embeddings.

It is an open_clip model loaded by the same code path as the sketching CLIP
(``clip.load_clip_model``: a pretrained tag, a local checkpoint, or random weights);
images get the CLIP normalisation of ``clip.features`` at the model's input size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ClipassoError


def prompts(class_names: list[str], templates: list[str]) -> list[list[str]]:
    """One list of prompts per class: every template filled with the class name. [C][T]"""
    if not templates:
        raise ClipassoError("eval.templates is empty: give at least one prompt template, e.g. ['a sketch of a {}.']")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ClipassoError(f"eval.templates entry {bad[0]!r} has no '{{}}' for the class name: write e.g. 'a sketch of a {{}}.'")
    return [[t.format(name) for t in templates] for name in class_names]


class ZeroShotClassifier:
    """model/pretrained: open_clip names (``ViT-B-32`` / ``openai``, a checkpoint path, or None);
    templates: prompt templates with ``{}``; ensemble: average the normalised text embeddings over
    all templates (CLIP's prompt ensembling), else use the first template only."""

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = "openai", templates: list[str] | None = None,
                 ensemble: bool = True, device: str | torch.device = "cpu", batch_size: int = 32):
        from ..clip import load_clip_model

        self.model_name = model
        self.pretrained = pretrained
        self.templates = list(templates or ["a sketch of a {}."])
        self.ensemble = bool(ensemble)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.model = load_clip_model(model, pretrained, device=self.device, key="eval")
        size = getattr(self.model.visual, "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """images: [B, 3, H, W] in [0, 1] -> [B, D] unit-norm embeddings."""
        from ..clip import CLIP_MEAN, CLIP_STD

        out = []
        mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        for batch in images.split(self.batch_size):
            x = batch.to(self.device, torch.float32)
            if tuple(x.shape[-2:]) != self.image_size:
                x = torch.nn.functional.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False).clamp(0, 1)
            emb = self.model.encode_image((x - mean) / std)
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    @torch.no_grad()
    def encode_classes(self, class_names: list[str]) -> Tensor:
        """[C, D] unit-norm class embeddings from the prompt templates."""
        import open_clip

        templates = self.templates if self.ensemble else self.templates[:1]
        tokenizer = open_clip.get_tokenizer(self.model_name)
        rows = []
        for texts in prompts(class_names, templates):
            emb = self.model.encode_text(tokenizer(texts).to(self.device)).float()
            emb = torch.nn.functional.normalize(emb, dim=-1).mean(0)
            rows.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        return torch.stack(rows)
