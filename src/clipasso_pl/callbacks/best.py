"""The best sketch: the step with the lowest eval loss per seed, and the best seed overall."""

from __future__ import annotations

import json

import pytorch_lightning as pl
import torch

from ..images import atomic_write_text
from ..runs import run_dir, seed_dir
from ..training.contract import PointSketcher
from .files import save_sketch, seed_opacities


class BestSketch(pl.Callback):
    """Tracks the step with the lowest eval loss per seed, and the best seed overall.

    Writes ``seeds/seed<k>/best.{svg,png}``, the overall ``best.{svg,png}`` and
    ``best_so_far.json`` (the best so far, at which step) after the first eval, with every
    checkpoint, at fit end and when training stops on an exception, so a run that dies
    (a full disk, a kill) keeps a whole best-so-far from its first eval on. With no evals
    (``eval_interval=0``) the first seed's final strokes are the best sketch, and the
    summary says so.
    """

    def __init__(self) -> None:
        self.best_loss: torch.Tensor | None = None  # [S]
        self.best_step: torch.Tensor | None = None  # [S]
        self.best_points: torch.Tensor | None = None  # [S, M, P, 2]
        self.best_opacities: torch.Tensor | None = None  # [S, M] with force_sparse, else None
        self.best_count: torch.Tensor | None = None  # [S] strokes drawn at the best step (num_stages)

    def on_train_batch_end(self, trainer, module: PointSketcher, outputs, batch, batch_idx) -> None:
        record = module.last_eval
        if record is None:
            return
        loss = record.terms["loss"].detach().cpu()
        first = self.best_loss is None
        if first:
            self.best_loss = torch.full_like(loss, float("inf"))
            self.best_step = torch.full(loss.shape, -1, dtype=torch.long)
            self.best_points = record.points.detach().cpu().clone()
            if record.opacities is not None:
                self.best_opacities = record.opacities.detach().cpu().clone()
            if record.count is not None:
                self.best_count = torch.full(loss.shape, int(record.count), dtype=torch.long)
        better = loss < self.best_loss
        self.best_loss = torch.where(better, loss, self.best_loss)
        self.best_step = torch.where(better, torch.full_like(self.best_step, record.step), self.best_step)
        self.best_points[better] = record.points.detach().cpu()[better]
        if self.best_opacities is not None and record.opacities is not None:
            self.best_opacities[better] = record.opacities.detach().cpu()[better]
        if self.best_count is not None and record.count is not None:
            self.best_count[better] = int(record.count)

        if first:
            self.write(trainer, module)

    def best_strokes(self, index: int) -> dict:
        """save_sketch's keywords for seed ``index``'s best: its opacities and stroke count."""
        return {"opacities": None if self.best_opacities is None else self.best_opacities[index],
                "count": None if self.best_count is None else int(self.best_count[index])}

    @property
    def best_seed_index(self) -> int:
        return int(torch.argmin(self.best_loss))

    def summary(self, module: PointSketcher) -> dict:
        if self.best_loss is None:
            if module.eval_interval > 0:
                return {}
            return {"best_seed": module.seeds[0], "best_loss": None, "best_step": int(module.global_step),
                    "best_is_final": True, "note": "eval_interval=0: no evals; best.svg is the final strokes of the first seed"}
        i = self.best_seed_index
        return {
            "best_seed": module.seeds[i],
            "best_loss": float(self.best_loss[i]),
            "best_step": int(self.best_step[i]),
            "per_seed": {
                str(s): {"best_loss": float(l), "best_step": int(t)}
                for s, l, t in zip(module.seeds, self.best_loss, self.best_step)
            },
        }

    def write(self, trainer, module: PointSketcher) -> None:
        if trainer.global_rank != 0:
            return
        if self.best_loss is None:
            if module.eval_interval <= 0:  # no evals: the final strokes stand in
                save_sketch(module, module.points.detach()[0], run_dir(trainer) / "best", seed_opacities(module)[0])
            return
        for i, (seed, pts) in enumerate(zip(module.seeds, self.best_points)):
            save_sketch(module, pts, seed_dir(trainer, seed) / "best", **self.best_strokes(i))
        i = self.best_seed_index
        save_sketch(module, self.best_points[i], run_dir(trainer) / "best", **self.best_strokes(i))
        so_far = {**self.summary(module), "step": int(trainer.global_step)}
        atomic_write_text(run_dir(trainer) / "best_so_far.json", json.dumps(so_far, indent=2) + "\n")

    def on_save_checkpoint(self, trainer, module, checkpoint) -> None:
        self.write(trainer, module)  # the best files agree with the checkpoint a resume starts from

    def on_fit_end(self, trainer, module) -> None:
        self.write(trainer, module)
        best = self.summary(module)
        if best and best["best_loss"] is not None:
            metrics = {"best/loss": best["best_loss"], "best/step": best["best_step"], "best/seed": best["best_seed"]}
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=trainer.global_step)

    def on_exception(self, trainer, module, exception) -> None:
        try:
            self.write(trainer, module)
        except OSError:  # e.g. the disk that stopped the run is still full: the earlier best files stay whole
            pass

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "best_points": self.best_points,
                "best_opacities": self.best_opacities, "best_count": self.best_count}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_loss = state_dict["best_loss"]
        self.best_step = state_dict["best_step"]
        self.best_points = state_dict["best_points"]
        self.best_opacities = state_dict.get("best_opacities")
        self.best_count = state_dict.get("best_count")
