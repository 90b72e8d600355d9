"""Callbacks around SketchModule: initialisation, logging, snapshots, best sketch, early stop.

Every callback writes under ``trainer.default_root_dir`` (the run directory) and
only from global rank 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from .images import atomic_write_text, save_png
from .module import SketchModule
from .strokes import write_svg


def run_dir(trainer: pl.Trainer) -> Path:
    return Path(trainer.default_root_dir)


def seed_dir(trainer: pl.Trainer, seed: int) -> Path:
    return run_dir(trainer) / "seeds" / f"seed{seed}"


def sketch_strokes(module: SketchModule, points: torch.Tensor, opacities: torch.Tensor | None = None,
                   count: int | None = None):
    """One sketch as a batch of one: points [M, P, 2], opacities [M] (None: the module's rule), the first ``count``.

    Without opacities and count only ``module.strokes(points)`` is called, which the scene module also offers.
    """
    if opacities is None and count is None:
        return module.strokes(points[None].to(module.points))
    return module.strokes(points[None].to(module.points), None if opacities is None else opacities[None], count)


def write_sketch_svg(module: SketchModule, strokes, stem: Path) -> None:
    write_svg(stem.with_suffix(".svg"), strokes.points[0], strokes.half_widths[0], strokes.opacities[0],
              module.height, module.width, strokes.control_points_per_seg)


def save_sketch(module: SketchModule, points: torch.Tensor, stem: Path, opacities: torch.Tensor | None = None,
                count: int | None = None) -> None:
    """Write ``stem``.svg and ``stem``.png for one sketch. points: [M, P, 2]; opacities: [M] or None (all 1)."""
    strokes = sketch_strokes(module, points, opacities, count)
    write_sketch_svg(module, strokes, stem)
    with torch.no_grad():
        save_png(stem.with_suffix(".png"), module.renderer.render(strokes, module.height, module.width)[0])


def seed_opacities(module: SketchModule) -> list:
    """Each seed's trained opacities [M] (force_sparse), else None per seed."""
    if getattr(module, "opacities", None) is None:  # not trained (or the scene module)
        return [None] * len(module.seeds)
    return list(module.opacities.detach())


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
        metrics["train/lr"] = torch.tensor(trainer.optimizers[0].param_groups[0]["lr"])
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
        for seed, pts, ops in zip(module.seeds, module.points.detach(), seed_opacities(module)):
            stem = seed_dir(trainer, seed) / "snapshots" / f"step{step:05d}"
            if self.png:
                save_sketch(module, pts, stem, ops)
            else:
                write_sketch_svg(module, sketch_strokes(module, pts, ops), stem)

    def on_fit_end(self, trainer, module: SketchModule) -> None:
        if trainer.global_rank != 0:
            return
        for seed, pts, ops in zip(module.seeds, module.points.detach(), seed_opacities(module)):
            save_sketch(module, pts, seed_dir(trainer, seed) / "final", ops)


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

    def on_train_batch_end(self, trainer, module: SketchModule, outputs, batch, batch_idx) -> None:
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

    def summary(self, module: SketchModule) -> dict:
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

    def write(self, trainer, module: SketchModule) -> None:
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

    def on_train_batch_end(self, trainer, module: SketchModule, outputs, batch, batch_idx) -> None:
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


def checkpoint_path(run: Path) -> Path:
    return Path(run) / "checkpoints" / "last.ckpt"


def save_checkpoint(trainer: pl.Trainer) -> Path:
    """Write the trainer's checkpoint to a temporary name, then rename it over last.ckpt."""
    import os

    path = checkpoint_path(run_dir(trainer))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        trainer.save_checkpoint(tmp)
        if trainer.global_rank == 0:
            os.replace(tmp, path)
    except OSError:  # e.g. a full disk: drop the partial file, keep the previous checkpoint
        if trainer.global_rank == 0:
            tmp.unlink(missing_ok=True)
        raise
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
            sketches = torch.cat([module.renderer.render(sketch_strokes(module, pts, **best.best_strokes(i)),
                                                         module.height, module.width)
                                  for i, pts in enumerate(best.best_points)])
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


class ProgressAnimation(pl.Callback):
    """``progress.gif`` (``progress.mp4`` when imageio-ffmpeg is installed): the best seed's sketch
    every ``interval`` steps and at the end, as on the official README; logged to W&B as a video.

    Keeps only the control points of each frame (restored on resume, so the animation
    covers the whole run) and renders the best seed's frames once, at fit end.
    """

    def __init__(self, enabled: bool = True, interval: int = 10, fps: int = 10) -> None:
        self.enabled = bool(enabled)
        self.interval = int(interval)
        self.fps = int(fps)
        self.frames: list[tuple[int, torch.Tensor]] = []  # (step, points [S, N, 4, 2])

    def on_train_batch_start(self, trainer, module: SketchModule, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.enabled and trainer.global_rank == 0 and self.interval > 0 and step % self.interval == 0:
            self.frames.append((step, module.points.detach().cpu().clone()))

    def on_fit_end(self, trainer, module: SketchModule) -> None:
        if not self.enabled or trainer.global_rank != 0:
            return
        if not self.frames or self.frames[-1][0] != trainer.global_step:
            self.frames.append((trainer.global_step, module.points.detach().cpu().clone()))
        best = next((c for c in trainer.callbacks if isinstance(c, BestSketch)), None)
        index = best.best_seed_index if best is not None and best.best_loss is not None else 0
        with torch.no_grad():
            pictures = [module.render(points[index][None].to(module.points))[0] for _, points in self.frames]
        path = write_animation(run_dir(trainer) / "progress", pictures, self.fps)
        from .tracking import wandb_run

        run = wandb_run(trainer)
        if run is not None:
            import wandb

            run.log({"progress": wandb.Video(str(path), format=path.suffix[1:])})

    def state_dict(self) -> dict:
        return {"frames": self.frames}

    def load_state_dict(self, state_dict: dict) -> None:
        self.frames = list(state_dict.get("frames", []))


def write_animation(stem: Path, pictures: list[torch.Tensor], fps: int = 10) -> Path:
    """Frames [3, H, W] in [0, 1] -> ``stem``.mp4 when imageio-ffmpeg is installed, else ``stem``.gif; atomically."""
    import importlib.util
    import io
    import os
    import tempfile

    from PIL import Image

    from .images import atomic_write_bytes, to_uint8

    arrays = [to_uint8(p) for p in pictures]
    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        import imageio.v2 as imageio

        path = stem.with_suffix(".mp4")
        fd, tmp = tempfile.mkstemp(prefix=".progress.", suffix=".mp4", dir=stem.parent)
        os.close(fd)
        imageio.mimsave(tmp, arrays, fps=fps, macro_block_size=1)
        os.replace(tmp, path)
        return path
    buf = io.BytesIO()
    images = [Image.fromarray(a) for a in arrays]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return atomic_write_bytes(stem.with_suffix(".gif"), buf.getvalue())
