"""Full-step benchmark: ``clipasso-pl bench [key=value ...]`` (``make bench``).

For each CLIP model (random weights), number of seeds S and speed variant (configs/bench.yaml)
it times the training step of :class:`SketchModule` on the chosen device:

- **phases**: the step's own code (render, augment, target forward, sketch forward + loss,
  backward, Adam with the non-finite/stopped-seed selects, and the eval every
  ``eval_interval`` steps, amortised) in a plain loop, with a device synchronisation around
  every phase on even steps and around the whole step on odd steps (same machine load):
  the per-phase medians of a training step should sum to the median whole step
  (``phases_over_step``, within 10 % on a CPU).
- **bare**: the step as ``training_step`` runs it (one graph with ``compile=step``, whose rows have
  no phases), with no synchronisation inside the timed span (the real pipelining).
- **ops per step**: the aten ops, kernels (about the launches on a GPU) and host syncs of one
  training step that is not an eval step, recorded once with ``syncs.SyncRecorder``, untimed.
- **trainer**: the same module through the Lightning Trainer with the configured callbacks
  (logging, snapshots, best sketch, early stopping, checkpoints) and a CSV logger. Its
  *fixed overhead* is the host time of each step spent outside ``training_step`` ..
  ``optimizer_step`` (Lightning's loop, hooks, callbacks, logging, progress bar): median per
  step, and mean (which includes the interval work: snapshots, log writes, checkpoints);
  *trainer - bare* is the same overhead seen as a difference of two noisy step times.

Step times are the mean over whole eval intervals after ``warmup`` steps, synchronised at
both ends, and the median of per-step times. Writes ``<out>.json`` and a markdown table
``<out>.md``. ``clipasso-pl bench bench=render [--flags]`` runs the renderer benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from .accel import synchronize
from .errors import ClipassoError

PHASES = ("render", "augment", "target_forward", "sketch_forward", "backward", "optimizer", "eval")


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ClipassoError("bench.device=cuda but CUDA is not available: use bench.device=cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ClipassoError(f"bench.device={name}: use auto, cpu or cuda")
    return torch.device(name)


def row_config(cfg: DictConfig, model: str, num_seeds: int, variant: dict, device: torch.device) -> DictConfig:
    """The sketch config of one benchmark row: random CLIP weights, S seeds, the variant's speed keys."""
    row = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    del row["bench"]
    row.clip.model, row.clip.pretrained = model, None
    row.init.mode, row.init.pretrained = "random", None  # no saliency model: init is not timed
    row.seeds = list(range(num_seeds))
    for key, value in variant.items():
        row[key] = value
    row.trainer.accelerator = "gpu" if device.type == "cuda" else "cpu"
    row.trainer.devices = 1
    return row


class StepTimes:
    """Collects per-step wall times and the synchronised span over the timed steps."""

    def __init__(self, device: torch.device, warmup: int):
        self.device, self.warmup = device, warmup
        self.marks: list[float] = []
        self.inside: list[float] = []  # per step: host seconds inside the module's step (trainer loop only)

    def mark(self, index: int) -> None:
        """Called at the start of step ``index`` and once after the last step (index = count)."""
        if index == self.warmup:
            synchronize(self.device)
        self.marks.append(time.perf_counter())

    def end(self) -> None:
        synchronize(self.device)
        self.marks.append(time.perf_counter())

    def summary(self) -> dict:
        timed = self.marks[self.warmup:]
        per_step = [1e3 * (b - a) for a, b in zip(timed, timed[1:])]
        out = {"step_ms": 1e3 * (timed[-1] - timed[0]) / max(len(timed) - 1, 1),
               "step_median_ms": median(per_step), "timed_steps": len(per_step)}
        if self.inside:
            # Host time of each step outside training_step..optimizer_step: Lightning, callbacks, logging.
            outside = [t - 1e3 * m for t, m in zip(per_step, self.inside[self.warmup:])]
            out.update(outside_median_ms=median(outside), outside_mean_ms=sum(outside) / max(len(outside), 1))
        return out


class TrainerTimer(pl.Callback):
    """Marks each training step's start for :class:`StepTimes` (synchronising only at the timed span's ends)."""

    def __init__(self, times: StepTimes):
        self.times = times

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.times.mark(trainer.global_step)

    def on_train_end(self, trainer, module) -> None:
        self.times.end()


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
    from .syncs import SyncRecorder

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

    from .api import build_trainer
    from .steps import step_loader

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
    from .api import build_clip, build_module

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


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fmt(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    """One table row per (model, S, variant): phase medians, their sum, bare and trainer steps, overhead (ms)."""
    head = ["model", "S", "variant", "ops / step", "kernels / step", "syncs / step", *PHASES, "phases sum", "train step (median)", "phases / step",
            "bare step", "trainer step", "trainer - bare", "fixed overhead (median)", "fixed overhead (mean)"]
    lines = [f"Device: {report['device']} ({report['machine'].get('gpu', report['machine']['processor'] or 'cpu')}), "
             f"torch {report['machine']['torch']}, {report['machine']['threads']} threads, load average "
             f"{', '.join(f'{x:.2f}' for x in report['machine']['load_average'])}; ms per step, "
             f"{report['warmup']} warm-up steps; eval amortised over its interval.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['num_seeds']} | {r['variant']} | skipped: {r['skipped']} |")
            continue
        ph = r.get("phases_ms", {})
        cells = [r["model"], str(r["num_seeds"]), r["variant"], str(r.get("ops_per_step", "")),
                 str(r.get("kernels_per_step", "")), str(r.get("syncs_per_step", "")), *(fmt(ph.get(p), 2) for p in PHASES),
                 fmt(r.get("phases_sum_ms"), 2), fmt(r.get("train_step_median_ms"), 2), fmt(r.get("phases_over_step"), 3),
                 fmt(r.get("bare_step_ms"), 2), fmt(r.get("trainer_step_ms"), 2),
                 fmt(r.get("overhead_ms"), 2), fmt(r.get("fixed_overhead_ms"), 2),
                 fmt(r.get("fixed_overhead_mean_ms"), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_bench(cfg: DictConfig) -> dict:
    """Run the benchmark of a composed ``bench`` config; writes ``<bench.out>.json`` and ``.md``."""
    from .api import validate
    from .clip import register_tiny_models
    from .config import BENCH_VARIANTS
    from .images import atomic_write_text
    from .sketch_target import config_target

    b = cfg.bench
    register_tiny_models()
    device = resolve_device(str(b.device))
    if b.threads:
        torch.set_num_threads(int(b.threads))
    target = config_target(cfg)  # the sketch's loader: mask, official_padding and all
    rows = []
    for model in b.models:
        for num_seeds in b.num_seeds:
            for name in b.run:
                base = {"model": str(model), "num_seeds": int(num_seeds), "variant": str(name)}
                if device.type != "cuda" and name in b.cuda_only:
                    rows.append({**base, "skipped": f"no effect on {device.type}"})
                    continue
                row_cfg = row_config(cfg, str(model), int(num_seeds), dict(BENCH_VARIANTS[name]), device)
                validate(row_cfg)
                row = {**base, **bench_row(row_cfg, target, device, list(b.loops), int(b.warmup), int(b.repeats))}
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {"device": device.type, "warmup": int(b.warmup), "repeats": int(b.repeats), "machine": machine(device),
              "strokes": int(cfg.strokes), "canvas": int(cfg.canvas), "num_augs": int(cfg.augment.num_augs),
              "eval_interval": int(cfg.eval_interval), "rows": rows}
    out = Path(str(b.out))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    atomic_write_text(out.with_suffix(".md"), table)
    print(table)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return report


def main(argv: list[str] | None = None) -> int:
    """``clipasso-pl bench [key=value ...]``; ``bench=render`` hands the other arguments to the renderer benchmark."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .config import compose

    argv = list(sys.argv[1:] if argv is None else argv)
    if "bench=render" in argv:
        from .render.bench import main as render_main

        return render_main([a for a in argv if a != "bench=render"])
    try:
        cfg = compose("bench", argv)
    except (HydraException, OmegaConfBaseException) as e:
        raise ClipassoError(" ".join(str(e).split()) + " (see the keys in configs/bench.yaml)") from None
    run_bench(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
