"""A scene run's matrix directory on disk: the settings fingerprint it was made with, the stages
finished in it (each writes ``done.json`` last, atomically) and what they hold.

Reruns and sweep jobs sharing one ``matrix_dir`` skip the stages found here; a stage made
with other settings is refused, never mixed in.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ClipassoError
from ..images import atomic_write_bytes, atomic_write_text, resolve_target
from .inputs import PARTS
from .matrix import cell_dir

# Keys that do not change what a finished stage contains (so they may differ between runs
# sharing a matrix_dir).
_VOLATILE = ("cells", "matrix_dir", "layers", "levels", "logger", "trainer", "save_interval", "tile_size", "hydra",
             "experiment")


def fingerprint(cfg: DictConfig) -> str:
    """A hash of every setting that shapes a stage's result."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data = {k: v for k, v in data.items() if k not in _VOLATILE}
    data["target"] = str(resolve_target(cfg.target))
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_matrix_dir(root: Path, cfg: DictConfig, write: bool = True) -> str:
    """Refuse a matrix_dir made with other settings; record ours in ``scene.json`` (when ``write``)."""
    fp = fingerprint(cfg)
    meta = root / "scene.json"
    if meta.is_file():
        try:
            old = json.loads(meta.read_text()).get("fingerprint")
        except (OSError, ValueError):
            old = None
        if old is not None and old != fp:
            raise ClipassoError(f"matrix_dir {root} holds cells made with other settings: pass a new matrix_dir "
                                "(or the same settings as before) to avoid mixing them")
    elif write:
        atomic_write_text(meta, json.dumps({"fingerprint": fp, "target": str(resolve_target(cfg.target))}, indent=2) + "\n")
    return fp


# ------------------------------------------------------------------ stages
@dataclass
class Stage:
    """A finished stage (one part at the fidelity level or one simplicity level).

    points: [N, 4, 2] and half_widths: [N] of every stroke at the chosen step (canvas px);
    kept: [N] bool, the strokes written to the SVG; meta: what done.json holds; trained_state:
    what state.pt holds, kept in memory for a stage trained in this process (a DDP rank > 0
    writes no files, so it cannot read them back).
    """

    folder: Path
    meta: dict
    points: torch.Tensor
    half_widths: torch.Tensor
    kept: torch.Tensor
    trained_state: dict | None = None

    @property
    def loss(self) -> float:
        return float(self.meta["loss"])

    def state(self) -> dict:
        """The MLP weights etc. to warm-start the next level (read on demand: they are large)."""
        if self.trained_state is not None:
            return self.trained_state
        return torch.load(self.folder / "state.pt", map_location="cpu", weights_only=True)


def load_stage(folder: Path, fp: str) -> Stage | None:
    """The stage finished in ``folder``, or None when it has not finished."""
    done = folder / "done.json"
    if not done.is_file():
        return None
    meta = json.loads(done.read_text())
    if meta.get("fingerprint") != fp:
        raise ClipassoError(f"{folder} was made with other settings: pass a new matrix_dir or delete that folder")
    sketch = torch.load(folder / "sketch.pt", map_location="cpu", weights_only=True)
    return Stage(folder, meta, sketch["points"], sketch["half_widths"], sketch["kept"])


def save_torch(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def collect(root: Path, cfg: DictConfig, fp: str) -> dict:
    """Per-row fidelity and per-cell results of everything finished on disk."""
    parts = [p for p in PARTS if p in cfg.parts]
    rows, cells = [], []
    for layer in cfg.layers:
        stages = {p: load_stage(cell_dir(root, layer, None) / p, fp) for p in parts}
        if all(stages.values()):
            rows.append({"layer": int(layer), "loss": {p: s.loss for p, s in stages.items()},
                         "strokes_kept": {p: s.meta["strokes_kept"] for p, s in stages.items()},
                         "seconds": sum(s.meta["seconds"] for s in stages.values()),
                         "files": str(cell_dir(root, layer, None).relative_to(root))})
        for level in range(cfg.levels):
            stages = {p: load_stage(cell_dir(root, layer, level) / p, fp) for p in parts}
            if not all(stages.values()):
                continue
            kept = {p: s.meta["strokes_kept"] for p, s in stages.items()}
            cells.append({
                "layer": int(layer), "level": level,
                "ratio": {p: s.meta["ratio"] for p, s in stages.items()},
                "strokes_kept": {**kept, "combined": sum(kept.values())},
                "loss": {p: s.loss for p, s in stages.items()},
                "seconds": sum(s.meta["seconds"] for s in stages.values()),
                "files": str(cell_dir(root, layer, level).relative_to(root)),
            })
    return {"fidelity": rows, "cells": cells}
