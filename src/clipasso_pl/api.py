"""Build a sketch run from a config and run it: the body of ``clipasso-pl sketch`` and of ``sketch()``."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import warnings
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .accel import apply_speed_config, check_speed_config
from .errors import ClipassoError
from .images import atomic_write_text, load_target, resolve_target, save_png


@dataclass
class SketchResult:
    """What a finished sketch run left behind."""

    run_dir: Path
    best_svg: Path
    best_png: Path
    summary: dict

    @property
    def best_loss(self) -> float:
        return self.summary["best_loss"]

    @property
    def best_seed(self) -> int:
        return self.summary["best_seed"]

    @property
    def best_step(self) -> int:
        return self.summary["best_step"]


def validate(cfg: DictConfig) -> None:
    """Refuse config values that cannot work, with the key and the fix."""
    if int(cfg.strokes) < 1:
        raise ClipassoError(f"strokes={cfg.strokes}: the number of strokes must be at least 1")
    if not cfg.seeds:
        raise ClipassoError("seeds=[] is empty: give at least one seed, e.g. seeds=[0]")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ClipassoError(f"seeds={list(cfg.seeds)} repeats a seed: give distinct seeds")
    if int(cfg.steps) < 1:
        raise ClipassoError(f"steps={cfg.steps}: run at least 1 step")
    if float(cfg.half_width) <= 0:
        raise ClipassoError(f"half_width={cfg.half_width} must be positive")
    check_speed_config(cfg)


def target_path(cfg: DictConfig) -> Path:
    return resolve_target(cfg.target)


def build_clip(clip_cfg: DictConfig, device: torch.device | str = "cpu"):
    """The frozen CLIP feature extractor and the loss over its layers, from the ``clip`` config group."""
    from .clip import ClipFeatures
    from .losses import ClipassoLoss

    features = ClipFeatures(clip_cfg.model, clip_cfg.pretrained)
    loss = ClipassoLoss(list(clip_cfg.conv_layer_weights), float(clip_cfg.fc_weight), layer_names=features.layer_names)
    return features.to(device), loss


def initial_points(cfg: DictConfig) -> torch.Tensor | None:
    """Points [S, N, 4, 2] from ``path_svg`` (the same strokes for every seed), or None."""
    if not cfg.path_svg:
        return None
    from .strokes import read_svg

    points, _, _, (h, w) = read_svg(cfg.path_svg, num_strokes=int(cfg.strokes))
    scale = torch.tensor([cfg.canvas / w, cfg.canvas / h])
    return (points * scale).expand(len(cfg.seeds), -1, -1, -1).clone()


def build_module(cfg: DictConfig, target: torch.Tensor, clip_and_loss: tuple | None = None):
    """The SketchModule of a sketch config; ``clip_and_loss`` reuses an already built (CLIP, loss) pair."""
    from .module import SketchModule

    clip, loss = clip_and_loss or build_clip(cfg.clip)
    apply_speed_config(cfg, clip)
    return SketchModule(
        target=target,
        clip=clip,
        loss=loss,
        augment=instantiate(cfg.augment),
        renderer=instantiate(cfg.renderer),
        init=instantiate(cfg.init),
        seeds=list(cfg.seeds),
        strokes=int(cfg.strokes),
        half_width=float(cfg.half_width),
        lr=float(cfg.lr),
        eval_interval=int(cfg.eval_interval),
        initial_points=initial_points(cfg),
        max_nonfinite=int(cfg.get("max_nonfinite", 10)),
    )


def build_logger(cfg: DictConfig, run_dir: Path):
    if not cfg.get("logger"):
        return False
    if cfg.get("resume") and "version" in cfg.logger:  # keep the first part's logs
        return instantiate(cfg.logger, save_dir=str(run_dir), version=datetime.now().strftime("resumed-%H-%M-%S-%f"))
    return instantiate(cfg.logger, save_dir=str(run_dir))


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list):
    return instantiate(cfg.trainer, callbacks=callbacks, logger=build_logger(cfg, run_dir), default_root_dir=str(run_dir))


def ensure_writable(run_dir: Path) -> None:
    """Refuse a run directory that cannot be created or written, before any work is done."""
    existing = Path(run_dir).absolute()
    while not existing.exists():
        existing = existing.parent
    reason = None
    if not existing.is_dir():
        reason = f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"no write permission on {existing}"
    if reason is None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / ".write_test").write_bytes(b"")
            (run_dir / ".write_test").unlink()
        except OSError as e:
            reason = e.strerror
    if reason:
        raise ClipassoError(f"output directory {run_dir} is not writable ({reason}): choose a writable hydra.run.dir=<dir>")


def resume_config(resume: str | Path) -> tuple[DictConfig, Path]:
    """The saved config of the run in ``resume`` and its last checkpoint."""
    from .callbacks import checkpoint_path

    run = Path(resume)
    ckpt = checkpoint_path(run)
    if not (run / "config.yaml").is_file():
        raise ClipassoError(f"resume={run} is not a clipasso-pl run directory (no config.yaml): pass the run's output directory")
    if not ckpt.is_file():
        raise ClipassoError(f"resume={run} has no checkpoint {ckpt}: the run stopped before its first checkpoint_interval; start it again")
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.resume = str(run)
    return cfg, ckpt


# The frozen CLIP is in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# Skipping a non-finite step returns None on purpose; the skip is counted and logged.
warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`.*")


def run_sketch(cfg: DictConfig, run_dir: str | Path) -> SketchResult:
    """Sketch ``cfg.target`` into ``run_dir``; returns the paths of the best sketch and the summary.

    With ``cfg.resume`` set to an earlier run directory, that run continues from its
    last checkpoint, in its own directory, with its saved config.
    """
    from .callbacks import BestSketch
    from .module import step_loader

    launched = datetime.now().isoformat(timespec="milliseconds")
    ckpt = None
    if cfg.get("resume"):
        cfg, ckpt = resume_config(cfg.resume)
        run_dir = cfg.resume
    validate(cfg)
    run_dir = Path(run_dir)
    target = load_target(target_path(cfg), size=int(cfg.canvas), fix_scale=bool(cfg.fix_scale))
    module = build_module(cfg, target)
    ensure_writable(run_dir)
    if ckpt is None:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        save_png(run_dir / "input.png", target)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c]
    trainer = build_trainer(cfg, run_dir, callbacks)
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    started = datetime.now().isoformat(timespec="milliseconds")
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=step_loader(int(cfg.steps)), ckpt_path=ckpt)
    wall = time.perf_counter() - start
    best = next((c for c in callbacks if isinstance(c, BestSketch)), None)
    steps_run = int(trainer.global_step)
    summary: dict[str, Any] = {
        **(best.summary(module) if best else {}),
        "steps_run": steps_run,
        "seconds_per_step": wall / max(steps_run, 1),
        "wall_time_s": wall,
        "renderer": type(module.renderer).__name__,
        "clip_model": cfg.clip.model,
        "clip_weights": str(cfg.clip.pretrained) if cfg.clip.pretrained else "random",
        "init": cfg.init.mode,
        "strokes": int(cfg.strokes),
        "experiment": cfg.get("experiment"),
        "world_size": int(trainer.world_size),
        "rank_divergence": getattr(module, "rank_divergence", 0.0),
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
    return SketchResult(run_dir, run_dir / "best.svg", run_dir / "best.png", summary)


def pin_job_device(cfg: DictConfig, job_num: int) -> None:
    """In a sweep on one machine, job ``n`` uses GPU ``n mod (visible GPUs)``; CPU when there are none."""
    count = torch.cuda.device_count()
    if count and cfg.trainer.get("devices", 1) == 1 and cfg.trainer.get("strategy", "auto") == "auto":
        cfg.trainer.accelerator = "gpu"
        cfg.trainer.devices = [job_num % count]


def new_run_dir(root: str | Path = "outputs") -> Path:
    """A fresh run directory ``outputs/<date>/<time>`` that no earlier run owns."""
    now = datetime.now()
    base = Path(root) / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S-%f")
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}_{i}"), i + 1
    return path


def sketch(target: str | Path | None = None, run_dir: str | Path | None = None,
           overrides: list[str] | None = None, **values: Any) -> SketchResult:
    """Sketch one image from Python: ``sketch("photo.png", strokes=16)``.

    Keyword values are config keys (``strokes``, ``seeds``, ``steps``, ...); ``overrides``
    takes Hydra override strings (``["preset=smoke", "clip=rn50"]``).
    """
    from .config import compose

    cfg = compose("sketch", overrides, **({"target": str(target)} if target is not None else {}), **values)
    return run_sketch(cfg, run_dir or new_run_dir())
