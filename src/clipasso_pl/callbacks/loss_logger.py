"""Loss logging: every named loss term of each step and each eval, written in batches."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from ..training.contract import Sketcher


class LayerLossLogger(pl.Callback):
    """Logs every named loss term: ``train/<term>`` of each step, ``eval/<term>`` and ``eval/loss_seed{i}`` of each eval.

    The values stay on the device: each step only stacks its terms into one tensor, and the
    buffer is read in one transfer and written to the loggers (with each row's own step) on eval
    steps, every ``log_interval`` steps, and when training ends, so logging adds no host sync
    and no Python work per metric to the other steps. ``time/step_s`` is the mean wall time per
    step since the previous write; the progress bar shows the last eval's loss.
    """

    def __init__(self, log_interval: int = 10) -> None:
        self.log_interval = max(1, int(log_interval))
        self._rows: list[tuple[int, float, torch.Tensor]] = []  # (step, lr, [M, S] terms)
        self._names: list[str] | None = None
        self._step = 0
        self._t_last: float | None = None

    def on_train_start(self, trainer, module) -> None:
        self._rows, self._t_last = [], time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, module: Sketcher, outputs, batch, batch_idx) -> None:
        terms = module.last_train
        if terms is None:
            return
        if self._names is None:
            self._names = list(terms)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self._rows.append((self._step, float(lr), torch.stack([terms[k] for k in self._names])))
        if module.last_eval is not None or len(self._rows) >= self.log_interval:
            self.flush(trainer, module, module.last_eval)

    def flush(self, trainer, module, record=None) -> None:
        """Write the buffered rows (and the eval ``record`` of the last one) to the loggers."""
        if not self._rows:
            return
        now = time.perf_counter()
        step_s = (now - self._t_last) / len(self._rows) if self._t_last is not None else float("nan")
        self._t_last = now
        values = torch.stack([r[2] for r in self._rows]).float().mean(-1).cpu().tolist()  # [k, M]
        rows = [{f"train/{n}": v for n, v in zip(self._names, row)} for row in values]
        for (_, lr, _), metrics in zip(self._rows, rows):
            metrics["train/lr"] = lr
        last = rows[-1]
        last["time/step_s"] = step_s
        if module.nonfinite is not None:
            last["train/nonfinite_steps"] = float(module.nonfinite.total)
        if record is not None and record.step == self._rows[-1][0]:
            names = list(record.terms)
            per_seed = torch.stack([record.terms[k] for k in names]).float().cpu()  # [M, S]
            last.update({f"eval/{n}": float(v) for n, v in zip(names, per_seed.mean(-1).tolist())})
            last.update({f"eval/loss_seed{i}": float(v) for i, v in enumerate(per_seed[names.index("loss")].tolist())})
            # A CPU value: the progress bar reads it every step without touching the device.
            module.log("eval/loss", torch.tensor(last["eval/loss"]), prog_bar=True, logger=False)
        steps = [r[0] for r in self._rows]
        self._rows = []
        for lg in trainer.loggers:
            for step, metrics in zip(steps, rows):
                lg.log_metrics(metrics, step=step)

    def on_train_end(self, trainer, module) -> None:
        self.flush(trainer, module)

    def on_exception(self, trainer, module, exception) -> None:
        try:
            self.flush(trainer, module)
        except RuntimeError:  # a broken device: the original exception is the one to report
            pass
