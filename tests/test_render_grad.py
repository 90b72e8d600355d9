"""render_strokes: float64 finite differences for points, half-widths and opacities, compositing,
edge cases (off-canvas, degenerate, zero width), devices/dtypes, shape errors, backends."""

import math

import pytest
import torch

from clipasso_pl.errors import ClipassoError
from clipasso_pl.render import DiffvgRenderer, Renderer, TorchRenderer, build_renderer, render_strokes
from clipasso_pl.strokes import Strokes

H, W = 24, 28


def small_scene(dtype=torch.float64):
    """Two sketches of three strokes (a curve, a loop-ish curve, one partly off canvas)."""
    pts = torch.tensor(
        [
            [[[3.2, 4.1], [10.3, 1.7], [14.9, 12.2], [22.4, 9.6]],
             [[5.5, 18.3], [2.1, 8.4], [15.7, 22.9], [9.3, 14.1]],
             [[20.2, 20.6], [26.4, 15.3], [31.0, 23.5], [24.7, 27.2]]],
            [[[12.3, 3.3], [6.1, 9.8], [18.2, 13.4], [11.6, 21.7]],
             [[2.4, 2.2], [9.8, 6.3], [4.1, 12.6], [25.5, 5.2]],
             [[8.6, 16.5], [13.1, 15.2], [19.4, 19.9], [23.8, 15.4]]],
        ],
        dtype=dtype,
    )
    hw = torch.tensor([[1.5, 1.2, 2.1], [1.7, 0.9, 1.4]], dtype=dtype)
    op = torch.tensor([[0.9, 0.6, 0.75], [0.5, 0.8, 0.95]], dtype=dtype)
    return pts, hw, op


def loss_fn(weight):
    def f(p, hw, op):
        return (render_strokes(p, hw, op, H, W) * weight).sum()

    return f


@pytest.mark.parametrize("which", ["points", "half_widths", "opacities"])
def test_gradients_match_central_finite_differences_float64(which):
    pts, hw, op = small_scene()
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(2, 3, H, W, generator=gen, dtype=torch.float64)
    # Smooth weight: finite differences of a piecewise-smooth image are then well behaved.
    weight = torch.nn.functional.avg_pool2d(weight, 5, 1, 2)
    f = loss_fn(weight)
    args = {"points": pts, "half_widths": hw, "opacities": op}
    x = args[which].clone().requires_grad_(True)
    args[which] = x
    (grad,) = torch.autograd.grad(f(**{"p": args["points"], "hw": args["half_widths"], "op": args["opacities"]}), x)
    h = 1e-4
    flat = x.detach().reshape(-1)
    fd = torch.empty_like(flat)
    for i in range(flat.numel()):
        plus, minus = flat.clone(), flat.clone()
        plus[i] += h
        minus[i] -= h
        vals = []
        for v in (plus, minus):
            a = dict(args)
            a[which] = v.view_as(x)
            vals.append(float(f(a["points"], a["half_widths"], a["opacities"])))
        fd[i] = (vals[0] - vals[1]) / (2 * h)
    grad = grad.reshape(-1)
    cos = float(grad @ fd / (grad.norm() * fd.norm()))
    rel = float((grad - fd).norm() / fd.norm())
    if which == "points":
        # Coverage depends on the edge normal at the nearest curve point, and that normal turns
        # with the nearest-point parameter, which the backward holds fixed (exact for the
        # distance, by the envelope theorem, not for the normal): a ~3% relative error, stable
        # in h, on this curvy, thin-stroke scene.
        assert cos > 0.998 and rel < 0.05, (cos, rel)
    else:
        assert cos > 0.99999 and rel < 1e-3, (cos, rel)
        assert torch.allclose(grad, fd, rtol=1e-3, atol=1e-6), (grad, fd)


def test_compositing_is_product_of_transmittances():
    """Black strokes over white: rgb = prod_i (1 - opacity_i * coverage_i) in every channel."""
    pts, hw, op = small_scene()
    both = render_strokes(pts[:1], hw[:1], op[:1], H, W)[0]
    alone = [render_strokes(pts[:1, i : i + 1], hw[:1, i : i + 1], op[:1, i : i + 1], H, W)[0] for i in range(3)]
    assert torch.allclose(both, alone[0] * alone[1] * alone[2], atol=1e-12)
    assert torch.equal(both[0], both[1]) and torch.equal(both[0], both[2])
    # Coverage of a stroke at opacity a is a times its coverage at opacity 1.
    one = render_strokes(pts[:1, :1], hw[:1, :1], torch.ones(1, 1, dtype=torch.float64), H, W)
    assert torch.allclose(1 - alone[0], op[0, 0] * (1 - one[0]), atol=1e-12)
    # Sketches are independent: sketch 1 alone renders the same.
    assert torch.allclose(render_strokes(pts, hw, op, H, W)[1], render_strokes(pts[1:], hw[1:], op[1:], H, W)[0])


def test_straight_stroke_has_round_caps_and_diffvg_half_width():
    """README check: a straight stroke of length 120 with half-width 1.5 covers 3 px per column,
    and ~367 px^2 in total (3 x 120 plus two half discs of radius 1.5)."""
    p = torch.tensor([[[[50.0, 100.3], [90.0, 100.3], [130.0, 100.3], [170.0, 100.3]]]])
    img = render_strokes(p, torch.tensor([[1.5]]), torch.tensor([[1.0]]), 224, 224)[0, 0]
    ink = 1 - img
    assert abs(float(ink.sum()) - (3 * 120 + math.pi * 1.5**2)) < 2.0
    col = ink[:, 110]
    assert abs(float(col.sum()) - 3.0) < 1e-3
    assert float(ink[:, 48].sum()) > 0.5  # the cap reaches x = 48.5 (left of the endpoint)


def test_pixel_centres_on_the_centre_line_and_full_coverage():
    """A horizontal stroke through pixel centres (distance exactly 0: no normal there) renders
    without NaNs; a fully covered pixel at opacity 1 is black, and at opacity a it is 1 - a with
    d rgb / d opacity = -1 (no other stroke there)."""
    for dtype in (torch.float32, torch.float64):
        p = torch.tensor([[[[2.0, 10.5], [8.0, 10.5], [14.0, 10.5], [20.0, 10.5]]]], dtype=dtype, requires_grad=True)
        hw = torch.tensor([[1.5]], dtype=dtype, requires_grad=True)
        img = render_strokes(p, hw, torch.tensor([[1.0]], dtype=dtype), H, W)
        assert torch.isfinite(img).all() and float(img.detach()[0, 0, 10, 10]) < 1e-9
        (img * torch.randn_like(img)).sum().backward()
        assert torch.isfinite(p.grad).all() and torch.isfinite(hw.grad).all()
        op = torch.tensor([[0.75]], dtype=dtype, requires_grad=True)
        img = render_strokes(p.detach(), hw.detach(), op, H, W)
        assert float(img.detach()[0, 0, 10, 10]) == pytest.approx(0.25, abs=1e-6)
        (g,) = torch.autograd.grad(img[0, 0, 10, 10], op)
        assert float(g) == pytest.approx(-1.0, abs=1e-6)


def test_off_canvas_degenerate_and_zero_width_strokes_are_finite():
    p = torch.tensor(
        [
            [
                [[-50.0, -40.0], [-10.0, 5.0], [30.0, -20.0], [60.0, 30.0]],  # leaves the canvas
                [[500.0, 500.0], [520.0, 510.0], [530.0, 540.0], [560.0, 590.0]],  # entirely outside
                [[10.0, 10.0], [10.0, 10.0], [10.0, 10.0], [10.0, 10.0]],  # a dot: all points equal
                [[12.5, 5.5], [12.5, 5.5], [12.5, 5.5], [12.5, 5.5]],  # a dot on a pixel centre
                [[3.0, 3.0], [6.0, 6.0], [9.0, 9.0], [12.0, 12.0]],  # straight, evenly spaced
            ]
        ],
        requires_grad=True,
    )
    hw = torch.tensor([[1.5, 1.5, 2.0, 1.5, 0.0]], requires_grad=True)
    op = torch.tensor([[1.0, 1.0, 0.7, 1.0, 1.0]], requires_grad=True)
    img = render_strokes(p, hw, op, H, W)
    assert torch.isfinite(img).all() and float(img.min()) >= 0 and float(img.max()) <= 1
    (img * torch.randn_like(img)).sum().backward()
    for t in (p, hw, op):
        assert torch.isfinite(t.grad).all()
    assert float((1 - img[0, 0]).sum()) > 10  # the on-canvas strokes left ink
    assert torch.all(p.grad[0, 1] == 0)  # the stroke outside touches nothing
    assert float((1 - img[0, 0, 10, 10])) > 0.5  # the dot is a disc


def test_empty_sketch_is_white():
    img = render_strokes(torch.zeros(2, 0, 4, 2), torch.zeros(2, 0), torch.zeros(2, 0), 8, 9)
    assert img.shape == (2, 3, 8, 9) and torch.all(img == 1)


@pytest.mark.parametrize(
    "args, name",
    [
        ((torch.zeros(1, 3, 3, 2), torch.ones(1, 3), torch.ones(1, 3)), "points"),
        ((torch.zeros(3, 4, 2), torch.ones(1, 3), torch.ones(1, 3)), "points"),
        ((torch.zeros(1, 3, 4, 2), torch.ones(3), torch.ones(1, 3)), "half_widths"),
        ((torch.zeros(1, 3, 4, 2), torch.ones(1, 3), torch.ones(1, 2)), "opacities"),
    ],
)
def test_bad_shapes_name_the_argument(args, name):
    with pytest.raises(ValueError, match=name):
        render_strokes(*args, 16, 16)


def test_float32_matches_float64():
    pts, hw, op = small_scene()
    a = render_strokes(pts, hw, op, H, W)
    b = render_strokes(pts.float(), hw.float(), op.float(), H, W)
    assert b.dtype == torch.float32 and a.dtype == torch.float64
    assert float((a - b.double()).abs().max()) < 1e-4


@pytest.mark.gpu
def test_cuda_matches_cpu():
    pts, hw, op = small_scene(torch.float32)
    p = pts.cuda().requires_grad_(True)
    img = render_strokes(p, hw.cuda(), op.cuda(), H, W)
    assert img.device.type == "cuda"
    img.sum().backward()
    assert torch.allclose(img.cpu(), render_strokes(pts, hw, op, H, W), atol=1e-5)


def test_renderers_and_build_renderer():
    pts, hw, op = small_scene(torch.float32)
    r = build_renderer("torch")
    assert isinstance(r, TorchRenderer) and isinstance(r, Renderer)
    assert torch.equal(r.render(Strokes(pts, hw, op), H, W), render_strokes(pts, hw, op, H, W))
    with pytest.raises(ClipassoError, match="renderer=torch"):
        build_renderer("cairo")


def test_diffvg_backend_or_its_error():
    try:
        import pydiffvg  # noqa: F401
    except ImportError:
        with pytest.raises(ClipassoError) as e:
            DiffvgRenderer()
        msg = str(e.value)
        assert "\n" not in msg and "diffvg" in msg and "renderer=torch" in msg
        with pytest.raises(ClipassoError):
            build_renderer("diffvg")
        return
    pts, hw, op = small_scene(torch.float32)
    p = pts[:1].clone().requires_grad_(True)
    img = DiffvgRenderer().render(Strokes(p, hw[:1], op[:1]), H, W)
    assert img.shape == (1, 3, H, W)
    assert float((img - render_strokes(pts[:1], hw[:1], op[:1], H, W)).abs().mean()) < 0.02
    img.sum().backward()
    assert torch.isfinite(p.grad).all()


def test_bench_runs_and_writes_json(tmp_path):
    import json

    from clipasso_pl.render.bench import main

    out = tmp_path / "r.json"
    assert main(["--out", str(out), "--strokes", "4", "--seeds", "1", "--repeats", "1"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["strokes"] == 4 and rows[0]["forward_backward_ms"] > 0
