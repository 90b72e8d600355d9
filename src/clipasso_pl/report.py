"""``clipasso-pl report <multirun dir>``: one table, one picture grid and one curve plot per sweep.

A sweep directory holds one job directory per configuration × target (Hydra's
multirun layout), each with ``summary.json``, ``.hydra/overrides.yaml`` and
``logs/metrics.csv``. Configurations are told apart by the swept keys, named
exactly as the config keys; ``target`` and the seeds are what results are
averaged over.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from .errors import ClipassoError
from .images import atomic_write_bytes, atomic_write_text, save_png
from .pictures import GridLayout, Tile, labelled_grid

# Overrides that select what is averaged over, or that do not change the method.
NOT_A_SETTING = ("target", "seeds", "experiment", "preset", "images", "logger", "trainer.devices", "trainer.accelerator")


@dataclass
class Job:
    path: Path
    setting: tuple[tuple[str, str], ...]
    target: str
    summary: dict

    @property
    def name(self) -> str:
        return Path(self.target).stem


@dataclass
class Row:
    setting: tuple[tuple[str, str], ...]
    jobs: list[Job] = field(default_factory=list)

    def losses(self) -> list[float]:
        return [v["best_loss"] for j in self.jobs for v in j.summary.get("per_seed", {}).values()]

    def steps(self) -> list[int]:
        return [v["best_step"] for j in self.jobs for v in j.summary.get("per_seed", {}).values()]


def read_overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.is_file() else []


def find_jobs(sweep: Path) -> list[Job]:
    jobs = []
    for summary in sorted(sweep.rglob("summary.json"), key=lambda p: _natural(p.parent.relative_to(sweep))):
        job = summary.parent
        overrides = dict(o.lstrip("+~").split("=", 1) for o in read_overrides(job) if "=" in o)
        setting = tuple(sorted((k, v) for k, v in overrides.items()
                               if not k.startswith("hydra") and k not in NOT_A_SETTING))
        data = json.loads(summary.read_text())
        jobs.append(Job(job, setting, data.get("target", overrides.get("target", "?")), data))
    return jobs


def _natural(path: Path) -> list:
    return [int(p) if p.isdigit() else p for p in path.parts]


def group_rows(jobs: list[Job]) -> list[Row]:
    rows: dict[tuple, Row] = {}
    for job in jobs:
        rows.setdefault(job.setting, Row(job.setting)).jobs.append(job)
    return list(rows.values())


def setting_keys(rows: list[Row]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys += [k for k, _ in row.setting if k not in keys]
    return keys


def table(rows: list[Row]) -> tuple[list[str], list[list]]:
    """Header and rows: swept keys, then best eval loss mean ± std over targets × seeds, steps to best, s/step."""
    keys = setting_keys(rows)
    header = [*keys, "best_loss_mean", "best_loss_std", "best_step_mean", "seconds_per_step", "targets", "runs"]
    body = []
    for row in rows:
        values = dict(row.setting)
        losses, steps = row.losses(), row.steps()
        sps = [j.summary.get("seconds_per_step", math.nan) for j in row.jobs]
        body.append([
            *(values.get(k, "") for k in keys),
            float(np.mean(losses)) if losses else math.nan,
            float(np.std(losses)) if losses else math.nan,
            float(np.mean(steps)) if steps else math.nan,
            float(np.mean(sps)),
            len({j.target for j in row.jobs}),
            len(losses),
        ])
    return header, body


def to_csv(header: list[str], body: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(body)
    return buf.getvalue()


def to_markdown(header: list[str], body: list[list], title: str) -> str:
    def cell(v):
        return f"{v:.5f}" if isinstance(v, float) else str(v)

    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def label(row: Row) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.setting) or "default"


def grid(rows: list[Row], cell: int = 128) -> Image.Image:
    """Best sketches: one row per configuration, one column per target × seed, labelled, the best loss in red."""
    columns = sorted({(j.name, s) for r in rows for j in r.jobs for s in j.summary.get("per_seed", {})},
                     key=lambda c: (c[0], int(c[1])))
    tiles: dict[tuple[int, int], Tile] = {}
    for r, row in enumerate(rows):
        for job in row.jobs:
            for seed, stats in job.summary.get("per_seed", {}).items():
                png = job.path / "seeds" / f"seed{seed}" / "best.png"
                if png.is_file():
                    tiles[r, columns.index((job.name, seed))] = Tile(Image.open(png), f"{stats['best_loss']:.4f}", "red")
    layout = GridLayout(tile=cell - 4, pitch=(cell, cell), origin=(260, 24), inset=2, row_label=(4, cell // 2 - 8, None),
                        caption=(4, cell - 16, None), rule=(200, 200, 200))
    return labelled_grid(tiles, [label(row)[:40] for row in rows], [f"{name} / seed {seed}" for name, seed in columns],
                         layout)


def eval_curve(job: Job) -> tuple[np.ndarray, np.ndarray] | None:
    metrics = next(iter(sorted(job.path.glob("logs/**/metrics.csv"))), None)
    if metrics is None:
        return None
    points = defaultdict(list)
    with open(metrics) as f:
        for rec in csv.DictReader(f):
            if rec.get("eval/loss"):
                points[int(rec["step"])].append(float(rec["eval/loss"]))
    if not points:
        return None
    steps = np.array(sorted(points))
    return steps, np.array([np.mean(points[s]) for s in steps])


def curves(rows: list[Row], title: str) -> bytes:
    """Eval loss against step per configuration (mean over targets and seeds), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for row in rows:
        found = [c for c in (eval_curve(j) for j in row.jobs) if c is not None]
        if not found:
            continue
        n = min(len(s) for s, _ in found)
        ax.plot(found[0][0][:n], np.mean([v[:n] for _, v in found], axis=0), label=label(row))
    ax.set_xlabel("step")
    ax.set_ylabel("eval loss (mean over targets and seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def log_to_wandb(jobs: list[Job], header: list[str], body: list[list], out: Path, title: str) -> None:
    """Send the table and pictures to W&B when the sweep's runs were logged there."""
    cfg = jobs[0].path / "config.yaml"
    if not cfg.is_file() or "wandb" not in str((yaml.safe_load(cfg.read_text()) or {}).get("logger") or ""):
        return
    from .tracking import wandb_logger

    experiment = (yaml.safe_load(cfg.read_text()) or {}).get("experiment")
    run = wandb_logger(out, name=f"report-{title}", group=experiment, job_type="report").experiment
    import wandb

    run.log({"report/table": wandb.Table(columns=header, data=body),
             "report/grid": wandb.Image(str(out / "grid.png")), "report/curves": wandb.Image(str(out / "curves.png"))})
    run.finish()


def report(sweep: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write report.csv, report.md, grid.png and curves.png for the sweep in ``sweep``."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise ClipassoError(f"{sweep} is not a directory: pass a multirun directory, e.g. multirun/<date>/<time>")
    jobs = find_jobs(sweep)
    if not jobs:
        raise ClipassoError(f"{sweep} holds no finished runs (no summary.json): pass the directory of a finished sweep")
    out = Path(out or sweep)
    rows = group_rows(jobs)
    header, body = table(rows)
    title = next((str(v) for j in jobs for v in [json.loads((j.path / "summary.json").read_text()).get("experiment")] if v),
                 sweep.name)
    paths = {
        "csv": atomic_write_text(out / "report.csv", to_csv(header, body)),
        "markdown": atomic_write_text(out / "report.md", to_markdown(header, body, title)),
        "grid": save_png(out / "grid.png", grid(rows)),
        "curves": atomic_write_bytes(out / "curves.png", curves(rows, title)),
    }
    log_to_wandb(jobs, header, body, out, title)
    return paths


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are a ClipassoError: one line and exit 2, like every command."""

    def error(self, message: str):
        raise ClipassoError(f"{message}: usage: clipasso-pl report <multirun dir> [--out <dir>]")


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = _Parser(prog="clipasso-pl report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="a multirun directory (Hydra's multirun/<date>/<time>)")
    parser.add_argument("--out", default=None, help="where to write the report (default: the sweep directory)")
    args = parser.parse_args(argv)
    paths = report(args.sweep, args.out)
    print(open(paths["markdown"]).read())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return paths
