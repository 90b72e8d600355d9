"""Composing configs: where the Hydra configs live (``config_dir``), composing one from Python as the
CLI would (``compose``, checked by ``validate``), a Python value as an override string, and the
``${images:...}`` resolver that expands a sweep's folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .schema import SCHEMA
from .validate import validate

# This file is clipasso_pl/config/compose.py: the package is parents[1], the repository root parents[3].
_PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # wheel install (force-included)
_REPO_CONFIGS = Path(__file__).resolve().parents[3] / "configs"  # source checkout / editable install


def config_dir() -> Path:
    """The directory holding ``sketch.yaml`` and the config groups."""
    for d in (_REPO_CONFIGS, _PACKAGE_CONFIGS):
        if (d / "sketch.yaml").is_file():
            return d
    raise FileNotFoundError(f"clipasso-pl configs not found in {_REPO_CONFIGS} or {_PACKAGE_CONFIGS}")


def override_value(value: Any) -> str:
    """A Python value as a Hydra override value: lists, None, bools, numbers, strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return text if all(c.isalnum() or c in "-_./~" for c in text) else "'" + text.replace("'", "\\'") + "'"


def compose(config_name: str = "sketch", overrides: list[str] | None = None, check: bool = True,
            **values: Any) -> DictConfig:
    """Compose a config as the CLI would, with overrides as strings and/or keyword values, and
    check it against SCHEMA (``check=False`` skips that).

    ``compose("sketch", ["preset=smoke"], strokes=8, seeds=[0])``
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    all_overrides = list(overrides or []) + [f"{k}={override_value(v)}" for k, v in values.items()]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=all_overrides)
    return validate(cfg, config_name) if check and config_name in SCHEMA else cfg


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def expand_images(images: str) -> str:
    """The ``images`` of a sweep as the comma-separated targets Hydra sweeps over.

    ``images`` is a comma-separated list of targets (paths or ``skimage:<name>``), or a
    folder, which stands for every image file in it (sorted).
    """
    folder = Path(str(images))
    if "," not in str(images) and folder.is_dir():
        files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"images={folder} holds no image files")
        return ",".join(files)
    return str(images)


if not OmegaConf.has_resolver("images"):
    OmegaConf.register_new_resolver("images", expand_images)
