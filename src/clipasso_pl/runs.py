"""Run plumbing shared by every command: run directories, writability, loggers, checkpoint paths,
device pinning.

No maths and no models: ``api`` (sketch), ``scene.driver``, ``evaluate``, the CLI, the callbacks
and the app take their run directories and checkpoint files from here.

Layout of a sketch run directory ``<run>``: ``config.yaml``, ``seeds/seed<k>/`` (per seed),
``checkpoints/last.ckpt`` (the latest checkpoint, what ``resume=<run>`` continues from).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .errors import ClipassoError

if TYPE_CHECKING:
    import pytorch_lightning as pl


# ----------------------------------------------------------------- directories
def new_run_dir(root: str | Path = "outputs") -> Path:
    """A fresh run directory ``outputs/<date>/<time>`` that no earlier run owns."""
    now = datetime.now()
    base = Path(root) / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S-%f")
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}_{i}"), i + 1
    return path


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
            probe = run_dir / f".write_test.{os.getpid()}"  # one per process: DDP ranks check the same directory
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            reason = e.strerror
    if reason:
        raise ClipassoError(f"output directory {run_dir} is not writable ({reason}): choose a writable hydra.run.dir=<dir>")


def run_dir(trainer: pl.Trainer) -> Path:
    """The run directory of a fit: the trainer's ``default_root_dir``."""
    return Path(trainer.default_root_dir)


def seed_dir(trainer: pl.Trainer, seed: int) -> Path:
    """``<run>/seeds/seed<seed>``: the files of one seed."""
    return run_dir(trainer) / "seeds" / f"seed{seed}"


# --------------------------------------------------------------------- loggers
def build_logger(cfg: DictConfig, run_dir: Path):
    """The ``logger`` group's logger writing under ``run_dir``, or False for ``logger=none``.

    A resumed run logs to a new version, so the first part's logs are kept."""
    if not cfg.logger:
        return False
    if cfg.get("resume") and "version" in cfg.logger:  # keep the first part's logs (get: a scene config has no resume)
        return instantiate(cfg.logger, save_dir=str(run_dir), version=datetime.now().strftime("resumed-%H-%M-%S-%f"))
    return instantiate(cfg.logger, save_dir=str(run_dir))


# ----------------------------------------------------------------- checkpoints
def writes_outputs() -> bool:
    """Whether this process writes a run's files: global rank 0. Lightning sets the rank from the
    launcher's environment at import and again when a strategy sets up, so it holds before the
    first Trainer exists (the scene runs many)."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def checkpoint_path(run: Path) -> Path:
    """The checkpoint a run resumes from: ``<run>/checkpoints/last.ckpt``."""
    return Path(run) / "checkpoints" / "last.ckpt"


def save_checkpoint(trainer: pl.Trainer) -> Path:
    """Write the trainer's checkpoint to a temporary name, then rename it over last.ckpt."""
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


def resume_config(resume: str | Path) -> tuple[DictConfig, Path]:
    """The saved config of the run in ``resume`` and its last checkpoint."""
    run = Path(resume)
    ckpt = checkpoint_path(run)
    if not (run / "config.yaml").is_file():
        raise ClipassoError(f"resume={run} is not a clipasso-pl run directory (no config.yaml): pass the run's output directory")
    if not ckpt.is_file():
        raise ClipassoError(f"resume={run} has no checkpoint {ckpt}: the run stopped before its first checkpoint_interval; start it again")
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.resume = str(run)
    return cfg, ckpt


# ---------------------------------------------------------------------- devices
def pin_job_device(cfg: DictConfig, job_num: int) -> None:
    """In a sweep on one machine, job ``n`` uses GPU ``n mod (visible GPUs)``; CPU when there are none."""
    count = torch.cuda.device_count()
    if count and cfg.trainer.get("devices", 1) == 1 and cfg.trainer.get("strategy", "auto") == "auto":
        cfg.trainer.accelerator = "gpu"
        cfg.trainer.devices = [job_num % count]
