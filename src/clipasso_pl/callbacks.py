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
                count: int | None = None, image: torch.Tensor | None = None) -> None:
    """Write ``stem``.svg and ``stem``.png for one sketch. points: [M, P, 2]; opacities: [M] or None (all 1);
    image: its render [3, H, W] when already known (an eval step's), else rendered here."""
    strokes = sketch_strokes(module, points, opacities, count)
    write_sketch_svg(module, strokes, stem)
    if image is None:
        with torch.no_grad():
            image = module.renderer.render(strokes, module.height, module.width)[0]
    save_png(stem.with_suffix(".png"), image)


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
            self.write(trainer, module, step, module.points.detach(), seed_opacities(module))

    def on_train_batch_end(self, trainer, module: SketchModule, outputs, batch, batch_idx) -> None:
        record = module.last_eval
        if record is not None and self.due(trainer, record.step):
            trained = getattr(record, "opacities", None)  # the scene module's records have none
            opacities = [None] * len(module.seeds) if trained is None else list(trained)
            self.write(trainer, module, record.step, record.points, opacities, getattr(record, "sketches", None))

    def write(self, trainer, module: SketchModule, step: int, points: torch.Tensor, opacities: list,
              sketches: torch.Tensor | None = None) -> None:
        """Every seed's points [S, M, P, 2], opacities (per seed [M] or None) and, when known, their renders
        [S, 3, H, W] as step<step>.svg/png."""
        for i, (seed, pts, ops) in enumerate(zip(module.seeds, points, opacities)):
            stem = seed_dir(trainer, seed) / "snapshots" / f"step{step:05d}"
            if self.png:
                save_sketch(module, pts, stem, ops, image=None if sketches is None else sketches[i])
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
        # (step, points [S, M, P, 2], opacities [S, M] or None, strokes drawn then)
        self.frames: list[tuple[int, torch.Tensor, torch.Tensor | None, int]] = []

    def frame(self, module: SketchModule, step: int) -> tuple:
        opacities = getattr(module, "opacities", None)
        return (step, module.points.detach().cpu().clone(),
                None if opacities is None else opacities.detach().cpu().clone(), module.visible_strokes(step))

    def on_train_batch_start(self, trainer, module: SketchModule, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.enabled and trainer.global_rank == 0 and self.interval > 0 and step % self.interval == 0:
            self.frames.append(self.frame(module, step))

    def on_fit_end(self, trainer, module: SketchModule) -> None:
        if not self.enabled or trainer.global_rank != 0:
            return
        if not self.frames or self.frames[-1][0] != trainer.global_step:
            self.frames.append(self.frame(module, trainer.global_step))
        best = next((c for c in trainer.callbacks if isinstance(c, BestSketch)), None)
        index = best.best_seed_index if best is not None and best.best_loss is not None else 0
        with torch.no_grad():  # each frame as that step drew it: its opacities and the strokes of its stages
            pictures = [module.render(points[index][None].to(module.points),
                                      None if opacities is None else opacities[index][None].to(module.points),
                                      count)[0]
                        for _, points, opacities, count in self.frames]
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
