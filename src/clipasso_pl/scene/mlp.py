"""CLIPascene's two reparametrisations: stroke locations and stroke keep-probabilities by MLPs.

The optimised parameters of a scene sketch are MLP weights, not control points: the
location MLP maps the (fixed) initial control points to the current ones, and the width
MLP maps a fixed input to one keep-probability per stroke.

Coordinates given to the location MLP are normalised as the official code does:
x_n = 2 * p / W - 1 in [-1, 1] (x right, y down); its output is mapped back with
p = 0.5 * (y + 1) * W. With y = x_n + 0.1 * net(x_n), one unit of ``net`` output moves a
point by 0.5 * 0.1 * W = 0.05 * W pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..accel import host_side, host_to_device


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.SELU(), nn.Linear(hidden, hidden), nn.SELU(),
                         nn.Linear(hidden, outputs))


def batched_mlp(nets: list[nn.Sequential], x: Tensor) -> Tensor:
    """S networks of :func:`_mlp`'s layout, each on its own row, as one batched forward.

    nets: S Sequentials of Linear / SELU with equal shapes; x: [S, in] -> [S, out]. The weights are
    stacked in the graph (gradients reach each network's own parameters), so one matmul per layer
    runs for all seeds instead of one per seed.
    """
    x = x[:, None]  # [S, 1, in]
    for layers in zip(*nets):
        if isinstance(layers[0], nn.Linear):
            weight = torch.stack([layer.weight for layer in layers])  # [S, out, in]
            bias = torch.stack([layer.bias for layer in layers])[:, None]  # [S, 1, out]
            x = torch.baddbmm(bias, x, weight.transpose(1, 2))
        else:
            x = layers[0](x)
    return x[:, 0]


def to_unit(points: Tensor, side: Tensor | float) -> Tensor:
    """Pixels -> the location MLP's input range [-1, 1] (2 p / W - 1)."""
    return 2.0 * points / side - 1.0


def from_unit(x: Tensor, side: Tensor | float) -> Tensor:
    """The location MLP's output -> pixels: 0.5 (x + 1) W."""
    return 0.5 * (x + 1.0) * side


class LocationMLP(nn.Module):
    """x -> x + offset_scale * MLP(x) on the flattened control points in [-1, 1].

    x: [..., N * 8] (N strokes x 4 points x (x, y)); 64 strokes give the paper's 512 inputs.
    Layers: Linear(8N, hidden), SELU, Linear(hidden, hidden), SELU, Linear(hidden, 8N)
    (torch's default initialisation, as the official code leaves it).
    The residual form keeps the first sketch close to its initialisation.
    """

    def __init__(self, num_strokes: int = 64, hidden: int = 1000, offset_scale: float = 0.1):
        super().__init__()
        self.num_strokes = num_strokes
        self.offset_scale = offset_scale
        self.net = _mlp(num_strokes * 8, hidden, num_strokes * 8)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.offset_scale * self.net(x)

    @staticmethod
    def batched(mlps, x: Tensor) -> Tensor:
        """Every seed's MLP on its own row in one forward: mlps: S LocationMLPs, x: [S, N * 8] -> [S, N * 8]."""
        return x + mlps[0].offset_scale * batched_mlp([m.net for m in mlps], x)


def xavier_init(module: nn.Module, bias: float = 0.01) -> None:
    """Xavier-uniform weights and a constant bias on every Linear layer (the official width-MLP init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.constant_(m.bias, bias)


class WidthMLP(nn.Module):
    """A fixed input [..., N] -> per-stroke keep probabilities q in (0, 1) [..., N] (before Gumbel-softmax).

    Layers: Linear(N, hidden), SELU, Linear(hidden, hidden), SELU, Linear(hidden, N), sigmoid;
    Xavier-uniform weights, biases 0.01 (``init=False`` keeps torch's default initialisation).
    The module feeds it ``input_value`` (1.5, the official stroke width) for every stroke.
    """

    def __init__(self, num_strokes: int = 64, hidden: int = 1000, init: bool = True):
        super().__init__()
        self.num_strokes = num_strokes
        self.net = _mlp(num_strokes, hidden, num_strokes)
        if init:
            xavier_init(self.net)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.net(x))

    @staticmethod
    def batched(mlps, x: Tensor) -> Tensor:
        """Every seed's MLP in one forward: mlps: S WidthMLPs, x: [N] or [S, N] -> [S, N]."""
        return torch.sigmoid(batched_mlp([m.net for m in mlps], x.expand(len(mlps), -1)))


def _two_class_logits(q: Tensor, eps: float = 1e-6) -> Tensor:
    """[..., N] probabilities -> [..., N, 2] log-probabilities of (keep, drop)."""
    q = q.clamp(eps, 1 - eps)
    return torch.stack([q.log(), (1 - q).log()], dim=-1)


def gumbel_uniforms(shape: tuple[int, ...], generators: list[torch.Generator], device, dtype) -> Tensor:
    """[S, *shape, 2] uniforms for :func:`keep_probabilities`, drawn on the host from each seed's
    generator (the same numbers as one draw per seed) and moved to ``device`` in one copy."""
    with host_side():
        u = torch.stack([torch.rand((*shape, 2), generator=g, dtype=torch.float32) for g in generators])
    return host_to_device(u, device, dtype)


def keep_probabilities(q: Tensor, temperature: float = 0.2, generator: torch.Generator | None = None,
                       noise: bool = True, uniforms: Tensor | None = None) -> Tensor:
    """Gumbel-softmax relaxation of 'keep stroke i' with probability q_i: p [..., N] in [0, 1].

    With ``noise`` the Gumbel draws come from ``generator`` (CPU), so each seed has its own
    stream (or are the given ``uniforms`` [..., N, 2], see :func:`gumbel_uniforms`); without it the
    result is the noiseless tempered probability q^(1/t) / (q^(1/t) + (1 - q)^(1/t)). Differentiable in q either way.
    """
    # At least float32, even under a bf16/fp16 autocast: in bfloat16, 1 - 1e-7 and 1 - 1e-6 round to 1,
    # and a q or a uniform of 1 makes a log -inf (a non-finite step).
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        logits = _two_class_logits(q.to(dtype))
        if noise:
            u = uniforms
            if u is None:
                with host_side():
                    u = torch.rand(logits.shape, generator=generator, dtype=torch.float32)
            u = host_to_device(u, q.device, dtype)
            logits = logits - torch.log(-torch.log(u.to(dtype).clamp(1e-10, 1 - 1e-7)))
        return F.softmax(logits / temperature, dim=-1)[..., 0]


def seeded(module_factory, seed: int) -> nn.Module:
    """Build a module with its initialisation drawn from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return module_factory()


def load_states(mlps: nn.ModuleList, states: dict | list[dict] | None) -> None:
    """Load a state dict into every MLP of ``mlps`` (one shared, or a list of one per MLP); None: keep."""
    if states is None:
        return
    states = states if isinstance(states, (list, tuple)) else [states] * len(mlps)
    for mlp, state in zip(mlps, states):
        mlp.load_state_dict(state)
