"""The SVG we write, rendered by a real SVG renderer (resvg, via the resvg-py wheel), agrees
with our own rasterization of the same strokes: stroke-width = 2 x half-width, round caps,
stroke-opacity, viewBox and size all have to be right for these numbers to hold."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipasso_pl.render import render_strokes
from clipasso_pl.strokes import read_svg, svg_string, write_svg

resvg_py = pytest.importorskip("resvg_py")

SCENES = ["strokes_004", "strokes_016", "strokes_032", "strokes_064", "strokes_128", "strokes_256", "width3_016", "alpha_016"]


def resvg_render(svg: str, size: int, zoom: int = 1) -> np.ndarray:
    """resvg's rendering of ``svg`` as float [H, W, 3] in [0, 1]; with ``zoom`` > 1 it is
    rendered zoom times larger and box-averaged back (supersampled anti-aliasing)."""
    png = resvg_py.svg_to_bytes(svg_string=svg, zoom=float(zoom)) if zoom > 1 else resvg_py.svg_to_bytes(svg_string=svg)
    image = np.asarray(Image.open(io.BytesIO(bytes(png))).convert("RGB"), dtype=np.float64) / 255.0
    assert image.shape == (size * zoom, size * zoom, 3)
    return image.reshape(size, zoom, size, zoom, 3).mean(axis=(1, 3))


def scene(reference: Path, name: str):
    z = np.load(reference / f"{name}.npz")
    return torch.from_numpy(z["points"]), torch.from_numpy(z["widths"]), torch.from_numpy(z["alphas"])


def ours(points, half_widths, opacities, size=224):
    image = render_strokes(points[None], half_widths[None], opacities[None], size, size)[0]
    return image.permute(1, 2, 0).double().numpy()


@pytest.mark.parametrize("name", SCENES)
def test_resvg_agrees_with_render_strokes(name, reference_dir):
    points, hw, op = scene(reference_dir, name)
    svg = svg_string(points, hw, op, 224, 224)
    mine = ours(points, hw, op)
    # 4x4 supersampled resvg approximates the exact pixel-area coverage we compute.
    mae = np.abs(resvg_render(svg, 224, zoom=4) - mine).mean()
    assert mae <= 0.006, mae
    # resvg's own one-sample anti-aliasing drifts more as strokes pile up.
    if name != "strokes_256":
        mae1 = np.abs(resvg_render(svg, 224) - mine).mean()
        assert mae1 <= 0.01, mae1
    ink, ink_ref = (1 - mine).sum(), (1 - resvg_render(svg, 224, zoom=4)).sum()
    assert abs(ink / ink_ref - 1) <= 0.01


def test_width_and_opacity_are_written_as_svg_means_them(reference_dir):
    """A wrong factor of 2 in stroke-width or a dropped opacity shows up as lost agreement."""
    points, hw, op = scene(reference_dir, "alpha_016")
    svg = svg_string(points, hw, op, 224, 224)
    mine = ours(points, hw, op)
    good = np.abs(resvg_render(svg, 224, zoom=4) - mine).mean()
    wrong_width = np.abs(resvg_render(svg, 224, zoom=4) - ours(points, 2 * hw, op)).mean()
    wrong_opacity = np.abs(resvg_render(svg, 224, zoom=4) - ours(points, hw, torch.ones_like(op))).mean()
    assert good * 3 < wrong_width and good * 3 < wrong_opacity


def test_non_square_canvas_and_file_round_trip(tmp_path):
    """viewBox and size: a 96 x 160 canvas with a stroke near each corner."""
    points = torch.tensor(
        [[[5.0, 5.0], [30.0, 10.0], [10.0, 30.0], [40.0, 40.0]], [[150.0, 90.0], [120.0, 80.0], [140.0, 60.0], [110.0, 50.0]]]
    )
    hw, op = torch.tensor([1.5, 3.0]), torch.tensor([1.0, 0.6])
    path = write_svg(tmp_path / "s.svg", points, hw, op, 96, 160)
    p2, hw2, op2, (h, w) = read_svg(path)
    assert (h, w) == (96, 160)
    png = resvg_py.svg_to_bytes(svg_path=str(path), zoom=4.0)
    theirs = np.asarray(Image.open(io.BytesIO(bytes(png))).convert("RGB"), dtype=np.float64) / 255.0
    assert theirs.shape == (96 * 4, 160 * 4, 3)
    theirs = theirs.reshape(96, 4, 160, 4, 3).mean(axis=(1, 3))
    mine = render_strokes(p2[None], hw2[None], op2[None], 96, 160)[0].permute(1, 2, 0).double().numpy()
    assert np.abs(theirs - mine).mean() <= 0.005
    assert (1 - mine).sum() > 100  # both strokes are on the canvas
