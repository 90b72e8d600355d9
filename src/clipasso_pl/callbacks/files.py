"""Sketch files: every seed's SVG/PNG snapshots, its final strokes, and the saliency map at initialisation.

Written under the run directory (``runs.run_dir``), from global rank 0 only. ``SketchSnapshot``
reads only the :class:`clipasso_pl.training.contract.Sketcher` members, so the scene writes its snapshots
with it too.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from ..images import save_png
from ..runs import run_dir, seed_dir
from ..strokes import write_svg
from ..training.contract import PointSketcher, Sketcher


def sketch_strokes(module: Sketcher, points: torch.Tensor, opacities: torch.Tensor | None = None,
                   count: int | None = None):
    """One sketch as a batch of one: points [M, P, 2], opacities [M] (None: the module's rule), the first ``count``.

    Without opacities and count only ``module.strokes(points)`` is called, which the scene module also offers.
    """
    if opacities is None and count is None:
        return module.strokes(points[None].to(module.points))
    return module.strokes(points[None].to(module.points), None if opacities is None else opacities[None], count)


def write_sketch_svg(module: Sketcher, strokes, stem: Path) -> None:
    write_svg(stem.with_suffix(".svg"), strokes.points[0], strokes.half_widths[0], strokes.opacities[0],
              module.height, module.width, strokes.control_points_per_seg)


def save_sketch(module: Sketcher, points: torch.Tensor, stem: Path, opacities: torch.Tensor | None = None,
                count: int | None = None, image: torch.Tensor | None = None) -> None:
    """Write ``stem``.svg and ``stem``.png for one sketch. points: [M, P, 2]; opacities: [M] or None (all 1);
    image: its render [3, H, W] when already known (an eval step's), else rendered here."""
    strokes = sketch_strokes(module, points, opacities, count)
    write_sketch_svg(module, strokes, stem)
    if image is None:
        with torch.no_grad():
            image = module.renderer.render(strokes, module.height, module.width)[0]
    save_png(stem.with_suffix(".png"), image)


def seed_opacities(module: Sketcher) -> list:
    """Each seed's trained opacities [M] (force_sparse), else None per seed."""
    if module.opacities is None:  # not trained (the scene module never trains them)
        return [None] * len(module.seeds)
    return list(module.opacities.detach())


class SaliencyInit(pl.Callback):
    """Initialises the strokes at fit start and saves the saliency map with the start points."""

    def on_fit_start(self, trainer: pl.Trainer, module: PointSketcher) -> None:
        if bool(module.initialized):
            return
        results = module.initialize()
        if trainer.global_rank != 0:
            return
        from ..init import overlay

        for i, (seed, res) in enumerate(zip(module.seeds, results)):
            if res.saliency is None:
                continue
            picture = overlay(module.target[0].cpu(), res.saliency, res.starts)
            save_png(seed_dir(trainer, seed) / "attention.png", picture)
            if i == 0:
                save_png(run_dir(trainer) / "attention.png", picture)


class SketchSnapshot(pl.Callback):
    """Writes every seed's sketch as SVG and PNG every ``save_interval`` steps, and ``final.svg`` at the end."""

    def __init__(self, save_interval: int = 10, png: bool = True) -> None:
        self.save_interval = save_interval
        self.png = png

    def due(self, trainer, step: int) -> bool:
        return trainer.global_rank == 0 and self.save_interval > 0 and step % self.save_interval == 0

    def on_train_batch_start(self, trainer, module: Sketcher, batch, batch_idx) -> None:
        step = trainer.global_step
        evaluates = module.eval_interval > 0 and step % module.eval_interval == 0
        if self.due(trainer, step) and not evaluates:  # on eval steps: written at batch end from the eval's render
            self.write(trainer, module, step, module.points.detach(), seed_opacities(module))

    def on_train_batch_end(self, trainer, module: Sketcher, outputs, batch, batch_idx) -> None:
        record = module.last_eval
        if record is not None and self.due(trainer, record.step):
            opacities = [None] * len(module.seeds) if record.opacities is None else list(record.opacities)
            self.write(trainer, module, record.step, record.points, opacities, record.sketches)

    def write(self, trainer, module: Sketcher, step: int, points: torch.Tensor, opacities: list,
              sketches: torch.Tensor | None = None) -> None:
        """Every seed's points [S, M, P, 2], opacities (per seed [M] or None) and, when known, their renders
        [S, 3, H, W] as step<step>.svg/png."""
        for i, (seed, pts, ops) in enumerate(zip(module.seeds, points, opacities)):
            stem = seed_dir(trainer, seed) / "snapshots" / f"step{step:05d}"
            if self.png:
                save_sketch(module, pts, stem, ops, image=None if sketches is None else sketches[i])
            else:
                write_sketch_svg(module, sketch_strokes(module, pts, ops), stem)

    def on_fit_end(self, trainer, module: Sketcher) -> None:
        if trainer.global_rank != 0:
            return
        for seed, pts, ops in zip(module.seeds, module.points.detach(), seed_opacities(module)):
            save_sketch(module, pts, seed_dir(trainer, seed) / "final", ops)
