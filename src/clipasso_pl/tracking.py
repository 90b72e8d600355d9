"""Weights & Biases: a logger that never kills a sketch, and the media it shows.

W&B's own conventions decide the mode: ``WANDB_MODE`` when set, online when the user
is logged in (an API key in the environment or ~/.netrc), offline otherwise; offline
runs are uploaded later with ``wandb sync <run dir>/wandb/offline-run-*``. When an
online start fails (no key, server unreachable) the run continues offline after a
one-line warning.
"""

from __future__ import annotations

import netrc
import os
import warnings
from pathlib import Path
from typing import Any


def wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:  # `wandb login` stores the key in ~/.netrc
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def wandb_logger(save_dir: str | Path, project: str = "clipasso-pl", name: str | None = None,
                 group: str | None = None, job_type: str | None = "sketch", tags: list[str] | None = None,
                 version: str | None = None, **kwargs: Any):
    """A Lightning ``WandbLogger`` whose run is already started (online, else offline)."""
    from pytorch_lightning.loggers import WandbLogger

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    tags = list(tags or []) + ([group] if group and group not in (tags or []) else [])
    common = dict(project=project, name=name or save_dir.name, group=group, job_type=job_type,
                  tags=tags, save_dir=str(save_dir), **kwargs)
    mode = wandb_mode()
    if mode != "offline":
        try:
            logger = WandbLogger(mode=mode, settings=_settings(timeout=20), **common)
            logger.experiment  # noqa: B018 - start the run now, so a failure is caught here
            return logger
        except Exception as e:  # noqa: BLE001 - any W&B failure must fall back, not kill the sketch
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            warnings.warn(f"W&B could not start online ({first[:160]}); logging offline to {save_dir}/wandb "
                          "(upload later with `wandb sync`)", stacklevel=2)
            _finish_quietly()
    logger = WandbLogger(mode="offline", settings=_settings(), **common)
    logger.experiment  # noqa: B018
    return logger


def _settings(timeout: int | None = None):
    import wandb

    kw: dict[str, Any] = {"console": "off", "silent": True}
    if timeout:
        kw["init_timeout"] = timeout
    return wandb.Settings(**kw)


def _finish_quietly() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1, quiet=True)
    except Exception:  # noqa: BLE001
        pass


def wandb_run(trainer) -> Any | None:
    """The W&B run of the trainer's loggers, or None when W&B is not one of them."""
    try:
        from pytorch_lightning.loggers import WandbLogger
    except ImportError:
        return None
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            return lg.experiment
    return None
