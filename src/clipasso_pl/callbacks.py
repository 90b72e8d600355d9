"""Callbacks around SketchModule: initialisation, logging, snapshots, best sketch, early stop.

Every callback writes under ``trainer.default_root_dir`` (the run directory) and
only from global rank 0.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from .images import save_png
from .module import SketchModule
from .strokes import write_svg


def run_dir(trainer: pl.Trainer) -> Path:
    return Path(trainer.default_root_dir)


def seed_dir(trainer: pl.Trainer, seed: int) -> Path:
    return run_dir(trainer) / "seeds" / f"seed{seed}"


def save_sketch(module: SketchModule, points: torch.Tensor, stem: Path) -> None:
    """Write ``stem``.svg and ``stem``.png for one sketch. points: [N, 4, 2]."""
    strokes = module.strokes(points[None].to(module.points))
    write_svg(stem.with_suffix(".svg"), points, strokes.half_widths[0], strokes.opacities[0], module.height, module.width)
    with torch.no_grad():
        save_png(stem.with_suffix(".png"), module.render(points[None].to(module.points))[0])


class SaliencyInit(pl.Callback):
    """Initialises the strokes at fit start and saves the saliency map with the start points."""

    def on_fit_start(self, trainer: pl.Trainer, module: SketchModule) -> None:
        if bool(module.initialized):
            return
        results = module.initialize()
        if trainer.global_rank != 0:
            return
        from .init import overlay

        for i, (seed, res) in enumerate(zip(module.seeds, results)):
            if res.saliency is None:
                continue
            picture = overlay(module.target[0].cpu(), res.saliency, res.starts)
            save_png(seed_dir(trainer, seed) / "attention.png", picture)
            if i == 0:
                save_png(run_dir(trainer) / "attention.png", picture)


class LayerLossLogger(pl.Callback):
    """Logs every named loss term: ``train/<term>`` each step, ``eval/<term>`` and ``eval/loss_seed{i}`` each eval."""

    def __init__(self) -> None:
        self._t0 = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module: SketchModule, outputs, batch, batch_idx) -> None:
        metrics = {f"train/{k}": v.mean() for k, v in module.last_train.items() if k != "loss"}
        metrics["time/step_s"] = torch.tensor(time.perf_counter() - self._t0)
        if module.last_eval is not None:
            terms = module.last_eval.terms
            metrics.update({f"eval/{k}": v.mean() for k, v in terms.items() if k != "loss"})
            metrics.update({f"eval/loss_seed{i}": v for i, v in enumerate(terms["loss"])})
        module.log_dict(metrics)


class SketchSnapshot(pl.Callback):
    """Writes every seed's sketch as SVG and PNG every ``save_interval`` steps, and ``final.svg`` at the end."""

    def __init__(self, save_interval: int = 10, png: bool = True) -> None:
        self.save_interval = save_interval
        self.png = png

    def on_train_batch_start(self, trainer, module: SketchModule, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.global_rank != 0 or self.save_interval <= 0 or step % self.save_interval:
            return
        for seed, pts in zip(module.seeds, module.points.detach()):
            stem = seed_dir(trainer, seed) / "snapshots" / f"step{step:05d}"
            if self.png:
                save_sketch(module, pts, stem)
            else:
                s = module.strokes(pts[None])
                write_svg(stem.with_suffix(".svg"), pts, s.half_widths[0], s.opacities[0], module.height, module.width)

    def on_fit_end(self, trainer, module: SketchModule) -> None:
        if trainer.global_rank != 0:
            return
        for seed, pts in zip(module.seeds, module.points.detach()):
            save_sketch(module, pts, seed_dir(trainer, seed) / "final")


class BestSketch(pl.Callback):
    """Tracks the step with the lowest eval loss per seed, and the best seed overall.

    Writes ``seeds/seed<k>/best.{svg,png}`` and the overall ``best.{svg,png}`` at fit end
    (and when training stops on an exception, so an interrupted run keeps its best).
    """

    def __init__(self) -> None:
        self.best_loss: torch.Tensor | None = None  # [S]
        self.best_step: torch.Tensor | None = None  # [S]
        self.best_points: torch.Tensor | None = None  # [S, N, 4, 2]

    def on_train_batch_end(self, trainer, module: SketchModule, outputs, batch, batch_idx) -> None:
        record = module.last_eval
        if record is None:
            return
        loss = record.terms["loss"].detach().cpu()
        if self.best_loss is None:
            self.best_loss = torch.full_like(loss, float("inf"))
            self.best_step = torch.full(loss.shape, -1, dtype=torch.long)
            self.best_points = record.points.detach().cpu().clone()
        better = loss < self.best_loss
        self.best_loss = torch.where(better, loss, self.best_loss)
        self.best_step = torch.where(better, torch.full_like(self.best_step, record.step), self.best_step)
        self.best_points[better] = record.points.detach().cpu()[better]

    @property
    def best_seed_index(self) -> int:
        return int(torch.argmin(self.best_loss))

    def summary(self, module: SketchModule) -> dict:
        if self.best_loss is None:
            return {}
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

    def write(self, trainer, module: SketchModule) -> None:
        if trainer.global_rank != 0 or self.best_loss is None:
            return
        for seed, pts in zip(module.seeds, self.best_points):
            save_sketch(module, pts, seed_dir(trainer, seed) / "best")
        save_sketch(module, self.best_points[self.best_seed_index], run_dir(trainer) / "best")

    def on_fit_end(self, trainer, module) -> None:
        self.write(trainer, module)
        best = self.summary(module)
        if best:
            metrics = {"best/loss": best["best_loss"], "best/step": best["best_step"], "best/seed": best["best_seed"]}
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=trainer.global_step)

    def on_exception(self, trainer, module, exception) -> None:
        self.write(trainer, module)

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "best_points": self.best_points}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_loss = state_dict["best_loss"]
        self.best_step = state_dict["best_step"]
        self.best_points = state_dict["best_points"]


class EvalEarlyStopping(pl.Callback):
    """The official stopping rule, per seed.

    A seed stops when ``patience`` consecutive evals each change its eval loss by at
    most ``min_delta``; a stopped seed's strokes are frozen, and the run ends when all
    seeds have stopped.
    """

    def __init__(self, min_delta: float = 1e-5, patience: int = 2) -> None:
        self.min_delta = min_delta
        self.patience = patience
        self.previous: torch.Tensor | None = None  # [S]
        self.calm: torch.Tensor | None = None  # [S] consecutive small changes

    def on_train_batch_end(self, trainer, module: SketchModule, outputs, batch, batch_idx) -> None:
        record = module.last_eval
        if record is None:
            return
        loss = record.terms["loss"].detach().cpu()
        if self.previous is None:
            self.previous = loss.clone()
            self.calm = torch.zeros(loss.shape, dtype=torch.long)
            return
        small = (loss - self.previous).abs() <= self.min_delta
        self.calm = torch.where(small, self.calm + 1, torch.zeros_like(self.calm))
        self.previous = loss.clone()
        stopped = self.calm >= self.patience
        module.active &= ~stopped.to(module.active.device)
        if not bool(module.active.any()):
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"previous": self.previous, "calm": self.calm}

    def load_state_dict(self, state_dict: dict) -> None:
        self.previous, self.calm = state_dict["previous"], state_dict["calm"]
