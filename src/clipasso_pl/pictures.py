"""Labelled picture grids and their font: the sweep report's, the evaluation's examples, the scene matrix.

Pixels, origin top-left, x right, y down. A grid is ``rows x columns`` cells: cell (r, c)
starts at ``origin + (c * pitch_x, r * pitch_y)``, its picture (resized to a ``tile`` px
square) at ``inset`` px inside it. Labels sit left of the first column and above the first
row; a caption belongs to a cell. Each caller keeps its own numbers (a :class:`GridLayout`);
this module owns the drawing. Pillow only (no torch): a caller turns tensors into images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

# (x, y, anchor): Pillow's text anchor, None for its default (left, ascender: "la").
Place = tuple[int, int, "str | None"]


def font(size: int = 12):
    """Pillow's default font at ``size`` px, or its fixed bitmap font where it cannot be sized."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without sized default fonts or without FreeType
        return ImageFont.load_default()


def wrap_text(text: str, font, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` px (a single longer word stays whole)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in text.split():
        if lines and measure.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


@dataclass(frozen=True)
class Tile:
    """One cell's content: a picture (any mode and size; None: missing) and its caption."""

    image: Image.Image | None
    caption: str = ""
    colour: str | tuple[int, int, int] = "black"


@dataclass(frozen=True)
class GridLayout:
    """Where a labelled grid puts things, px. Label and caption places are (x, y, anchor)."""

    tile: int                          # side of every resized picture
    pitch: tuple[int, int]             # (x, y) from one cell to the next
    origin: tuple[int, int]            # top-left of cell (0, 0): the label margins
    inset: int = 0                     # the picture's offset (x and y) inside its cell
    col_label: Place = (4, 4, None)    # x from the cell's left, y from the canvas top
    row_label: Place = (4, 0, None)    # x from the canvas left, y from the cell's top
    caption: Place = (4, 0, None)      # from the cell's top-left
    fonts: tuple[int, int, int] = (12, 12, 12)  # sizes: row labels, column labels, captions and 'missing'
    frame: int | None = None           # a grey outline this many px outside each picture; None: no outline
    rule: tuple[int, int, int] | None = None    # colour of a line along each row's top edge; None: no line
    missing: str | None = None         # text of a grey box where a picture is missing; None: leave it blank
    resample: Image.Resampling = Image.Resampling.BICUBIC


def labelled_grid(tiles: Mapping[tuple[int, int], Tile], row_labels: Sequence[str], col_labels: Sequence[str],
                  layout: GridLayout, notes: Sequence[tuple[tuple[int, int], str, int]] = ()) -> Image.Image:
    """Draw ``tiles`` ({(row, column): Tile}) on a white canvas with their row and column labels.

    The canvas is ``origin + pitch * (max(columns, 1), rows)``. notes: free text ((x, y), text,
    font size), such as a title in the top margin. Returns an RGB image.
    """
    rows, cols = len(row_labels), len(col_labels)
    (ox, oy), (px, py), lay = layout.origin, layout.pitch, layout
    canvas = Image.new("RGB", (ox + px * max(cols, 1), oy + py * rows), "white")
    draw = ImageDraw.Draw(canvas)
    row_font, col_font, small = (font(size) for size in lay.fonts)
    for xy, text, size in notes:
        draw.text(xy, text, fill="black", font=font(size))
    for c, label in enumerate(col_labels):
        draw.text((ox + c * px + lay.col_label[0], lay.col_label[1]), label, fill="black", font=col_font,
                  anchor=lay.col_label[2])
    for r, label in enumerate(row_labels):
        y = oy + r * py
        draw.text((lay.row_label[0], y + lay.row_label[1]), label, fill="black", font=row_font, anchor=lay.row_label[2])
        if lay.rule is not None:
            draw.line([(0, y), (canvas.width, y)], fill=lay.rule)
        for c in range(cols):
            x = ox + c * px
            tile = tiles.get((r, c))
            if (tile is None or tile.image is None) and lay.missing is None:
                continue
            x0, y0, side = x + lay.inset, y + lay.inset, lay.tile
            if tile is None or tile.image is None:
                draw.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=(235, 235, 235))
                draw.text((x0 + side // 2, y0 + side // 2), lay.missing, fill=(120, 120, 120), font=small, anchor="mm")
            else:
                canvas.paste(tile.image.convert("RGB").resize((side, side), lay.resample), (x0, y0))
            if lay.frame is not None:
                f = lay.frame
                draw.rectangle((x0 - f, y0 - f, x0 + side - 1 + f, y0 + side - 1 + f), outline=(180, 180, 180))
            if tile is not None and tile.caption:
                draw.text((x + lay.caption[0], y + lay.caption[1]), tile.caption, fill=tile.colour, font=small,
                          anchor=lay.caption[2])
    return canvas
