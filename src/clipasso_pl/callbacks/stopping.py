"""When a run stops and where it can resume: early stopping on the eval loss, periodic checkpoints."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from ..runs import save_checkpoint
from ..training.contract import PointSketcher


class EvalEarlyStopping(pl.Callback):
    """The official code's stopping rule, per seed.

    At each eval, ``delta = loss - best``. A change larger than ``min_delta`` that
    lowers the loss is a new best (and clears the count); a change of at most
    ``min_delta`` counts one calm eval; a rise larger than ``min_delta`` changes nothing.
    A seed stops at its ``patience``-th calm eval since its last new best (the official
    loop: the second, not necessarily consecutive). ``best`` starts at ``initial_best``
    (100 in the official loop). A stopped seed's strokes are frozen, and the run ends
    when all seeds have stopped.
    """

    def __init__(self, min_delta: float = 1e-5, patience: int = 2, initial_best: float = 100.0) -> None:
        self.min_delta = min_delta
        self.patience = patience
        self.initial_best = initial_best
        self.best: torch.Tensor | None = None  # [S] best eval loss by the rule above
        self.calm: torch.Tensor | None = None  # [S] calm evals since the last new best

    def update(self, loss: torch.Tensor) -> torch.Tensor:
        """One eval: loss [S] -> bool [S], True where the seed stops now."""
        if self.best is None:
            self.best = torch.full_like(loss, float(self.initial_best))
            self.calm = torch.zeros(loss.shape, dtype=torch.long)
        delta = loss - self.best
        moved = delta.abs() > self.min_delta
        better = moved & (delta < 0)
        self.best = torch.where(better, loss, self.best)
        self.calm = torch.where(better, torch.zeros_like(self.calm), self.calm + (~moved).long())
        return self.calm >= self.patience

    def on_train_batch_end(self, trainer, module: PointSketcher, outputs, batch, batch_idx) -> None:
        record = module.last_eval
        if record is None:
            return
        stopped = self.update(record.terms["loss"].detach().cpu().double())
        module.active &= ~stopped.to(module.active.device)
        if not bool(module.active.any()):
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "calm": self.calm}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.calm = state_dict.get("best"), state_dict.get("calm")


class PeriodicCheckpoint(pl.Callback):
    """Saves ``checkpoints/last.ckpt`` every ``checkpoint_interval`` steps, atomically.

    The checkpoint holds the control points, Adam's state, the step, the per-seed
    generators, and the state of BestSketch and EvalEarlyStopping, so
    ``clipasso-pl sketch resume=<run dir>`` continues exactly where the run stopped.
    """

    def __init__(self, checkpoint_interval: int = 100) -> None:
        self.checkpoint_interval = checkpoint_interval

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.checkpoint_interval > 0 and step % self.checkpoint_interval == 0:
            save_checkpoint(trainer)
