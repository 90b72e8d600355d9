"""The fidelity x simplicity matrix: cell names and selection, compositing, the labelled picture.

A cell is (layer, level): row ``layer`` (the ViT block of the fidelity loss), column
``level`` (simplicity). Its files live in ``layer<l>/level<k>/``; the fidelity sketches of a
row in ``layer<l>/fidelity/``. Levels of a row are sequential (each warm-starts from the
one before), so selecting a cell means running its row up to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig
from PIL import Image

from ..errors import ClipassoError
from ..images import resolve_target, save_png
from ..pictures import GridLayout, Tile, font, labelled_grid, wrap_text

CELL_HINT = "use layer<l> for a row or layer<l>/level<k> for a cell, e.g. cells=[layer2,layer8/level3]"


def row_dir(root: Path, layer: int) -> Path:
    return Path(root) / f"layer{layer}"


def cell_dir(root: Path, layer: int, level: int | None) -> Path:
    """``layer<l>/level<k>``, or ``layer<l>/fidelity`` for level None."""
    return row_dir(root, layer) / ("fidelity" if level is None else f"level{level}")


def parse_cells(cells, layers: Sequence[int], levels: int) -> dict[int, int]:
    """Which rows to run and up to which level: {layer: last level index}, in ``layers`` order.

    cells: None / "all" (everything), or tokens ``layer<l>`` and ``layer<l>/level<k>`` as a
    list or one comma-separated string (what a Hydra sweep passes).
    """
    if cells is None or cells == "all" or (not isinstance(cells, str) and list(cells) == ["all"]):
        return {int(layer): levels - 1 for layer in layers}
    tokens = [t.strip() for t in cells.split(",")] if isinstance(cells, str) else [str(t).strip() for t in cells]
    wanted: dict[int, int] = {}
    for token in tokens:
        row, _, col = token.partition("/")
        try:
            if not row.startswith("layer") or (col and not col.startswith("level")):
                raise ValueError(token)
            layer = int(row[len("layer"):])
            level = int(col[len("level"):]) if col else levels - 1
        except ValueError:
            raise ClipassoError(f"cells: '{token}' is not a cell name; {CELL_HINT}") from None
        if layer not in layers:
            raise ClipassoError(f"cells: '{token}' names layer {layer}, which is not in layers={list(layers)}")
        if not 0 <= level < levels:
            raise ClipassoError(f"cells: '{token}' names level {level}; levels run from 0 to {levels - 1}")
        wanted[layer] = max(level, wanted.get(layer, -1))
    return {int(layer): wanted[int(layer)] for layer in layers if int(layer) in wanted}


def matrix_picture(tiles: dict[tuple[int, int], Image.Image | None], row_labels: Sequence[str],
                   col_labels: Sequence[str], captions: dict[tuple[int, int], str], tile: int = 224,
                   title: str = "") -> Image.Image:
    """A labelled grid: rows x columns of ``tile`` px pictures, a label per row and column,
    a caption under each tile; a missing tile is drawn as a grey 'not run' box. The title is
    wrapped onto as many lines as the picture's width needs."""
    rows, cols = len(row_labels), len(col_labels)
    fs = max(11, tile // 14)
    gap = 6
    left, cap = 6 * fs, fs + 6
    W = left + cols * (tile + gap) + gap
    title_lines = wrap_text(title, font(fs), W - 2 * gap) if title else []
    line_h = fs + 4
    top = 3 * fs + (len(title_lines) * line_h + 6 if title_lines else 0)
    layout = GridLayout(tile=tile, pitch=(tile + gap, tile + cap + gap), origin=(left + gap, top + gap),
                        col_label=(tile // 2, top - fs // 2, "ms"), row_label=(gap, tile // 2, "lm"),
                        caption=(tile // 2, tile + 3, "ma"), fonts=(fs, fs, max(10, fs - 3)), frame=1, missing="not run",
                        resample=Image.Resampling.LANCZOS)
    cells = {(r, c): Tile(tiles.get((r, c)), captions.get((r, c), "")) for r in range(rows) for c in range(cols)}
    notes = [((gap, gap + i * line_h), line, fs) for i, line in enumerate(title_lines)]
    return labelled_grid(cells, row_labels, col_labels, layout, notes)


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
