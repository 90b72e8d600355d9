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


def save_sketch(module: SketchModule, points: torch.Tensor, stem: Path, image: torch.Tensor | None = None) -> None:
    """Write ``stem``.svg and ``stem``.png for one sketch. points: [N, 4, 2]; image: its render [3, H, W] if known."""
    strokes = module.strokes(points[None].to(module.points))
    write_svg(stem.with_suffix(".svg"), points, strokes.half_widths[0], strokes.opacities[0], module.height, module.width)
    if image is None:
        with torch.no_grad():
            image = module.render(points[None].to(module.points))[0]
    save_png(stem.with_suffix(".png"), image)


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

    def on_train_batch_end(self, trainer, module: SketchModule, outputs, batch, batch_idx) -> None:
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
        if hasattr(module, "nonfinite_total"):
            last["train/nonfinite_steps"] = float(module.nonfinite_total)
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


class SketchSnapshot(pl.Callback):
    """Writes every seed's sketch as SVG and PNG every ``save_interval`` steps, and ``final.svg`` at the end."""

    def __init__(self, save_interval: int = 10, png: bool = True) -> None:
        self.save_interval = save_interval
        self.png = png

    def due(self, trainer, step: int) -> bool:
        return trainer.global_rank == 0 and self.save_interval > 0 and step % self.save_interval == 0

    def on_train_batch_start(self, trainer, module: SketchModule, batch, batch_idx) -> None:
        step = trainer.global_step
        evaluates = module.eval_interval > 0 and step % module.eval_interval == 0
        if self.due(trainer, step) and not evaluates:  # on eval steps: written at batch end from the eval's render
            self.write(trainer, module, step, module.points.detach())

    def on_train_batch_end(self, trainer, module: SketchModule, outputs, batch, batch_idx) -> None:
        record = module.last_eval
        if record is not None and self.due(trainer, record.step):
            self.write(trainer, module, record.step, record.points, record.sketches)

    def write(self, trainer, module: SketchModule, step: int, points: torch.Tensor, sketches=None) -> None:
        """Every seed's points [S, N, 4, 2] (and their renders [S, 3, H, W] when known) as step<step>.svg/png."""
        for i, (seed, pts) in enumerate(zip(module.seeds, points)):
            stem = seed_dir(trainer, seed) / "snapshots" / f"step{step:05d}"
            if self.png:
                save_sketch(module, pts, stem, None if sketches is None else sketches[i])
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


def checkpoint_path(run: Path) -> Path:
    return Path(run) / "checkpoints" / "last.ckpt"


def save_checkpoint(trainer: pl.Trainer) -> Path:
    """Write the trainer's checkpoint to a temporary name, then rename it over last.ckpt."""
    import os

    path = checkpoint_path(run_dir(trainer))
    tmp = path.with_name(f".{path.name}.tmp")
    trainer.save_checkpoint(tmp)
    if trainer.global_rank == 0:
        os.replace(tmp, path)
    return path


class WandbMedia(pl.Callback):
    """Pictures for a W&B dashboard; does nothing when W&B is not a logger of the run.

    Logs the input and the saliency maps with their start points at initialisation,
    every seed's sketch every ``log_image_interval`` steps, the best sketch per seed at
    the end, and the best SVG as an artifact.
    """

    def __init__(self, log_image_interval: int = 100) -> None:
        self.log_image_interval = log_image_interval

    def _images(self, trainer, key: str, images: list, captions: list[str]) -> None:
        from pytorch_lightning.loggers import WandbLogger

        from .images import to_uint8

        logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if logger is None or trainer.global_rank != 0:
            return
        pictures = [to_uint8(im) if isinstance(im, torch.Tensor) else im for im in images]
        # Through the logger, so images share Lightning's step axis with the metrics.
        logger.log_image(key, pictures, step=trainer.global_step, caption=captions)

    def on_train_start(self, trainer, module: SketchModule) -> None:
        self._images(trainer, "images/input", [module.target[0]], ["target"])
        results = module.init_results or []
        if results and results[0].saliency is not None:
            from .init import overlay

            pics = [overlay(module.target[0].cpu(), r.saliency, r.starts) for r in results]
            self._images(trainer, "images/saliency", pics, [f"seed {s}" for s in module.seeds])

    def on_train_batch_start(self, trainer, module: SketchModule, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.log_image_interval > 0 and step % self.log_image_interval == 0:
            with torch.no_grad():
                sketches = module.render()
            self._images(trainer, "images/sketch", list(sketches), [f"seed {s} step {step}" for s in module.seeds])

    def on_fit_end(self, trainer, module: SketchModule) -> None:
        from .tracking import wandb_run

        run = wandb_run(trainer)
        best = next((c for c in trainer.callbacks if isinstance(c, BestSketch)), None)
        if run is None or best is None or best.best_points is None or trainer.global_rank != 0:
            return
        with torch.no_grad():
            sketches = module.render(best.best_points.to(module.points))
        self._images(trainer, "images/best", list(sketches),
                     [f"seed {s}: eval loss {l:.4f} at step {int(t)}"
                      for s, l, t in zip(module.seeds, best.best_loss.tolist(), best.best_step)])
        import wandb

        summary = best.summary(module)
        run.summary.update({"best/loss": summary["best_loss"], "best/step": summary["best_step"],
                            "best/seed": summary["best_seed"]})
        artifact = wandb.Artifact(f"sketch-{run.id}", type="sketch", metadata=summary)
        for name in ("best.svg", "best.png"):
            if (run_dir(trainer) / name).is_file():
                artifact.add_file(str(run_dir(trainer) / name), name=name)
        run.log_artifact(artifact)
