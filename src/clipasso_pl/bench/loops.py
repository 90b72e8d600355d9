"""The timed loops of one benchmark row: the step per phase and bare, its ops, and through the Trainer.

Each loop builds nothing itself: it takes a built :class:`SketchModule` and runs its steps
the way ``training_step`` does (or Lightning does, for the trainer loop).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from ..accel import synchronize
from .timing import PHASES, StepTimes, TrainerTimer, median


def autocast_for(cfg: DictConfig, device: torch.device):
    """The autocast region the Trainer's precision plugin puts around training_step."""
    if str(cfg.precision) == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bare_loop(module, cfg: DictConfig, device: torch.device, warmup: int, steps: int, phased: bool) -> dict:
    """Run ``steps`` training steps of ``module`` without Lightning and time them.

    phased: even steps are timed per phase (a device synchronisation around each phase), odd
    steps as a whole (synchronised at both ends only), so that both see the same machine load;
    the eval (every ``eval_interval`` steps) is timed on its own and amortised over its interval.
    Not phased: no synchronisation inside the timed span (the real pipelining).
    """
    module.to(device)
    if not bool(module.initialized):
        module.initialize()
    optimizer = module.configure_optimizers()
    times, phases = StepTimes(device, warmup), {p: [] for p in PHASES}
    whole: list[float] = []  # ms of odd (whole-timed) steps without an eval
    interval = module.eval_interval
    clock, per_phase_step = [0.0], [False]

    def tick(name: str | None) -> None:
        if not per_phase_step[0]:
            return
        synchronize(device)
        now = time.perf_counter()
        if name is not None and step >= warmup:
            phases[name].append(1e3 * (now - clock[0]))
        clock[0] = now

    for step in range(steps):
        times.mark(step)
        per_phase_step[0] = phased and step % 2 == 0
        evaluates = interval > 0 and step % interval == 0
        if phased and not per_phase_step[0]:
            synchronize(device)
            start = time.perf_counter()
        tick(None)
        with autocast_for(cfg, device):
            if evaluates:
                if phased and not per_phase_step[0]:
                    synchronize(device)
                    eval_start = time.perf_counter()
                module.last_eval = module.evaluate()
                tick("eval")
                if phased and not per_phase_step[0]:
                    synchronize(device)
                    if step >= warmup:
                        phases["eval"].append(1e3 * (time.perf_counter() - eval_start))
            if phased:
                sketches = module.render()
                tick("render")
                with module.full_precision():
                    sketch_views, target_views = module.augment(sketches, module.target, module.augment_generators)
                tick("augment")
                with torch.no_grad():
                    target_feats = module.clip(target_views)
                tick("target_forward")
                sketch_feats = module.clip(sketch_views)
                with module.full_precision():
                    terms = module.loss_fn(sketch_feats, target_feats, len(module.seeds))
            else:  # what training_step runs (one compiled graph with compile=step)
                terms = step_terms(module)
            total = (terms["loss"] * module.active).sum()
            tick("sketch_forward")
        module.last_train = {k: v.detach() for k, v in terms.items()}
        module.step_finite = torch.isfinite(total)
        total.backward()
        tick("backward")
        module.optimizer_step(0, step, optimizer, lambda: None)
        optimizer.zero_grad()
        tick("optimizer")
        if phased and not per_phase_step[0]:
            synchronize(device)
            if step >= warmup and not evaluates:
                whole.append(1e3 * (time.perf_counter() - start))
    times.end()
    out = times.summary()
    if phased:
        per_phase = {p: median(v) for p, v in phases.items() if p != "eval"}
        train_sum = sum(per_phase.values())
        # The eval runs once per interval: its cost per step is its median / the interval.
        per_phase["eval"] = median(phases["eval"]) / interval if interval > 0 and phases["eval"] else 0.0
        minima = {p: min(v) for p, v in phases.items() if p != "eval" and v}
        out.update(phases_ms=per_phase, phases_sum_ms=sum(per_phase.values()),
                   train_step_median_ms=median(whole), phases_over_step=train_sum / median(whole),
                   phases_min_ms=minima, train_step_min_ms=min(whole, default=float("nan")),
                   phases_over_step_min=sum(minima.values()) / min(whole, default=float("nan")))
    return out


def step_terms(module) -> dict:
    """The training step's terms as ``training_step`` computes them (draws, then the device work)."""
    points, opacities = module.visible()
    views = module.augment.device_params(module.augment_generators, module.height, module.width, points.device,
                                         points.dtype)
    return module.step_function()(points, opacities, views)


def ops_per_step(module, cfg: DictConfig, device: torch.device) -> dict:
    """Ops, kernels (on a GPU about its launches) and host syncs of one training step that is not an
    eval step, recorded once with the dispatch recorder (``syncs.py``), outside the timed loops."""
    from ..syncs import SyncRecorder

    module.to(device)
    if not bool(module.initialized):
        module.initialize()
    optimizer = module.configure_optimizers()

    def step(index: int) -> None:
        with autocast_for(cfg, device):
            terms = step_terms(module)
            total = (terms["loss"] * module.active).sum()
        module.last_train = {k: v.detach() for k, v in terms.items()}
        module.step_finite = torch.isfinite(total)
        total.backward()
        module.optimizer_step(0, index, optimizer, lambda: None)
        optimizer.zero_grad()

    step(0)  # warm: Adam's state, a compiled graph
    with SyncRecorder() as rec:
        step(1)
    return {"ops_per_step": rec.current.ops, "kernels_per_step": rec.current.kernels,
            "syncs_per_step": len(rec.current.syncs)}


def trainer_loop(module, cfg: DictConfig, device: torch.device, warmup: int, steps: int) -> dict:
    """Run ``steps`` steps of ``module`` through the Lightning Trainer with the config's callbacks."""
    from hydra.utils import instantiate

    from ..api import build_trainer
    from ..training.steps import step_loader

    times = StepTimes(device, warmup)
    # Instrument this instance (the real methods run): host time from training_step's start to the end
    # of optimizer_step is the step's own work; the rest of the step's wall time is the fixed overhead.
    training_step, optimizer_step = module.training_step, module.optimizer_step

    def timed_training_step(*args, **kwargs):
        times.inside.append(-time.perf_counter())
        return training_step(*args, **kwargs)

    def timed_optimizer_step(*args, **kwargs):
        out = optimizer_step(*args, **kwargs)
        times.inside[-1] += time.perf_counter()
        return out

    module.training_step, module.optimizer_step = timed_training_step, timed_optimizer_step
    with tempfile.TemporaryDirectory(prefix="clipasso-bench-") as run:
        callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c] + [TrainerTimer(times)]
        cfg = cfg.copy()
        cfg.steps = steps
        trainer = build_trainer(cfg, Path(run), callbacks)
        trainer.fit(module, train_dataloaders=step_loader(steps))
    return times.summary()


def bench_row(cfg: DictConfig, target, device: torch.device, loops: list[str],
              warmup: int, repeats: int) -> dict:
    """Time one (model, S, variant) row of ``target`` (a SketchTarget) in the requested loops; returns the JSON row."""
    from ..api import build_clip, build_module

    image, mask = target.image, target.mask

    interval = max(int(cfg.eval_interval), 1)
    steps = warmup + -(-repeats // interval) * interval  # whole eval intervals are timed
    clip_and_loss = build_clip(cfg.clip)
    row: dict = {"timed_steps": steps - warmup}
    row.update(ops_per_step(build_module(cfg, image, mask, clip_and_loss=clip_and_loss), cfg, device))
    if str(cfg.compile) == "step":
        loops = [loop for loop in loops if loop != "phases"]  # one graph: no phase boundaries to time
    if "phases" in loops:
        # phases_over_step: the per-phase medians of a training step (eval excluded) over the median of
        # whole-timed training steps of the same run: 1 when the phases cover the step; the same with
        # minima (_min), steadier on a shared machine where noise only adds.
        phased = bare_loop(build_module(cfg, image, mask, clip_and_loss=clip_and_loss), cfg, device, warmup, steps, phased=True)
        row.update({k: phased[k] for k in ("phases_ms", "phases_sum_ms", "train_step_median_ms", "phases_over_step",
                                           "phases_min_ms", "train_step_min_ms", "phases_over_step_min")})
    if "bare" in loops:
        plain = bare_loop(build_module(cfg, image, mask, clip_and_loss=clip_and_loss), cfg, device, warmup, steps, phased=False)
        row.update(bare_step_ms=plain["step_ms"], bare_step_median_ms=plain["step_median_ms"])
    if "trainer" in loops:
        t = trainer_loop(build_module(cfg, image, mask, clip_and_loss=clip_and_loss), cfg, device, warmup, steps)
        row.update(trainer_step_ms=t["step_ms"], trainer_step_median_ms=t["step_median_ms"],
                   fixed_overhead_ms=t["outside_median_ms"], fixed_overhead_mean_ms=t["outside_mean_ms"])
        if "bare" in loops:
            row["overhead_ms"] = row["trainer_step_ms"] - row["bare_step_ms"]
    return row
