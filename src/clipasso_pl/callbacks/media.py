"""Pictures of a run: the W&B dashboard's media and the progress animation (``progress.gif``/``.mp4``)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from ..runs import run_dir
from ..training.contract import PointSketcher
from .best import BestSketch
from .files import sketch_strokes


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

        from ..images import to_uint8

        logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if logger is None or trainer.global_rank != 0:
            return
        pictures = [to_uint8(im) if isinstance(im, torch.Tensor) else im for im in images]
        # Through the logger, so images share Lightning's step axis with the metrics.
        logger.log_image(key, pictures, step=trainer.global_step, caption=captions)

    def on_train_start(self, trainer, module: PointSketcher) -> None:
        self._images(trainer, "images/input", [module.target[0]], ["target"])
        results = module.init_results or []
        if results and results[0].saliency is not None:
            from ..init import overlay

            pics = [overlay(module.target[0].cpu(), r.saliency, r.starts) for r in results]
            self._images(trainer, "images/saliency", pics, [f"seed {s}" for s in module.seeds])

    def on_train_batch_start(self, trainer, module: PointSketcher, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.log_image_interval > 0 and step % self.log_image_interval == 0:
            with torch.no_grad():
                sketches = module.render()
            self._images(trainer, "images/sketch", list(sketches), [f"seed {s} step {step}" for s in module.seeds])

    def on_fit_end(self, trainer, module: PointSketcher) -> None:
        from ..tracking import wandb_run

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

    def frame(self, module: PointSketcher, step: int) -> tuple:
        opacities = module.opacities
        return (step, module.points.detach().cpu().clone(),
                None if opacities is None else opacities.detach().cpu().clone(), module.visible_strokes(step))

    def on_train_batch_start(self, trainer, module: PointSketcher, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.enabled and trainer.global_rank == 0 and self.interval > 0 and step % self.interval == 0:
            self.frames.append(self.frame(module, step))

    def on_fit_end(self, trainer, module: PointSketcher) -> None:
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
        from ..tracking import wandb_run

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

    from ..images import atomic_write_bytes, to_uint8

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
