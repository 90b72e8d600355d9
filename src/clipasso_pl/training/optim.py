"""Adam as both modules step it: fused, skipping a non-finite step on the device, following its device.

Pure helpers around ``torch.optim.Adam``; the LightningModules (``module.SketchModule``,
``scene.module.SceneSketchModule``) call them from ``optimizer_step`` / ``configure_optimizers``.
An ``optimizer`` argument may be Lightning's wrapper (it holds the torch optimizer as
``.optimizer``) or the torch optimizer itself.
"""

from __future__ import annotations

import torch
from torch import Tensor


def torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Lightning's wrapper (or ``optimizer`` itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def skip_nonfinite_step(optimizer, ok: Tensor, active: Tensor, per_seed: list[Tensor]) -> None:
    """One fused Adam step that changes nothing when ``ok`` [] is False and never moves a stopped seed.

    A fused Adam (``fused=True``) skips its update on the device when its ``found_inf`` is nonzero
    (the mechanism AMP's grad scaler uses): no parameter, moment or step count changes, and no host
    read. A seed with ``active[s]`` False gets a zero gradient from the masked loss; zeroing its first
    moment too makes Adam's update for it exactly 0 (its momentum would keep moving it).
    per_seed: the parameters whose dim 0 is the seed.
    """
    adam = torch_optimizer(optimizer)
    if not all(group.get("fused") for group in adam.param_groups):
        raise ValueError("skip_nonfinite_step needs a fused Adam (fused=True)")
    with torch.no_grad():
        for p in per_seed:
            state = adam.state.get(p)
            if state and "exp_avg" in state:
                state["exp_avg"].mul_(active.view(-1, *[1] * (p.dim() - 1)))
    adam.found_inf = (~ok).to(torch.float32).reshape(())
    try:
        optimizer.step()
    finally:
        del adam.found_inf


def adam_capturable(device: torch.device) -> bool:
    """Adam's ``capturable`` on ``device``: on CUDA its step counts live on the GPU, so a skipped step
    is undone without a host sync; a CPU Adam refuses it."""
    return torch.device(device).type == "cuda"


def optimizer_follows_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make a loaded Adam state fit ``device``: ``capturable`` by the rule of :func:`adam_capturable`,
    and the ``step`` counts on ``device`` when capturable, else on the host (as Adam keeps them).

    ``load_state_dict`` keeps the checkpoint's ``capturable``: a GPU checkpoint resumed on a CPU
    would fail at the first step, a CPU checkpoint resumed on a GPU would read its CPU step counts
    every step.
    """
    capturable = adam_capturable(device)
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = capturable
    for state in optimizer.state.values():
        step = state.get("step")
        if isinstance(step, Tensor):
            state["step"] = step.to(device if capturable else "cpu")


def freeze_earlier_strokes(optimizer, params: list[Tensor | None], first: int, fresh: bool) -> None:
    """Only strokes ``first:`` move: zero the gradient of strokes ``:first`` (dim 1) of every param
    [S, M, ...] (None: absent); ``fresh`` clears Adam's state first (a stage's first step).

    With a fresh Adam a zero gradient moves nothing.
    """
    if fresh:
        torch_optimizer(optimizer).state.clear()
    for p in params:
        if p is not None and p.grad is not None:
            p.grad[:, :first].zero_()  # zero_: no Python scalar copied in


def adam_state_on_cpu(optimizer: torch.optim.Optimizer | None, params: list[Tensor]) -> list[dict] | None:
    """Adam's per-parameter state of ``params`` as CPU copies (in the order of ``params``); None
    without an optimizer."""
    if optimizer is None:
        return None
    out = []
    for p in params:
        state = optimizer.state.get(p, {})
        out.append({k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in state.items()})
    return out


def load_adam_state(optimizer: torch.optim.Optimizer, params: list[Tensor], state: list[dict],
                    owner: str = "the model") -> None:
    """Load one saved per-parameter state list (see :func:`adam_state_on_cpu`) for ``params`` (of
    ``owner``, named in the error when the counts differ).

    A fused Adam keeps its step count as a float32 tensor on the parameter's device."""
    if len(params) != len(state):
        raise ValueError(f"optimizer_state has {len(state)} entries, {owner} has {len(params)} parameters")
    for p, saved in zip(params, state):
        optimizer.state[p] = {k: (v.clone().to(p.device, torch.float32 if k == "step" else v.dtype)
                                  if torch.is_tensor(v) else v) for k, v in saved.items()}


def points_adam(points: Tensor, opacities: Tensor | None, lr: float, color_lr: float,
                device: torch.device) -> torch.optim.Adam:
    """The fused Adam of the control points [S, M, P, 2] at ``lr`` and, with force_sparse, the
    opacities [S, M] at ``color_lr``: one Adam, two groups, the same updates as the official two Adams."""
    capturable = adam_capturable(device)
    if opacities is not None:
        groups = [{"params": [points]}, {"params": [opacities], "lr": color_lr}]
        return torch.optim.Adam(groups, lr=lr, capturable=capturable, fused=True)
    return torch.optim.Adam([points], lr=lr, capturable=capturable, fused=True)


@torch.no_grad()
def project_opacities(opacities: Tensor, threshold: float) -> None:
    """After a step, as the official code before every render: opacities [S, M] clamped to [0, 1] in
    place; ``threshold`` > 0 then sets each to 1 at or above it and to 0 below."""
    opacities.clamp_(0.0, 1.0)
    if threshold > 0:
        opacities.copy_((opacities >= threshold).to(opacities))
