"""``clipasso-pl evaluate``: sketch a photo set at several stroke counts, then measure recognition.

1. Jobs: every (photo, level) — or (photo, level, seed) with ``eval.per_seed=true`` — in a fixed
   order; ``shard=i num_shards=n`` keeps every n-th job starting at i. Each job is one
   ``api.run_sketch`` call with the evaluation's sketch settings and ``strokes=<level>``, written to
   ``<sketches>/<level>/<class>/<image stem>/``. A job whose ``best.svg`` and ``summary.json``
   exist is skipped; one interrupted after a checkpoint continues from it.
2. Metrics (only once every job's sketch is on disk, so the last shard, or a plain rerun, does
   them): zero-shot top-1/top-3 over the class prompts and instance-level top-1 for each level,
   for the photos (ceiling) and for stroke-count-matched random strokes (floor); results.csv,
   results.md, accuracy.png, examples.png, samples.csv, evaluation.json; W&B with logger=wandb.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..errors import ClipassoError
from ..images import atomic_write_text
from ..sketch_target import config_target, load_target
from .data import Dataset, Job, find_sketch, finished, load_dataset, make_jobs, shard_jobs
from .metrics import confidence_interval, recognition
from .report import (METRICS, GridCell, ResultRow, grid, load_paper_numbers, log_to_wandb, paper_values,
                     write_outputs)

# Keys of configs/evaluate.yaml that are not sketch settings (dropped from each job's sketch config).
EVALUATE_KEYS = ("data", "levels", "sketches", "eval", "shard", "num_shards")


def check_config(cfg: DictConfig) -> list[int]:
    """The levels, sorted; the values were checked against the schema (``config.validate``)."""
    from ..config import validate

    validate(cfg, "evaluate")
    return sorted(cfg.levels)


def job_config(cfg: DictConfig, job: Job) -> DictConfig:
    """The sketch config of one job: the evaluation's sketch settings, this photo, this stroke count."""
    values = OmegaConf.to_container(cfg, resolve=False)  # keep ${steps}, ${canvas}, ... live
    for key in EVALUATE_KEYS:
        values.pop(key, None)
    values.update(target=str(job.photo.path), strokes=int(job.level), seeds=list(job.seeds), path_svg=None, resume=None)
    return OmegaConf.create(values)


def sketch_store(cfg: DictConfig, run_dir: Path) -> Path:
    return Path(cfg.sketches).expanduser() if cfg.sketches else Path(run_dir) / "sketches"


def run_jobs(cfg: DictConfig, jobs: list[Job]) -> dict[str, int]:
    """Run the jobs that have no sketch yet; returns counts of made / reused / resumed sketches."""
    from ..api import run_sketch
    from ..runs import checkpoint_path

    made = reused = resumed = 0
    for i, job in enumerate(jobs, 1):
        if find_sketch(job.run_dir) is not None:
            reused += 1
            continue
        job_cfg = job_config(cfg, job)
        if (job.run_dir / "config.yaml").is_file() and checkpoint_path(job.run_dir).is_file():
            job_cfg.resume = str(job.run_dir)  # interrupted after a checkpoint: continue it
            resumed += 1
        print(f"[evaluate] sketch {i}/{len(jobs)}: {job.name} -> {job.run_dir}", flush=True)
        run_sketch(job_cfg, job.run_dir)
        if not finished(job.run_dir):
            raise ClipassoError(f"the sketch run in {job.run_dir} ended without best.svg/summary.json: see its logs and rerun")
        made += 1
    return {"sketches_made": made, "sketches_reused": reused, "sketches_resumed": resumed}


# --- loading pictures --------------------------------------------------------------------------


def load_sketch(path: Path, canvas: int, renderer) -> torch.Tensor:
    """A sketch file as [3, canvas, canvas] in [0, 1]: SVGs are drawn by the core renderer."""
    if path.suffix.lower() == ".svg":
        from ..strokes import Strokes, read_strokes

        read, (h, w) = read_strokes(path)  # any number of segments per stroke, cubic, quadratic or lines
        scale = torch.tensor([canvas / w, canvas / h])
        strokes = Strokes(read.points * scale, read.half_widths * canvas / max(h, w), read.opacities,
                          read.control_points_per_seg)
        with torch.no_grad():
            return renderer.render(strokes, canvas, canvas)[0].detach().cpu().clamp(0, 1)
    return load_target(path, size=canvas, fix_scale=True, what="sketch")


def ceiling_photos(cfg: DictConfig, dataset: Dataset) -> torch.Tensor:
    """The photos [P, 3, canvas, canvas] as their sketch jobs saw them (the sketch's loader and settings)."""
    return torch.stack([config_target(cfg, p.path, what="photo").image for p in dataset.photos])


def classifier_device(cfg: DictConfig) -> torch.device:
    want = str(cfg.eval.device)
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


def warnings_for(dataset: Dataset, cfg: DictConfig) -> list[str]:
    """Notes on the table: random weights, a dataset that is not the declared protocol, a clipped top-k."""
    from ..clip.models import is_random

    notes = []
    if is_random(cfg.eval.pretrained):
        notes.append(f"**The classifier {cfg.eval.classifier} has random weights: these accuracies are not meaningful** "
                     "(they check the pipeline, not the sketches). Use eval.pretrained=openai or a checkpoint path.")
    protocol = cfg.eval.protocol or {}
    counts = dataset.per_class()
    if protocol:
        want_c, want_p = protocol.get("classes"), protocol.get("photos_per_class")
        if (want_c and len(counts) != want_c) or (want_p and any(v != want_p for v in counts.values())):
            notes.append(f"The dataset has {len(counts)} classes with {sorted(set(counts.values()))} photos each, not the "
                         f"protocol's {want_c} x {want_p}: the paper's numbers are not a like-for-like comparison.")
    if len(counts) <= 3:
        notes.append(f"Only {len(counts)} classes: top-3 counts the top {len(counts)} (every sample a hit).")
    return notes


# --- the command -------------------------------------------------------------------------------


def run_evaluate(cfg: DictConfig, run_dir: Path) -> dict:
    """Sketch (this shard's share of) the jobs, then, once every sketch exists, write the results."""
    run_dir = Path(run_dir)
    start = time.perf_counter()
    levels = check_config(cfg)
    dataset = load_dataset(cfg.data)
    store = sketch_store(cfg, run_dir)
    per_seed = bool(cfg.eval.per_seed)
    jobs = make_jobs(dataset, levels, list(cfg.seeds), store, per_seed=per_seed)
    shard, num_shards = cfg.shard, cfg.num_shards
    mine = shard_jobs(jobs, shard, num_shards)
    print(f"[evaluate] {len(dataset.photos)} photos in {len(dataset.class_dirs)} classes x levels {levels}: "
          f"{len(jobs)} sketch jobs, {len(mine)} in shard {shard}/{num_shards}; sketches in {store}", flush=True)
    counts = run_jobs(cfg, mine)
    missing = [j for j in jobs if find_sketch(j.run_dir) is None]
    state = {"jobs": len(jobs), "shard": shard, "num_shards": num_shards, **counts, "missing": len(missing),
             "sketches": str(store)}
    if missing:
        print(f"[evaluate] {len(missing)} of {len(jobs)} sketches are not made yet (other shards): results are written "
              f"by the run that finds them all; rerun without shard= once every shard has finished", flush=True)
        atomic_write_text(run_dir / "evaluation.json", json.dumps({**state, "complete": False}, indent=2) + "\n")
        return {**state, "complete": False}
    result = measure(cfg, run_dir, dataset, levels, jobs)
    state.update(result, complete=True, wall_time_s=time.perf_counter() - start)
    atomic_write_text(run_dir / "evaluation.json", json.dumps(state, indent=2) + "\n")
    print((run_dir / "results.md").read_text(), flush=True)
    return state


def measure(cfg: DictConfig, run_dir: Path, dataset: Dataset, levels: list[int], jobs: list[Job]) -> dict:
    """Embeddings, metrics and every output file; returns the table as {row: {metric: value}}."""
    from .baseline import random_sketches
    from .classifier import ZeroShotClassifier

    e = cfg.eval
    canvas = cfg.canvas
    renderer = instantiate(cfg.renderer)
    clf = ZeroShotClassifier(e.classifier, e.pretrained, list(e.templates), bool(e.ensemble),
                             classifier_device(cfg), int(e.batch_size))
    class_emb = clf.encode_classes(dataset.class_names)
    photos = ceiling_photos(cfg, dataset)
    photo_emb = clf.encode_images(photos)
    photo_labels = torch.tensor([p.label for p in dataset.photos])
    ci_kw = dict(kind=str(e.ci), level=float(e.ci_level), resamples=int(e.bootstrap_resamples))
    paper = load_paper_numbers(e.paper)
    rows: list[ResultRow] = []
    samples: list[list] = []
    shown: dict[tuple, GridCell] = {}

    def add_row(name: str, kind: str, strokes: int | None, images: torch.Tensor, owners: list[int], files: list[str]):
        emb = clf.encode_images(images)
        own = torch.tensor(owners)
        scores = recognition(emb, photo_labels[own], class_emb, photo_emb, photo_labels, own)
        rows.append(ResultRow(name, kind, strokes, scores.n, scores.accuracy,
                              {m: confidence_interval(getattr(scores, "instance" if m == "instance_top1" else m), **ci_kw)
                               for m in METRICS},
                              paper_values(paper, strokes) if kind == "sketch" else {}))
        for k, o in enumerate(owners):
            p = dataset.photos[o]
            pred = dataset.class_dirs[int(scores.predicted[k])]
            samples.append([kind, "" if strokes is None else strokes, p.class_dir, p.path.name, files[k], pred,
                            int(scores.top1[k]), int(scores.top3[k]), int(scores.instance[k])])
            shown.setdefault((kind, strokes, o), GridCell(images[k], pred, bool(scores.top1[k])))

    add_row("photos (ceiling)", "photo", None, photos, [p.index for p in dataset.photos],
            [str(p.path) for p in dataset.photos])
    for level in levels:
        level_jobs = [j for j in jobs if j.level == level]
        files = [find_sketch(j.run_dir) for j in level_jobs]
        images = torch.stack([load_sketch(f, canvas, renderer) for f in files])
        add_row(f"{level} strokes", "sketch", level, images, [j.photo.index for j in level_jobs], [str(f) for f in files])
    if e.random_baseline:
        for level in levels:
            images = random_sketches(renderer, len(dataset.photos), level, canvas, cfg.half_width,
                                     cfg.init.radius, seed=cfg.seeds[0])
            add_row(f"random {level} strokes (floor)", "random", level, images, [p.index for p in dataset.photos],
                    ["random"] * len(dataset.photos))
    # Sketch rows first (by strokes), then the ceiling, then the floor rows: the paper's order of reading.
    order = {"sketch": 0, "photo": 1, "random": 2}
    rows.sort(key=lambda r: (order[r.kind], r.strokes or 0))

    title = (f"Recognition of sketches of {len(dataset.photos)} photos in {len(dataset.class_dirs)} classes "
             f"({e.classifier}, {e.pretrained or 'random weights'})")
    notes = warnings_for(dataset, cfg) + [
        f"classifier: {e.classifier} / {e.pretrained or 'random weights'}; prompts: {list(e.templates)}"
        f"{' (ensembled)' if e.ensemble and len(e.templates) > 1 else ''}; classes: {', '.join(dataset.class_names)}",
        f"intervals: {e.ci} at {float(e.ci_level):.0%}; ties count against the true class / own photo",
        f"sketches in {sketch_store(cfg, run_dir)}: {'each seed is a sample' if e.per_seed else 'best of seeds'}; "
        f"those made by this evaluation: seeds {list(cfg.seeds)}, {cfg.steps} steps, clip {cfg.clip.model} / "
        f"{cfg.clip.pretrained or 'random weights'}",
        "instance top-1: the sketch's own photo ranks first among the photos of its class (image-embedding cosine)",
    ]
    if paper:
        notes.append(f"paper numbers: {' '.join(str(paper.get('source', '')).split())}")
        if all(v is None for m in ("top1", "top3") for v in (paper.get(m) or {}).values()):
            notes.append(f"paper numbers not filled in: {' '.join(str(paper.get('status', '')).split())}")
    grid_image = example_grid(dataset, levels, shown, int(e.examples))
    paths = write_outputs(run_dir, rows, f"{e.ci} {float(e.ci_level):.0%}", paper is not None, notes, title,
                          1.0 / len(dataset.class_dirs), grid_image)
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["kind", "strokes", "class", "image", "file", "predicted", "top1", "top3", "instance_top1"])
    writer.writerows(samples)
    paths["samples"] = atomic_write_text(run_dir / "samples.csv", buf.getvalue())
    logger = cfg.logger
    if logger and "wandb" in str(logger.get("_target_", "")):
        log_to_wandb(run_dir, rows, f"{e.ci} {float(e.ci_level):.0%}", paper is not None, paths,
                     name=f"evaluate-{run_dir.name}", group=cfg.experiment,
                     config={k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
                             for k in ("data", "levels", "eval", "steps", "seeds") if k in cfg})
    return {"results": {r.row: {"n": r.n, **r.accuracy} for r in rows},
            "outputs": {k: str(v) for k, v in paths.items()}}


def example_grid(dataset: Dataset, levels: list[int], shown: dict[tuple, GridCell], count: int):
    """Up to ``count`` photos, one class after another, and their sketches at every level."""
    by_class: dict[int, list[int]] = {}
    for p in dataset.photos:
        by_class.setdefault(p.label, []).append(p.index)
    picked, depth = [], 0
    while len(picked) < count and any(depth < len(v) for v in by_class.values()):
        picked += [v[depth] for v in by_class.values() if depth < len(v)][: count - len(picked)]
        depth += 1
    row_keys = [("photo", None), *(("sketch", lv) for lv in levels)]
    labels = ["photo", *(f"{lv} strokes" for lv in levels)]
    cells = [[shown.get((kind, strokes, o)) for o in picked] for kind, strokes in row_keys]
    columns = [f"{dataset.photos[o].class_dir}/{dataset.photos[o].stem}" for o in picked]
    return grid(labels, columns, cells)
