"""Build a sketch run from a config and run it: the body of ``clipasso-pl sketch`` and of ``sketch()``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import warnings
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .accel import apply_speed_config
from .errors import ClipassoError, user_error
from .images import atomic_write_text, resolve_target, save_png
from .runs import build_logger, ensure_writable, new_run_dir, resume_config
from .sketch_target import config_target


@dataclass
class SketchResult:
    """What a finished sketch run left behind."""

    run_dir: Path
    best_svg: Path
    best_png: Path
    summary: dict
    rank: int = 0  # the DDP global rank that returned it (rank 0 writes the files)

    @property
    def best_loss(self) -> float:
        return self.summary["best_loss"]

    @property
    def best_seed(self) -> int:
        return self.summary["best_seed"]

    @property
    def best_step(self) -> int:
        return self.summary["best_step"]


def validate(cfg: DictConfig) -> DictConfig:
    """Check a sketch config against the schema (``config.validate``): one ClipassoError naming the bad key."""
    from .config import validate as check

    return check(cfg, "sketch")


def target_path(cfg: DictConfig) -> Path:
    return resolve_target(cfg.target)


def build_clip(clip_cfg: DictConfig, device: torch.device | str = "cpu"):
    """The frozen CLIP feature extractor and the loss over its layers, from the ``clip`` config group."""
    from .clip import ClipFeatures
    from .losses import ClipassoLoss

    features = ClipFeatures(clip_cfg.model, clip_cfg.pretrained)
    loss = ClipassoLoss(list(clip_cfg.conv_layer_weights), clip_cfg.fc_weight, layer_names=features.layer_names,
                        conv_loss_type=clip_cfg.conv_loss_type)
    return features.to(device), loss


def path_svg_strokes(cfg: DictConfig):
    """The strokes of ``path_svg`` scaled to the canvas (a batch of one), checked against the stroke options."""
    from .strokes import read_strokes

    strokes, (h, w) = read_strokes(cfg.path_svg, num_strokes=cfg.strokes)
    k, c = cfg.num_segments, cfg.control_points_per_seg
    if (strokes.num_segments, strokes.control_points_per_seg) != (k, c):
        raise ClipassoError(
            f"path_svg {cfg.path_svg} has strokes of {strokes.num_segments} segment(s) of {strokes.control_points_per_seg} "
            f"points but num_segments={k} control_points_per_seg={c}: set num_segments={strokes.num_segments} "
            f"control_points_per_seg={strokes.control_points_per_seg}"
        )
    strokes.points = strokes.points * torch.tensor([cfg.canvas / w, cfg.canvas / h])
    return strokes


def initial_points(cfg: DictConfig) -> torch.Tensor | None:
    """Points [S, N, P, 2] from ``path_svg`` (the same strokes for every seed), or None."""
    if not cfg.path_svg:
        return None
    return path_svg_strokes(cfg).points.expand(len(cfg.seeds), -1, -1, -1).clone()


def initial_opacities(cfg: DictConfig) -> torch.Tensor | None:
    """With force_sparse, the stroke opacities of ``path_svg`` [S, N] (trained from there), else None."""
    if not cfg.path_svg or not cfg.force_sparse:
        return None
    return path_svg_strokes(cfg).opacities.expand(len(cfg.seeds), -1).clone()


def lr_schedule(cfg: DictConfig):
    """``lr_scheduler=true``: step -> the official schedule's lr (see :mod:`clipasso_pl.schedules`); else None."""
    if not cfg.lr_scheduler:
        return None
    from functools import partial

    from .schedules import official_lr

    return partial(official_lr, lr=cfg.lr, steps=total_steps(cfg), lr_end=cfg.lr_end,
                   lr_warmup_steps=cfg.lr_warmup_steps, lr_warmup_start=cfg.lr_warmup_start)


def build_text_guide(cfg: DictConfig):
    """The CLIP text term of ``text_target`` / ``clip_text_guide``, or None when the weight is 0."""
    if not cfg.clip_text_guide:
        return None
    from .clip.text import ClipTextGuide

    return ClipTextGuide(cfg.text_clip.model, cfg.text_clip.pretrained, str(cfg.text_target))


def build_module(cfg: DictConfig, target: torch.Tensor, mask: torch.Tensor | None = None,
                 clip_and_loss: tuple | None = None):
    """The SketchModule of ``cfg`` for ``target`` [3, H, W]; ``mask`` [H, W] (bool) restricts the
    saliency map when ``mask_object_attention`` is on; ``clip_and_loss`` reuses an already built
    (CLIP, loss) pair."""
    from .module import SketchModule

    clip, loss = clip_and_loss or build_clip(cfg.clip)
    apply_speed_config(cfg, clip)
    init = instantiate(cfg.init)
    if cfg.mask_object_attention and mask is not None:
        init.attention_mask = mask
    return SketchModule(
        target=target,
        clip=clip,
        loss=loss,
        augment=instantiate(cfg.augment),
        renderer=instantiate(cfg.renderer),
        init=init,
        seeds=list(cfg.seeds),
        strokes=cfg.strokes,
        half_width=cfg.half_width,
        lr=cfg.lr,
        eval_interval=cfg.eval_interval,
        initial_points=initial_points(cfg),
        max_nonfinite=cfg.max_nonfinite,
        num_segments=cfg.num_segments,
        control_points_per_seg=cfg.control_points_per_seg,
        force_sparse=cfg.force_sparse,
        color_lr=cfg.color_lr,
        color_vars_threshold=cfg.color_vars_threshold,
        num_stages=cfg.num_stages,
        stage_steps=cfg.steps,
        initial_opacities=initial_opacities(cfg),
        lr_schedule=lr_schedule(cfg),
        text_guide=build_text_guide(cfg),
        text_weight=cfg.clip_text_guide,
        compile_step=step_backend(cfg),
    )


def step_backend(cfg: DictConfig) -> str | None:
    """The torch.compile backend of ``compile=step`` (``compile_backend``, default inductor), or None."""
    if str(cfg.compile) != "step":
        return None
    backend = str(cfg.compile_backend or "inductor")
    import torch._dynamo

    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ClipassoError(f"compile_backend={backend}: use a torch.compile backend "
                            f"({', '.join(torch._dynamo.list_backends())})")
    return backend


def total_steps(cfg: DictConfig) -> int:
    """Steps of the whole run: ``steps`` per stage."""
    return cfg.steps * cfg.num_stages


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list):
    extra = {}
    if int(cfg.num_stages) > 1:  # trainer.max_steps (${steps}) counts the steps of one stage
        extra["max_steps"] = int(cfg.trainer.max_steps) * int(cfg.num_stages)
    return instantiate(cfg.trainer, callbacks=callbacks, logger=build_logger(cfg, run_dir), default_root_dir=str(run_dir),
                       **extra)


# The frozen CLIP is in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# Skipping a non-finite step returns None on purpose; the skip is counted and logged.
warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`.*")


def run_sketch(cfg: DictConfig, run_dir: str | Path, callbacks: list | None = None) -> SketchResult:
    """Sketch ``cfg.target`` into ``run_dir``; returns the paths of the best sketch and the summary.

    With ``cfg.resume`` set to an earlier run directory, that run continues from its
    last checkpoint, in its own directory, with its saved config. ``callbacks``: extra
    Lightning callbacks after the configured ones (the web app's watcher).
    """
    from .callbacks.best import BestSketch
    from .training.steps import step_loader

    launched = datetime.now().isoformat(timespec="milliseconds")
    ckpt = None
    if cfg.resume:
        cfg, ckpt = resume_config(cfg.resume)
        run_dir = cfg.resume
    validate(cfg)
    run_dir = Path(run_dir)
    loaded = config_target(cfg)
    target = loaded.image
    module = build_module(cfg, target, loaded.mask)
    ensure_writable(run_dir)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c] + list(callbacks or [])
    trainer = build_trainer(cfg, run_dir, callbacks)
    if ckpt is None and trainer.global_rank == 0:  # under DDP, rank 0 alone writes (its rank is known from here on)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        save_png(run_dir / "input.png", target)
        if loaded.mask is not None:
            save_png(run_dir / "mask.png", loaded.mask.float())
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    started = datetime.now().isoformat(timespec="milliseconds")
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=step_loader(total_steps(cfg)), ckpt_path=ckpt)
    wall = time.perf_counter() - start
    best = next((c for c in callbacks if isinstance(c, BestSketch)), None)
    steps_run = int(trainer.global_step)
    summary: dict[str, Any] = {
        **(best.summary(module) if best else {}),
        "steps_run": steps_run,
        # steps whose loss or gradient was non-finite (a static render that overflowed included): not applied
        "skipped_steps": int(module.nonfinite.total) if module.nonfinite is not None else 0,
        "seconds_per_step": wall / max(steps_run, 1),
        "wall_time_s": wall,
        "renderer": type(module.renderer).__name__,
        "clip_model": cfg.clip.model,
        "clip_weights": str(cfg.clip.pretrained) if cfg.clip.pretrained else "random",
        "init": cfg.init.mode,
        "strokes": cfg.strokes,
        "experiment": cfg.experiment,
        "world_size": int(trainer.world_size),
        "rank_divergence": module.rank_divergence,
        # the step each DDP rank ended at (None: training never reached its end hook)
        "rank_steps": module.rank_steps if module.rank_steps is not None else [steps_run],
        "seeds": list(cfg.seeds),
        "target": str(target_path(cfg)),
        "launched": launched,  # before loading models and the target
        "started": started,  # training start
        "finished": datetime.now().isoformat(timespec="milliseconds"),
    }
    if trainer.global_rank == 0:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        for lg in trainer.loggers:
            lg.log_metrics({"time/total_s": wall}, step=steps_run)
    return SketchResult(run_dir, run_dir / "best.svg", run_dir / "best.png", summary, int(trainer.global_rank))


def sketch(target: str | Path | None = None, run_dir: str | Path | None = None,
           overrides: list[str] | None = None, **values: Any) -> SketchResult:
    """Sketch one image from Python: ``sketch("photo.png", strokes=16)``.

    Keyword values are config keys (``strokes``, ``seeds``, ``steps``, ...); ``overrides``
    takes Hydra override strings (``["preset=smoke", "clip=rn50"]``). Every failure a user
    can fix (a bad value, an unwritable output, Lightning's or Pillow's refusals) is raised
    as one :class:`ClipassoError`; anything else is a bug and propagates as it is.
    """
    from .config import compose

    try:
        cfg = compose("sketch", overrides, **({"target": str(target)} if target is not None else {}), **values)
        return run_sketch(cfg, run_dir or new_run_dir())
    except Exception as e:  # the error boundary of the Python API: a user-fixable failure is one ClipassoError
        problem = user_error(e)
        if problem is None or problem is e:
            raise
        raise problem from e
