"""CLIP text guidance: how far a sketch's image embedding is from a text prompt's.

The official ``--text_target`` / ``--clip_text_guide`` term: a separate CLIP
(ViT-B/32 there) embeds the prompt once; each training step embeds the augmented
sketch views and sums ``1 - cos(e(view), e(text))`` over a seed's views; the eval
term is ``1 - cos`` of the plain sketch; :func:`with_text_term` adds it, weighted, to a loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import model_device, prepare, register_normalization
from .models import load_clip_model


class ClipTextGuide(nn.Module):
    """forward(images [B, 3, H, W] in [0, 1]) -> [B] values of 1 - cos(image embedding, text embedding).

    model / pretrained: any open_clip pair with a text tower (a local checkpoint path, or
    None for random weights); text: the prompt, e.g. ``"a cat"``.
    """

    def __init__(self, model: str, pretrained: str | None, text: str, key: str = "text_clip"):
        super().__init__()
        import open_clip

        self.model = load_clip_model(model, pretrained, key=key).requires_grad_(False).eval()
        self.text = str(text)
        tokens = open_clip.get_tokenizer(model)([self.text])
        with torch.no_grad():
            self.register_buffer("text_embedding", self.model.encode_text(tokens).float())  # [1, E]
        register_normalization(self, model_device(self.model))

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: batch-norm statistics and dropout stay in eval mode
        return self

    def forward(self, images: Tensor) -> Tensor:
        embedding = self.model.encode_image(prepare(self.model, images, self)).float()  # [B, E]
        return 1.0 - F.cosine_similarity(embedding, self.text_embedding.to(embedding), dim=1)

    def extra_repr(self) -> str:
        return f"text={self.text!r}"



def with_text_term(terms: dict[str, Tensor], guide: ClipTextGuide, sketch_views: Tensor, num_seeds: int,
                   num_augs: int, weight: float) -> dict[str, Tensor]:
    """``terms`` (each [S]) with the text term ``text`` [S] and ``weight`` x it added to ``loss``.

    sketch_views: [S * V, 3, h, w], seed-major rows, 1 plain + ``num_augs`` augmented views per
    seed. As in the official code, training sums 1 - cos over the augmented views only (the plain
    view when there are none); eval (one row per seed) takes the plain sketch.
    """
    views = sketch_views.view(num_seeds, -1, *sketch_views.shape[1:])
    if num_augs > 0 and views.shape[1] > 1:
        views = views[:, 1:]
    text = guide(views.flatten(0, 1)).view(num_seeds, -1).sum(dim=1)
    return {**terms, "text": text, "loss": terms["loss"] + weight * text}
