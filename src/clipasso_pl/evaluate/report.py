"""The evaluation's outputs: results table (CSV + Markdown), accuracy plot, example grid, W&B.

Column names are stable API (one name per value): ``row``, ``kind`` (sketch | photo | random),
``strokes``, ``n``, ``top1``, ``top3``, ``instance_top1``, each accuracy with ``<name>_ci_low`` and
``<name>_ci_high``, ``ci`` (the interval's kind and level), then ``paper_top1`` / ``paper_top3``.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from torch import Tensor

from ..images import atomic_write_bytes, atomic_write_text, save_png, to_uint8
from ..pictures import GridLayout, Tile, labelled_grid

METRICS = ("top1", "top3", "instance_top1")
METRIC_LABELS = {"top1": "top-1", "top3": "top-3", "instance_top1": "instance top-1"}
PAPER_FILE = Path(__file__).resolve().parent / "paper_numbers.yaml"


@dataclass
class ResultRow:
    row: str                 # "4 strokes", "photos (ceiling)", "random 4 strokes (floor)"
    kind: str                # sketch | photo | random
    strokes: int | None
    n: int
    accuracy: dict[str, float]                   # METRICS -> value
    interval: dict[str, tuple[float, float]]     # METRICS -> (low, high)
    paper: dict[str, float | None] = field(default_factory=dict)  # top1/top3 reported by the paper


def header(ci: str, with_paper: bool) -> list[str]:
    cols = ["row", "kind", "strokes", "n"]
    for m in METRICS:
        cols += [m, f"{m}_ci_low", f"{m}_ci_high"]
    cols.append("ci")
    if with_paper:
        cols += ["paper_top1", "paper_top3"]
    return cols


def _blank(v) -> object:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else v


def to_csv(rows: list[ResultRow], ci: str, with_paper: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header(ci, with_paper))
    for r in rows:
        line = [r.row, r.kind, _blank(r.strokes), r.n]
        for m in METRICS:
            lo, hi = r.interval[m]
            line += [f"{r.accuracy[m]:.4f}", f"{lo:.4f}", f"{hi:.4f}"]
        line.append(ci)
        if with_paper:
            line += [_blank(r.paper.get("top1")), _blank(r.paper.get("top3"))]
        writer.writerow(line)
    return buf.getvalue()


def _cell(value: float, interval: tuple[float, float]) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def to_markdown(rows: list[ResultRow], ci: str, with_paper: bool, notes: list[str], title: str) -> str:
    cols = ["row", "strokes", "n", *(f"{METRIC_LABELS[m]} [{ci}]" for m in METRICS)]
    if with_paper:
        cols += ["paper top-1", "paper top-3"]
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r.row, str(_blank(r.strokes)), str(r.n), *(_cell(r.accuracy[m], r.interval[m]) for m in METRICS)]
        if with_paper:
            cells += [str(_blank(r.paper.get(k))) or "–" for k in ("top1", "top3")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def load_paper_numbers(key: str | None, path: Path = PAPER_FILE) -> dict | None:
    """The reported numbers of ``key`` in paper_numbers.yaml (None when no key is set)."""
    if not key:
        return None
    data = yaml.safe_load(path.read_text()) or {}
    if key not in data:
        from ..errors import ClipassoError

        raise ClipassoError(f"eval.paper={key} is not in {path.name}: use one of {', '.join(data)} or eval.paper=null")
    return data[key]


def paper_values(paper: dict | None, level: int) -> dict[str, float | None]:
    if not paper:
        return {}
    return {m: (paper.get(m) or {}).get(level) for m in ("top1", "top3")}


# --- pictures ----------------------------------------------------------------------------------


def plot(rows: list[ResultRow], chance: float, title: str) -> bytes:
    """Accuracy against strokes: sketches (with CI bars), random floor, photo ceiling, chance, paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    colours = {"top1": "tab:blue", "top3": "tab:orange", "instance_top1": "tab:green"}
    sketch = [r for r in rows if r.kind == "sketch"]
    floor = [r for r in rows if r.kind == "random"]
    ceiling = next((r for r in rows if r.kind == "photo"), None)
    shift = {"top1": 0.96, "top3": 1.0, "instance_top1": 1.04}  # side by side, so the CI bars do not hide each other
    for m in METRICS:
        c = colours[m]
        if sketch:
            x = np.array([r.strokes for r in sketch], float) * shift[m]
            y = np.array([r.accuracy[m] for r in sketch])
            err = np.array([[y[i] - r.interval[m][0], r.interval[m][1] - y[i]] for i, r in enumerate(sketch)]).T
            ax.errorbar(x, y, yerr=np.clip(err, 0, None), color=c, marker="o", capsize=3, label=f"sketches {METRIC_LABELS[m]}")
        if floor:
            ax.plot([r.strokes for r in floor], [r.accuracy[m] for r in floor], color=c, ls=":", marker=".",
                    label=f"random strokes {METRIC_LABELS[m]} (floor)")
        if ceiling is not None and m != "instance_top1":
            ax.axhline(ceiling.accuracy[m], color=c, ls="--", lw=1, label=f"photos {METRIC_LABELS[m]} (ceiling)")
        paper = [(r.strokes, r.paper.get(m)) for r in sketch if r.paper.get(m) is not None]
        if paper:
            ax.plot(*zip(*paper), color=c, ls="none", marker="x", ms=9, mew=2, label=f"paper {METRIC_LABELS[m]}")
    ax.axhline(chance, color="gray", lw=1, ls="-.", label=f"chance top-1 (1/{round(1 / chance)})")
    ax.set_xscale("log", base=2)
    levels = sorted({r.strokes for r in rows if r.strokes})
    if levels:
        ax.set_xticks(levels, [str(v) for v in levels])
        ax.set_xlim(min(levels) / 1.25, max(levels) * 1.25)
        ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("strokes")
    ax.set_ylabel("accuracy (bars: confidence interval)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


@dataclass
class GridCell:
    image: Tensor      # [3, H, W] in [0, 1]
    caption: str       # predicted class
    correct: bool | None = None


def grid(row_labels: list[str], column_labels: list[str], cells: list[list[GridCell | None]], cell: int = 150) -> Image.Image:
    """A labelled picture grid: one row per level, one column per photo; captions green/red = right/wrong."""
    caption_h = 18
    tiles: dict[tuple[int, int], Tile] = {}
    for r, row in enumerate(cells):
        for c, item in enumerate(row):
            if item is None:
                continue
            colour = "black" if item.correct is None else ("darkgreen" if item.correct else "firebrick")
            mark = "" if item.correct is None else ("OK " if item.correct else "X ")  # ASCII: the default font has no check mark
            tiles[r, c] = Tile(Image.fromarray(to_uint8(item.image)), (mark + item.caption)[:24], colour)
    layout = GridLayout(tile=cell - 6, pitch=(cell, cell + caption_h), origin=(110, 22), inset=3,
                        row_label=(6, cell // 2 - 8, None), caption=(4, cell, None), fonts=(13, 11, 11), frame=0,
                        rule=(210, 210, 210))
    return labelled_grid(tiles, row_labels, [name[:22] for name in column_labels], layout,
                         notes=[((6, 4), "caption: top-1 class", 11)])


def write_outputs(run_dir: Path, rows: list[ResultRow], ci: str, with_paper: bool, notes: list[str], title: str,
                  chance: float, grid_image: Image.Image) -> dict[str, Path]:
    return {
        "csv": atomic_write_text(run_dir / "results.csv", to_csv(rows, ci, with_paper)),
        "markdown": atomic_write_text(run_dir / "results.md", to_markdown(rows, ci, with_paper, notes, title)),
        "plot": atomic_write_bytes(run_dir / "accuracy.png", plot(rows, chance, title)),
        "grid": save_png(run_dir / "examples.png", grid_image),
    }


def log_to_wandb(run_dir: Path, rows: list[ResultRow], ci: str, with_paper: bool, paths: dict[str, Path],
                 name: str, group: str | None, config: dict) -> bool:
    """The table, plot and grid to W&B (online when logged in, else offline). False when wandb is missing."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        import warnings

        warnings.warn("logger=wandb but the wandb package is not installed: results are on disk only", stacklevel=2)
        return False
    from ..tracking import wandb_logger

    run = wandb_logger(run_dir, name=name, group=group, job_type="evaluate").experiment
    import wandb

    run.config.update(config, allow_val_change=True)
    table = list(csv.reader(io.StringIO(to_csv(rows, ci, with_paper))))
    metrics = {f"eval/{r.kind}/{r.strokes or 'photo'}/{m}": r.accuracy[m] for r in rows for m in METRICS}
    run.log({"eval/results": wandb.Table(columns=table[0], data=table[1:]),
             "eval/accuracy_plot": wandb.Image(str(paths["plot"])),
             "eval/examples": wandb.Image(str(paths["grid"])), **metrics})
    run.finish()
    return True
