import xml.etree.ElementTree as ET

import pytest
import torch

from clipasso_pl.errors import ClipassoError
from clipasso_pl.strokes import Strokes, read_svg, svg_string, write_svg


def random_sketch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(n, 4, 2, generator=g) * 224
    half_widths = 0.5 + torch.rand(n, generator=g) * 2
    opacities = 0.2 + torch.rand(n, generator=g) * 0.8
    return points, half_widths, opacities


def test_svg_round_trip_within_1e3_px(tmp_path):
    points, hw, op = random_sketch()
    path = write_svg(tmp_path / "s.svg", points, hw, op, 224, 224)
    root = ET.parse(path).getroot()
    paths = [e for e in root.iter() if e.tag.endswith("path")]
    assert len(paths) == 16
    assert paths[0].get("stroke-linecap") == "round" and paths[0].get("stroke-linejoin") == "round"
    assert float(paths[3].get("stroke-width")) == pytest.approx(2 * float(hw[3]), abs=1e-4)
    p2, hw2, op2, (h, w) = read_svg(path, num_strokes=16)
    assert (h, w) == (224, 224)
    assert (p2 - points).abs().max() <= 1e-3
    assert torch.allclose(hw2, hw, atol=1e-4) and torch.allclose(op2, op, atol=1e-4)


def test_svg_text_is_deterministic():
    points, hw, op = random_sketch()
    assert svg_string(points, hw, op, 224, 224) == svg_string(points.clone(), hw, op, 224, 224)


def test_reads_diffvg_style_svg(tmp_path):
    # diffvg's save_svg: one <path> per stroke with the stroke-width attribute and no viewBox.
    text = (
        '<?xml version="1.0" ?><svg height="224" version="1.1" width="224" xmlns="http://www.w3.org/2000/svg">'
        '<g><path d="M 10.0 20.0 C 30.0 40.0 50.0 60.0 70.0 80.0" fill="none" stroke="rgb(0, 0, 0)" '
        'stroke-opacity="1.0" stroke-width="1.5" stroke-linecap="round" stroke-linejoin="round"/></g>'
        '<g><path d="M1 2 C 3 4 5 6 7 8" style="stroke-width:3;stroke-opacity:0.5"/></g></svg>'
    )
    (tmp_path / "d.svg").write_text(text)
    points, hw, op, size = read_svg(tmp_path / "d.svg")
    assert points.shape == (2, 4, 2) and size == (224, 224)
    assert points[0, 3].tolist() == [70.0, 80.0]
    assert hw.tolist() == [0.75, 1.5] and op.tolist() == [1.0, 0.5]


@pytest.mark.parametrize(
    "body, message",
    [
        ("<svg", "not valid XML"),
        ("<html></html>", "not <svg>"),
        ('<svg xmlns="http://www.w3.org/2000/svg"></svg>', "no <path>"),
        ('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 1 2 L 3 4"/></svg>', "one absolute cubic"),
        ('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 1 2 C 1 2 3 4 5 6 C 1 1 1 1 1 1"/></svg>', "one absolute cubic"),
    ],
)
def test_bad_svg_is_one_line_error(tmp_path, body, message):
    (tmp_path / "bad.svg").write_text(body)
    with pytest.raises(ClipassoError, match=message) as info:
        read_svg(tmp_path / "bad.svg")
    assert "\n" not in str(info.value)


def test_wrong_number_of_paths_names_the_fix(tmp_path):
    points, hw, op = random_sketch(n=4)
    write_svg(tmp_path / "s.svg", points, hw, op, 224, 224)
    with pytest.raises(ClipassoError, match="strokes=4"):
        read_svg(tmp_path / "s.svg", num_strokes=16)


def test_strokes_shape_checks():
    with pytest.raises(ValueError, match="points"):
        Strokes.constant(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="half_widths"):
        Strokes(torch.zeros(2, 3, 4, 2), torch.zeros(2, 4), torch.zeros(2, 3))
