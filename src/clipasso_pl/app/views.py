"""What the page shows, made from a run's progress and files: pictures, the loss curve, lines of text."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .watch import Progress

GAP = 6  # px between tiles


def side_by_side(tiles: list[Image.Image], captions: list[str], highlight: int | None = None) -> Image.Image:
    """Tiles in one row on white, a caption under each; ``highlight``: the tile framed in red (the best seed)."""
    h = max(t.height for t in tiles)
    width = sum(t.width for t in tiles) + GAP * (len(tiles) + 1)
    picture = Image.new("RGB", (width, h + 2 * GAP + 14), "white")
    draw = ImageDraw.Draw(picture)
    x = GAP
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        picture.paste(tile.convert("RGB"), (x, GAP))
        frame = (220, 40, 40) if i == highlight else (210, 210, 210)
        draw.rectangle((x - 2, GAP - 2, x + tile.width + 1, GAP + tile.height + 1), outline=frame, width=2)
        draw.text((x, GAP + h + 2), caption, fill=(0, 0, 0))
        x += tile.width + GAP
    return picture


def seed_pictures(p: Progress) -> tuple[Image.Image | None, Image.Image | None]:
    """(the best seed's sketch of the last eval, every seed side by side with its loss), or Nones before it."""
    if p.sketches is None:
        return None, None
    tiles = [Image.fromarray(np.ascontiguousarray(a)) for a in p.sketches]
    best = p.best_index
    captions = [f"seed {s}: {v:.4f}" for s, v in zip(p.seeds, p.losses)]
    return tiles[best], side_by_side(tiles, captions, highlight=best)


def loss_frame(p: Progress):
    """The eval-loss curve as the table gr.LinePlot draws: columns step, eval loss, seed."""
    import pandas as pd

    frame = pd.DataFrame(p.curve or [], columns=["step", "seed", "eval loss"])
    return frame.astype({"step": "int64", "seed": str, "eval loss": "float64"})


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def progress_line(p: Progress, prefix: str = "") -> str:
    """``step 10 / 20 · 0.8 s/step · about 8 s left · best seed 1000 (eval loss 0.0712)``."""
    parts = [f"{prefix}step {p.step} / {p.max_steps or '?'}"]
    if p.step:
        parts.append(f"{p.seconds / p.step:.2f} s/step")
        parts.append(f"about {duration(p.eta_s)} left")
    if p.losses:
        parts.append(f"best seed {p.seeds[p.best_index]} (eval loss {p.losses[p.best_index]:.4f})")
    return " · ".join(parts)


def inline_svg(path: Path, caption: str = "") -> str:
    """An SVG file as HTML to show in the page (our own writer's file; the XML prolog dropped)."""
    text = Path(path).read_text()
    text = re.sub(r"<\?xml[^>]*\?>", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>", "", text)
    return (f'<div class="best-svg" style="max-width:320px;border:1px solid #ddd">{text}'
            f'<div style="font-size:small">{html.escape(caption)}</div></div>')


def best_caption(run_dir: Path) -> str:
    """``best.svg: seed 1000, eval loss 0.0702 at step 14`` from the run's summary.json."""
    try:
        s = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return "best.svg"
    if s.get("best_loss") is None:
        return f"best.svg: seed {s.get('best_seed')} (final strokes)"
    return f"best.svg: seed {s['best_seed']}, eval loss {s['best_loss']:.4f} at step {s['best_step']}"


def line(text: str, kind: str = "info") -> str:
    """One line of status as HTML (``kind`` error: red)."""
    colour = {"error": "#c62828", "ok": "#2e7d32"}.get(kind, "inherit")
    return f'<div class="status-{kind}" style="color:{colour}">{html.escape(text)}</div>'
