"""``clipasso-pl scene``: run the fidelity x simplicity matrix of one scene photo, cell by cell.

Order per row (layer l): the fidelity runs (background, foreground), then simplicity levels
0, 1, ... each warm-started from the level before; after each level, the foreground and
background sketches of that cell are composited. Every stage writes ``done.json`` last
(atomically), so a rerun with the same ``matrix_dir`` skips finished stages; ``cells=``
picks rows or cells, so sweep jobs can share one ``matrix_dir`` and spread its rows over
GPUs. The matrix picture and ``summary.json`` are rebuilt from what is on disk after
every run (:mod:`.store`). Under DDP every rank trains every stage in step; rank 0 alone
writes files and reports.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..images import atomic_write_text, resolve_target, save_png
from ..strokes import Strokes, write_svg
from .inputs import PARTS, SceneInputs, prepare_inputs
from .losses import SceneClipLoss, block_name
from .matrix import cell_dir, parse_cells, write_matrix
from .module import SceneSketchModule
from .ratios import simplicity_ratios, step_size
from .store import Stage, check_matrix_dir, collect, load_stage, save_torch

# ----------------------------------------------------------------- config checks
def validate(cfg: DictConfig) -> DictConfig:
    """Check a scene config against the schema (``config.validate``): one ClipassoError naming the bad key."""
    from ..config import validate as check

    return check(cfg, "scene")


def object_mask_at(mask: torch.Tensor, size: int) -> torch.Tensor:
    """The object mask [H, W] bool resized (nearest) to [size, size]."""
    resized = torch.nn.functional.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")
    return resized[0, 0] > 0.5


class SceneRunner:
    """Runs and resumes the stages of one scene; holds the shared CLIP, renderer and inputs."""

    def __init__(self, cfg: DictConfig, root: Path, inputs: SceneInputs, fp: str, callbacks: list | None = None,
                 writes: bool = True):
        from ..clip import ClipFeatures

        self.cfg, self.root, self.inputs, self.fp = cfg, root, inputs, fp
        self.writes = writes  # False on a DDP rank > 0: it trains every stage in step with rank 0, writes nothing
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
        state = {"initial_points": initial_points, "location": states["location"], "width": states["width"],
                 "optimizer": states["optimizer"], "keep_mask": kept}
        terms = {k: float(v[seed_index]) for k, v in record.terms.items()}
        meta = {
            **meta, "part": part, "loss": terms["clip"], "total": terms["loss"], "terms": terms,
            "strokes_kept": int(kept.sum()), "strokes": int(kept.numel()),
            "best_seed": module.seeds[seed_index], "best_step": record.step, "steps": steps,
            "seconds": seconds, "seconds_per_step": seconds / max(steps, 1),
            "sketch": stem.name + ".svg", "fingerprint": self.fp,
        }
        if self.writes:
            self.write_sketch(stem, points[kept], half_widths[kept], self.canvas)
            save_torch(folder / "state.pt", state)
            save_torch(folder / "sketch.pt", {"points": points, "half_widths": half_widths, "kept": kept})
            atomic_write_text(folder / "done.json", json.dumps(meta, indent=2) + "\n")  # last: the stage is done
        self.timings.append({k: meta[k] for k in ("part", "layer", "level", "seconds")})
        return Stage(folder, meta, points, half_widths, kept, state)

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
        if results[0].saliency is not None and self.writes:
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
        if not self.writes:
            return int(points.shape[0])
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

    def say(self, line: str) -> None:
        if self.writes:  # one report per run, not one per DDP rank
            print(line, flush=True)

    def row(self, layer: int, last_level: int) -> None:
        parts = [p for p in PARTS if p in self.cfg.parts]
        previous = {part: self.fidelity(part, layer) for part in parts}
        kept = self.combine(previous, cell_dir(self.root, layer, None))
        self.say(f"scene cell layer {layer} fidelity: {kept} strokes")
        ratios = {part: self.ratios(part, layer, previous[part]) for part in parts}
        for level in range(last_level + 1):
            folder = cell_dir(self.root, layer, level)
            current = {part: self.level(part, layer, level, previous[part], ratios[part][level]) for part in parts}
            kept = self.combine(current, folder)  # cheap; redone so a resumed cell always has its composite
            self.say(f"scene cell layer {layer} level {level}: {kept} strokes ({folder})")
            previous = current


# ------------------------------------------------------------------ outputs
def run_scene(cfg: DictConfig, run_dir: str | Path, callbacks: list | None = None) -> dict:
    """Run (or resume) the scene matrix of ``cfg.target``; returns the summary written to summary.json.

    ``callbacks``: extra Lightning callbacks for every stage (the web app's watcher)."""
    from ..runs import ensure_writable, writes_outputs

    validate(cfg)
    writes = writes_outputs()
    root = Path(cfg.matrix_dir or run_dir)
    ensure_writable(root)
    wanted = parse_cells(cfg.cells, list(cfg.layers), cfg.levels)
    inputs = prepare_inputs(
        cfg.target, list(cfg.parts), cfg.mask, cfg.background, cfg.max_size, cfg.square,
        cfg.dilation, cfg.inpaint_radius, cfg.inpaint_method, cfg.resize_obj,
        cfg.object_fraction, cfg.mask_model, cfg.lama_weights)
    fp = check_matrix_dir(root, cfg, write=writes)
    if writes:
        inputs.save(root / "inputs")
        atomic_write_text(root / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    start = time.perf_counter()
    runner = SceneRunner(cfg, root, inputs, fp, callbacks, writes)
    for layer, last_level in wanted.items():
        runner.row(layer, last_level)
    wall = time.perf_counter() - start
    if not writes:  # a DDP rank > 0: rank 0 collects and writes the results
        return {"this_run": {"wall_time_s": wall, "stages": runner.timings}, "writes": False}
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
