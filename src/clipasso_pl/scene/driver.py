"""``clipasso-pl scene``: run the fidelity x simplicity matrix of one scene photo, cell by cell.

Order per row (layer l): the fidelity runs (background, foreground), then simplicity levels
0, 1, ... each warm-started from the level before; after each level, the foreground and
background sketches of that cell are composited. Every stage writes ``done.json`` last
(atomically), so a rerun with the same ``matrix_dir`` skips finished stages; ``cells=``
picks rows or cells, so sweep jobs can share one ``matrix_dir`` and spread its rows over
GPUs. The matrix picture and ``summary.json`` are rebuilt from what is on disk after
every run.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from ..errors import ClipassoError
from ..images import atomic_write_bytes, atomic_write_text, resolve_target, save_png
from ..strokes import Strokes, write_svg
from .inputs import PARTS, SceneInputs, prepare_inputs
from .losses import SceneClipLoss, block_name
from .matrix import cell_dir, matrix_picture, parse_cells
from .module import SceneSketchModule
from .ratios import simplicity_ratios, step_size

# Keys that do not change what a finished stage contains (so they may differ between runs
# sharing a matrix_dir).
_VOLATILE = ("cells", "matrix_dir", "layers", "levels", "logger", "trainer", "save_interval", "tile_size", "hydra",
             "experiment")


# ----------------------------------------------------------------- config checks
def validate(cfg: DictConfig) -> DictConfig:
    """Check a scene config against the schema (``config.validate``): one ClipassoError naming the bad key."""
    from ..config import validate as check

    return check(cfg, "scene")


def fingerprint(cfg: DictConfig) -> str:
    """A hash of every setting that shapes a stage's result."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data = {k: v for k, v in data.items() if k not in _VOLATILE}
    data["target"] = str(resolve_target(cfg.target))
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_matrix_dir(root: Path, cfg: DictConfig) -> str:
    """Refuse a matrix_dir made with other settings; record ours in ``scene.json``."""
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
    else:
        atomic_write_text(meta, json.dumps({"fingerprint": fp, "target": str(resolve_target(cfg.target))}, indent=2) + "\n")
    return fp


# ------------------------------------------------------------------ stages
@dataclass
class Stage:
    """A finished stage (one part at the fidelity level or one simplicity level).

    points: [N, 4, 2] and half_widths: [N] of every stroke at the chosen step (canvas px);
    kept: [N] bool, the strokes written to the SVG; meta: what done.json holds.
    """

    folder: Path
    meta: dict
    points: torch.Tensor
    half_widths: torch.Tensor
    kept: torch.Tensor

    @property
    def loss(self) -> float:
        return float(self.meta["loss"])

    def state(self) -> dict:
        """The MLP weights etc. to warm-start the next level (read on demand: they are large)."""
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


def object_mask_at(mask: torch.Tensor, size: int) -> torch.Tensor:
    """The object mask [H, W] bool resized (nearest) to [size, size]."""
    resized = torch.nn.functional.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")
    return resized[0, 0] > 0.5


def save_torch(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class SceneRunner:
    """Runs and resumes the stages of one scene; holds the shared CLIP, renderer and inputs."""

    def __init__(self, cfg: DictConfig, root: Path, inputs: SceneInputs, fp: str, callbacks: list | None = None):
        from ..clip import ClipFeatures

        self.cfg, self.root, self.inputs, self.fp = cfg, root, inputs, fp
        self.callbacks = list(callbacks or [])  # extra callbacks of every stage (the web app's watcher)
        self.canvas = cfg.canvas
        self.clip = ClipFeatures(cfg.clip.model, cfg.clip.pretrained)
        self.renderer = instantiate(cfg.renderer)
        self._init = None
        self.timings: list[dict] = []
        for layer in list(cfg.layers) + ([cfg.object_anchor_layer] if "foreground" in cfg.parts else []):
            block_name(int(layer), self.clip.layer_names)

    @property
    def init(self):
        if self._init is None:
            self._init = instantiate(self.cfg.init)
        return self._init

    def loss(self, part: str, layer: int) -> SceneClipLoss:
        anchor = self.cfg.object_anchor_layer if part == "foreground" else None
        return SceneClipLoss(self.clip.layer_names, layer, anchor, self.cfg.object_anchor_weight, 1.0,
                             self.cfg.clip.conv_loss_type)

    def module(self, part: str, layer: int, initial_points: torch.Tensor, **kwargs) -> SceneSketchModule:
        cfg = self.cfg
        return SceneSketchModule(
            target=self.inputs.target(part, self.canvas), clip=self.clip, loss=self.loss(part, layer),
            augment=instantiate(cfg.augment), renderer=self.renderer, initial_points=initial_points,
            seeds=list(cfg.seeds), half_width=cfg.half_width, lr=cfg.lr, width_lr=cfg.width_lr,
            hidden=cfg.hidden, offset_scale=cfg.offset_scale, gradnorm=cfg.gradnorm, **kwargs)

    def fit(self, module: SceneSketchModule, folder: Path, steps: int, callbacks: list) -> float:
        from ..runs import build_logger
        from ..callbacks.loss_logger import LayerLossLogger
        from ..training.steps import step_loader

        logger = build_logger(self.cfg, folder)
        trainer = instantiate(self.cfg.trainer, max_steps=steps, callbacks=[LayerLossLogger(), *callbacks, *self.callbacks],
                              logger=logger, default_root_dir=str(folder))
        start = time.perf_counter()
        trainer.fit(module, train_dataloaders=step_loader(steps))
        return time.perf_counter() - start

    def finish(self, module: SceneSketchModule, folder: Path, part: str, stem: Path, meta: dict,
               seconds: float, steps: int, initial_points: torch.Tensor) -> Stage:
        """Pick the best evaluation, write the sketch files, the state and done.json (last)."""
        seed_index, record, states = module.best()
        points, keep = record.points[seed_index], record.keep[seed_index]
        kept = module.keep_vector(keep)
        half_widths = keep * module.half_width
        self.write_sketch(stem, points[kept], half_widths[kept], self.canvas)
        save_torch(folder / "state.pt", {
            "initial_points": initial_points, "location": states["location"], "width": states["width"],
            "optimizer": states["optimizer"], "keep_mask": kept,
        })
        save_torch(folder / "sketch.pt", {"points": points, "half_widths": half_widths, "kept": kept})
        terms = {k: float(v[seed_index]) for k, v in record.terms.items()}
        meta = {
            **meta, "part": part, "loss": terms["clip"], "total": terms["loss"], "terms": terms,
            "strokes_kept": int(kept.sum()), "strokes": int(kept.numel()),
            "best_seed": module.seeds[seed_index], "best_step": record.step, "steps": steps,
            "seconds": seconds, "seconds_per_step": seconds / max(steps, 1),
            "sketch": stem.name + ".svg", "fingerprint": self.fp,
        }
        atomic_write_text(folder / "done.json", json.dumps(meta, indent=2) + "\n")
        self.timings.append({k: meta[k] for k in ("part", "layer", "level", "seconds")})
        return Stage(folder, meta, points, half_widths, kept)

    def write_sketch(self, stem: Path, points: torch.Tensor, half_widths: torch.Tensor, size: int) -> None:
        """``stem``.svg and ``stem``.png of strokes points [K, 4, 2], half_widths [K] on a size x size canvas."""
        write_svg(stem.with_suffix(".svg"), points, half_widths, torch.ones_like(half_widths), size, size)
        save_png(stem.with_suffix(".png"), self.raster(points, half_widths, size))

    # -------------------------------------------------------------- fidelity
    def fidelity(self, part: str, layer: int) -> Stage:
        folder = cell_dir(self.root, layer, None) / part
        done = load_stage(folder, self.fp)
        if done is not None:
            return done
        cfg, fid = self.cfg, self.cfg.fidelity
        target = self.inputs.target(part, self.canvas)
        results = [self.init(target, cfg.strokes, torch.Generator().manual_seed(s)) for s in cfg.seeds]
        initial = torch.stack([r.points for r in results])  # [S, N, 4, 2]
        if results[0].saliency is not None:
            from ..init import overlay

            save_png(folder / "attention.png", overlay(target, results[0].saliency, results[0].starts))
        module = self.module(part, layer, initial, eval_start=fid.eval_start, eval_interval=fid.eval_interval,
                             select="lowest")
        if part == "background":
            steps = fid.background_steps
        else:
            steps = fid.foreground_steps_deep if layer >= fid.deep_layer else fid.foreground_steps
        callbacks = []
        if cfg.save_interval > 0:
            from ..callbacks.files import SketchSnapshot

            callbacks.append(SketchSnapshot(cfg.save_interval))
        seconds = self.fit(module, folder, steps, callbacks)
        seed_index = module.best()[0]
        return self.finish(module, folder, part, folder.parent / part, {"layer": layer, "level": None, "ratio": None},
                           seconds, steps, initial[seed_index])

    # ------------------------------------------------------------ simplicity
    def ratios(self, part: str, layer: int, fidelity: Stage) -> list[float]:
        sim = self.cfg.simplicity
        sizes = sim.background_step_sizes if part == "background" else sim.foreground_step_sizes
        step = step_size(layer, list(sim.step_layers), list(sizes))
        return simplicity_ratios(fidelity.loss, self.cfg.levels, step, sim.halvings)

    def level(self, part: str, layer: int, level: int, previous: Stage, ratio: float) -> Stage:
        folder = cell_dir(self.root, layer, level) / part
        done = load_stage(folder, self.fp)
        if done is not None:
            return done
        sim = self.cfg.simplicity
        state = previous.state()
        keep_mask = state["keep_mask"] if sim.nested else None
        # Level 0 starts a fresh width MLP and fresh Adam states from the fidelity row's location
        # MLP; later levels carry both MLPs and both optimisers' states over (official).
        module = self.module(
            part, layer, state["initial_points"], eval_start=sim.eval_start, eval_interval=sim.eval_interval,
            simplify=True, ratio=ratio, temperature=sim.temperature, keep_threshold=sim.keep_threshold,
            keep_mask=keep_mask, location_states=state["location"], width_states=state["width"],
            optimizer_state=state.get("optimizer"), stream_offset=7919 * (level + 1), select="zscore")
        steps = sim.steps
        seconds = self.fit(module, folder, steps, [])
        return self.finish(module, folder, part, folder.parent / part, {"layer": layer, "level": level, "ratio": ratio},
                           seconds, steps, state["initial_points"])

    # --------------------------------------------------------------- combine
    def combine(self, stages: dict[str, Stage], folder: Path) -> int:
        """Composite both parts at ``combined_size``; returns the stroke count.

        As the official combine step: stroke widths x ``combined_width_scale``, background
        strokes erased inside the object mask, the object's strokes drawn over them (the
        darker pixel wins). combined.svg holds every kept stroke of both parts.
        """
        size = self.cfg.combined_size
        scale = size / self.canvas
        width_scale = self.cfg.combined_width_scale
        layers, all_points, all_widths = {}, [], []
        for part in PARTS:
            stage = stages.get(part)
            if stage is None:
                continue
            p = stage.points[stage.kept]
            if part == "foreground":
                p = self.inputs.placement.inverse(p, self.canvas)
            layers[part] = (p * scale, stage.half_widths[stage.kept] * width_scale)
            all_points.append(layers[part][0])
            all_widths.append(layers[part][1])
        points, widths = torch.cat(all_points), torch.cat(all_widths)
        write_svg((folder / "combined").with_suffix(".svg"), points, widths, torch.ones_like(widths), size, size)
        image = None
        for part in PARTS:
            if part not in layers:
                continue
            raster = self.raster(*layers[part], size)
            if part == "background" and "foreground" in layers and self.inputs.mask is not None:
                raster[:, object_mask_at(self.inputs.mask, size)] = 1.0
            image = raster if image is None else torch.minimum(image, raster)
        save_png(folder / "combined.png", image)
        return int(points.shape[0])

    def raster(self, points: torch.Tensor, half_widths: torch.Tensor, size: int) -> torch.Tensor:
        """[3, size, size] of strokes points [K, 4, 2], half_widths [K] (white when K = 0)."""
        if points.shape[0] == 0:
            return torch.ones(3, size, size)
        ones = torch.ones_like(half_widths)
        with torch.no_grad():
            return self.renderer.render(Strokes(points[None].float(), half_widths[None].float(), ones[None].float()),
                                        size, size)[0].clone()

    def row(self, layer: int, last_level: int) -> None:
        parts = [p for p in PARTS if p in self.cfg.parts]
        previous = {part: self.fidelity(part, layer) for part in parts}
        kept = self.combine(previous, cell_dir(self.root, layer, None))
        print(f"scene cell layer {layer} fidelity: {kept} strokes", flush=True)
        ratios = {part: self.ratios(part, layer, previous[part]) for part in parts}
        for level in range(last_level + 1):
            folder = cell_dir(self.root, layer, level)
            current = {part: self.level(part, layer, level, previous[part], ratios[part][level]) for part in parts}
            kept = self.combine(current, folder)  # cheap; redone so a resumed cell always has its composite
            print(f"scene cell layer {layer} level {level}: {kept} strokes ({folder})", flush=True)
            previous = current


# ------------------------------------------------------------------ outputs
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


def write_matrix(root: Path, cfg: DictConfig, results: dict) -> Path:
    """``matrix.png``: rows = layers, columns = simplicity levels, each tile the combined sketch."""
    layers, levels = list(cfg.layers), cfg.levels
    tiles, captions = {}, {}
    for cell in results["cells"]:
        r, c = layers.index(cell["layer"]), cell["level"]
        with Image.open(root / cell["files"] / "combined.png") as im:
            tiles[(r, c)] = im.copy()
        captions[(r, c)] = f"{cell['strokes_kept']['combined']} strokes"
    picture = matrix_picture(tiles, [f"layer {layer}" for layer in layers], [f"level {k}" for k in range(levels)],
                             captions, cfg.tile_size,
                             title=f"{Path(str(resolve_target(cfg.target))).name}: rows = fidelity (ViT block), "
                                   "columns = simplicity")
    return save_png(root / "matrix.png", picture)


def run_scene(cfg: DictConfig, run_dir: str | Path, callbacks: list | None = None) -> dict:
    """Run (or resume) the scene matrix of ``cfg.target``; returns the summary written to summary.json.

    ``callbacks``: extra Lightning callbacks for every stage (the web app's watcher)."""
    from ..runs import ensure_writable

    validate(cfg)
    root = Path(cfg.matrix_dir or run_dir)
    ensure_writable(root)
    wanted = parse_cells(cfg.cells, list(cfg.layers), cfg.levels)
    inputs = prepare_inputs(
        cfg.target, list(cfg.parts), cfg.mask, cfg.background, cfg.max_size, cfg.square,
        cfg.dilation, cfg.inpaint_radius, cfg.inpaint_method, cfg.resize_obj,
        cfg.object_fraction, cfg.mask_model, cfg.lama_weights)
    fp = check_matrix_dir(root, cfg)
    inputs.save(root / "inputs")
    atomic_write_text(root / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    start = time.perf_counter()
    runner = SceneRunner(cfg, root, inputs, fp, callbacks)
    for layer, last_level in wanted.items():
        runner.row(layer, last_level)
    wall = time.perf_counter() - start
    results = collect(root, cfg, fp)
    matrix = write_matrix(root, cfg, results)
    expected = len(cfg.layers) * cfg.levels
    summary = {
        "target": str(resolve_target(cfg.target)), "layers": [int(x) for x in cfg.layers], "levels": cfg.levels,
        "parts": list(cfg.parts), "strokes": cfg.strokes, "seeds": list(cfg.seeds),
        "inpainting": inputs.inpainting,
        "clip_model": cfg.clip.model, "clip_weights": str(cfg.clip.pretrained) if cfg.clip.pretrained else "random",
        "complete": len(results["cells"]) == expected, "cells_done": len(results["cells"]), "cells_total": expected,
        "matrix_png": matrix.name, **results, "this_run": {"wall_time_s": wall, "stages": runner.timings},
    }
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"scene matrix: {matrix} ({len(results['cells'])}/{expected} cells; this run {wall:.1f} s, "
          f"{len(runner.timings)} stages trained)")
    return summary
