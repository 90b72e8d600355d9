"""CLIPascene's two reparametrisations: stroke locations and stroke keep-probabilities by MLPs.

The optimised parameters of a scene sketch are MLP weights, not control points: the
location MLP maps the (fixed) initial control points to the current ones, and the width
MLP maps a fixed input to one keep-probability per stroke. Coordinates given to the
location MLP are normalised by the canvas side (0..1, x right, y down).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..accel import host_to_device


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.SELU(), nn.Linear(hidden, hidden), nn.SELU(),
                         nn.Linear(hidden, outputs))


class LocationMLP(nn.Module):
    """x -> x + offset_scale * MLP(x) on the flattened normalised control points.

    x: [..., N * 8] (N strokes x 4 points x (x, y)); 64 strokes give the paper's 512 inputs.
    Layers: Linear(8N, hidden), SELU, Linear(hidden, hidden), SELU, Linear(hidden, 8N).
    The residual form keeps the first sketch close to its initialisation.
    """

    def __init__(self, num_strokes: int = 64, hidden: int = 1000, offset_scale: float = 0.1):
        super().__init__()
        self.num_strokes = num_strokes
        self.offset_scale = offset_scale
        self.net = _mlp(num_strokes * 8, hidden, num_strokes * 8)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.offset_scale * self.net(x)


class WidthMLP(nn.Module):
    """A fixed input [..., N] -> per-stroke keep probabilities q in (0, 1) [..., N] (before Gumbel-softmax).

    Layers: Linear(N, hidden), SELU, Linear(hidden, hidden), SELU, Linear(hidden, N), sigmoid.
    """

    def __init__(self, num_strokes: int = 64, hidden: int = 1000):
        super().__init__()
        self.num_strokes = num_strokes
        self.net = _mlp(num_strokes, hidden, num_strokes)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net(x))


def _two_class_logits(q: Tensor, eps: float = 1e-6) -> Tensor:
    """[..., N] probabilities -> [..., N, 2] log-probabilities of (keep, drop)."""
    q = q.clamp(eps, 1 - eps)
    return torch.stack([q.log(), (1 - q).log()], dim=-1)


def keep_probabilities(q: Tensor, temperature: float = 0.2, generator: torch.Generator | None = None,
                       noise: bool = True) -> Tensor:
    """Gumbel-softmax relaxation of 'keep stroke i' with probability q_i: p [..., N] in [0, 1].

    With ``noise`` the Gumbel draws come from ``generator`` (CPU), so each seed has its own
    stream; without it the result is the noiseless tempered probability
    q^(1/t) / (q^(1/t) + (1 - q)^(1/t)), used for evaluation and for dropping strokes.
    Differentiable in q either way.
    """
    logits = _two_class_logits(q)
    if noise:
        u = host_to_device(torch.rand(logits.shape, generator=generator, dtype=torch.float32), q.device, q.dtype)
        logits = logits - torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))
    return F.softmax(logits / temperature, dim=-1)[..., 0]


def seeded(module_factory, seed: int) -> nn.Module:
    """Build a module with torch's default initialisation drawn from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return module_factory()
