"""Non-finite training steps: skipped, counted on the device, and fatal after ``max_nonfinite`` in a row.

A step whose loss or gradient is not finite is skipped inside the fused Adam (see
:func:`clipasso_pl.training.optim.skip_nonfinite_step`) without a host read. The counts stay on the device
and are read on eval steps only (one host read), so counting adds no sync to a training step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ClipassoError


def all_finite(loss_ok: Tensor, params) -> Tensor:
    """[] bool: ``loss_ok`` [] and every existing gradient of ``params`` finite (device-side)."""
    ok = loss_ok
    for p in params:
        if p is not None and p.grad is not None:
            ok = ok & torch.isfinite(p.grad).all()
    return ok


class NonfiniteSteps(nn.Module):
    """The counters (buffers, saved with the checkpoint) of the non-finite steps of a run.

    total: [] steps skipped so far; in_row: [] skipped in a row now; stop_step: [] the step at which
    ``max_nonfinite`` in a row was first reached (-1: never); stop_loss: [] whether the loss (else
    the gradient) was non-finite then; stop_means: [M] the mean loss terms of that step (not saved).
    """

    def __init__(self, max_nonfinite: int):
        super().__init__()
        self.max_nonfinite = max_nonfinite
        self.register_buffer("total", torch.tensor(0))
        self.register_buffer("in_row", torch.tensor(0))
        self.register_buffer("stop_step", torch.tensor(-1))
        self.register_buffer("stop_loss", torch.tensor(False))
        self.stop_means: Tensor | None = None  # [M] means of the loss terms (last_train order)

    @torch.no_grad()
    def count(self, step: int, loss_ok: Tensor, ok: Tensor, last_train: dict[str, Tensor] | None) -> None:
        """Count a skipped step on the device; remember the step where ``max_nonfinite`` in a row was
        reached, and the means of its per-seed terms ``last_train`` (each [S])."""
        bad = ~ok
        self.total += bad
        self.in_row.add_(bad).mul_(bad)
        hit = (self.in_row >= self.max_nonfinite) & (self.stop_step < 0)
        self.stop_step.copy_(torch.where(hit, step, self.stop_step))
        self.stop_loss.copy_(torch.where(hit, ~loss_ok, self.stop_loss))
        if last_train:
            means = torch.stack(list(last_train.values())).mean(-1)  # [M]: one op, not one per term
            before = self.stop_means if self.stop_means is not None else torch.zeros_like(means)
            self.stop_means = torch.where(hit, means, before)

    def check(self, names) -> None:
        """Stop the run once ``max_nonfinite`` steps in a row were non-finite (one host read; eval steps
        only). names: the loss terms, in the order of the means (``last_train``'s keys)."""
        step = int(self.stop_step)
        if step < 0:
            return
        what = "loss" if bool(self.stop_loss) else "gradient"
        means = [] if self.stop_means is None else self.stop_means.tolist()
        values = ", ".join(f"{k}={v:.4g}" for k, v in zip(names, means))
        raise ClipassoError(
            f"stopped at step {step}: {self.max_nonfinite} steps in a row with a non-finite {what} "
            f"({values}); the best sketch so far is kept; lower lr or check the target image"
        )
