"""``StrokeInit``: the configurable initialiser built from ``configs/init/*.yaml``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..choices import INIT_MODES
from ..errors import ClipassoError
from .sampling import random_walk, sample_start_points, sampling_probability, uniform_start_points
from .saliency import saliency_map
from .xdog import xdog_edges

MODES = INIT_MODES


@dataclass
class InitResult:
    """Initial strokes for one seed.

    points: Tensor  # [N, P, 2] float32 pixels, the control points of each stroke (P = 4: one cubic)
    starts: Tensor  # [N, 2] (x, y) pixels, the first control point of each stroke
    saliency: Tensor | None  # [H, W] in [0, 1]; None for mode=random
    probability: Tensor | None  # [H, W], sums to 1; None for mode=random
    """

    points: Tensor
    starts: Tensor
    saliency: Tensor | None = None
    probability: Tensor | None = None


class StrokeInit:
    """Initial strokes: start points sampled from a CLIP saliency map, then a random walk.

    mode: ``saliency_xdog`` (saliency on XDoG edges, the paper's default), ``saliency``
    (saliency alone) or ``random`` (uniform start points; loads no model).
    model / pretrained: the CLIP ViT for the saliency map (``init.model``, ``init.pretrained``:
    a pretrained tag, a local checkpoint path or None for random weights); loaded once, lazily.
    temperature: softmax temperature over the non-zero scores.
    radius: width of the random-walk step window as a fraction of the canvas side. The
        reference code adds ``radius * (U[0, 1) - 0.5)`` in normalised coordinates, so with
        its radius 0.05 each step is uniform in +-0.025 * side (+-5.6 px at 224), not +-0.05.
    xdog_normalized_input: run XDoG on the CLIP-normalised image (as the paper's code does).
    """

    def __init__(
        self,
        mode: str = "saliency_xdog",
        model: str = "ViT-B-32-quickgelu",
        pretrained: str | None = "openai",
        temperature: float = 0.3,
        radius: float = 0.05,
        xdog_normalized_input: bool = True,
    ):
        if mode not in MODES:
            raise ClipassoError(f"unknown init.mode '{mode}': use one of {', '.join(MODES)}")
        if temperature <= 0:
            raise ClipassoError(f"init.temperature must be > 0, got {temperature}")
        if radius < 0:
            raise ClipassoError(f"init.radius must be >= 0, got {radius}")
        self.mode = mode
        self.model_name = model
        self.pretrained = pretrained
        self.temperature = float(temperature)
        self.radius = float(radius)
        self.xdog_normalized_input = bool(xdog_normalized_input)
        self._model = None
        # bool [H, W] object mask (``mask_object_attention``): start points only on the object.
        self.attention_mask: Tensor | None = None
        # (target, saliency, probability) of the last target: the maps do not depend on the
        # seed, so S seeds of one image compute XDoG and the ViT forward once, not S times.
        self._maps: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def model(self):
        """The saliency CLIP, loaded on first use (never for mode=random)."""
        if self._model is None:
            from ..clip import load_clip_model

            self._model = load_clip_model(self.model_name, self.pretrained, key="init")
        return self._model

    def saliency(self, target: Tensor) -> Tensor:
        """target: [3, H, W] in [0, 1] -> [H, W] in [0, 1]."""
        return saliency_map(target, self.model)

    def maps(self, target: Tensor) -> tuple[Tensor, Tensor]:
        """target: [3, H, W] in [0, 1] -> (saliency [H, W] in [0, 1], probability [H, W] summing to 1).

        Cached for the last target (compared by value), so repeated seeds reuse them.
        """
        if self._maps is not None:
            cached, saliency, probability = self._maps
            if cached.shape == target.shape and torch.equal(cached, target.detach().cpu()):
                return saliency, probability
        saliency = self.saliency(target)
        edges = xdog_edges(target, normalized_input=self.xdog_normalized_input) if self.mode == "saliency_xdog" else None
        score = saliency if self.attention_mask is None else saliency * self.attention_mask.to(saliency)
        probability = sampling_probability(score, edges, self.temperature)
        self._maps = (target.detach().cpu().clone(), saliency, probability)
        return saliency, probability

    def __call__(self, target: Tensor, num_strokes: int, generator: torch.Generator, num_points: int = 4) -> InitResult:
        """target: Tensor  # [3, H, W] in [0, 1] -> InitResult with N = num_strokes strokes of ``num_points`` points.

        Draw order from ``generator``: start points, then the random-walk offsets. A stroke of
        K segments of c points has num_points = K (c - 1) + 1: the official code continues the
        same walk through every segment (each segment starts where the last one ended).
        """
        H, W = target.shape[-2:]
        saliency = probability = None
        if self.mode == "random":
            starts = uniform_start_points(num_strokes, H, W, generator)
        else:
            saliency, probability = self.maps(target)
            starts = sample_start_points(probability, num_strokes, generator)
        # Half the window per side: the reference's step is radius * (U - 0.5) (see class doc).
        points = random_walk(starts, 0.5 * self.radius * max(H, W), generator, num_points=num_points)
        return InitResult(
            points=points.float(),
            starts=starts.float(),
            saliency=None if saliency is None else saliency.clone(),
            probability=None if probability is None else probability.clone(),
        )

    def __repr__(self) -> str:
        return (
            f"StrokeInit(mode={self.mode!r}, model={self.model_name!r}, pretrained={self.pretrained!r}, "
            f"temperature={self.temperature}, radius={self.radius})"
        )


def seed_inits(init, target: Tensor, generators: list[torch.Generator], total: int, num_points: int) -> list:
    """Each seed's InitResult of ``total`` strokes of ``num_points`` points, drawn by ``init`` (a
    StrokeInit) from target [3, H, W] with that seed's generator: all stages' starts in one draw
    without replacement, as the official code samples them."""
    extra = {} if num_points == 4 else {"num_points": num_points}
    return [init(target, total, g, **extra) for g in generators]
