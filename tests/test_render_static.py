"""The static renderer: no host sync forward or backward, the exact render's result, an
overflow that is NaN (never missing ink) and refits the sizes, and one compiled graph."""

import pytest
import torch

from clipasso_pl.render import Budget, Capacity, TorchRenderer, rasterize, render_strokes
from clipasso_pl.render.capacity import NEEDS, _grid, window_for
from clipasso_pl.strokes import Strokes, points_per_stroke
from clipasso_pl.syncs import SyncRecorder

H, W = 40, 48


def strokes(segments: int, c: int, seed: int = 0, S: int = 2, N: int = 4) -> Strokes:
    """S sketches of N strokes of ``segments`` segments of ``c`` control points, some of them
    partly off the canvas (points in [-10, 55] x [-10, 55] on a 48 x 40 canvas)."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(S, N, points_per_stroke(segments, c), 2, generator=g, dtype=torch.float64) * 65 - 10
    hw = 0.5 + torch.rand(S, N, generator=g, dtype=torch.float64)
    op = 0.2 + 0.8 * torch.rand(S, N, generator=g, dtype=torch.float64)
    return Strokes(pts, hw, op, c)


def loss(image: torch.Tensor) -> torch.Tensor:
    weight = torch.sin(torch.arange(image.numel(), dtype=image.dtype) * 0.37).view_as(image)
    return (image * weight).sum()


def grads(renderer, st: Strokes):
    leaves = [t.clone().requires_grad_(True) for t in (st.points, st.half_widths, st.opacities)]
    image = renderer.render(Strokes(*leaves, st.control_points_per_seg), H, W)
    loss(image).backward()
    return image.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("segments, c", [(1, 4), (2, 4), (2, 3), (2, 2), (1, 2)])
def test_tracked_render_has_no_host_sync_and_equals_the_exact_render(segments, c):
    st = strokes(segments, c)
    renderer = TorchRenderer()
    with torch.no_grad():
        renderer.render(st, H, W)  # exact, fits the budget (as an eval step does)
    with SyncRecorder() as rec:
        image, got = grads(renderer, st)
    assert rec.current.syncs == [], rec.current.syncs
    assert int(renderer.overflows) == 0 and torch.isfinite(image).all()
    assert float((1 - image).sum()) > 20  # ink on the canvas

    class Exact:  # the same strokes, sized exactly (host reads allowed)
        def render(self, s, h, w):
            cu = s.cubics()
            return render_strokes(cu.points, cu.half_widths, cu.opacities, h, w, s.num_segments)

    ref, want = grads(Exact(), st)
    assert float((image - ref).abs().max()) < 1e-9
    for a, b in zip(got, want):
        assert float((a - b).abs().max()) < 1e-7


def test_overflow_draws_nan_is_counted_and_the_next_exact_render_refits():
    st = strokes(1, 4, S=1, N=3)
    small = Budget(chords=1.0, patch=16.0, pairs=4.0)
    renderer = TorchRenderer(small)
    cap = renderer.capacity(3)
    points = st.points.clone().requires_grad_(True)
    image = renderer.render(Strokes(points, st.half_widths, st.opacities), H, W)
    assert torch.isnan(image).all() and int(renderer.overflows) == 1
    with torch.no_grad():
        exact = renderer.render(st, H, W)
    assert torch.isfinite(exact).all()
    assert torch.allclose(exact, render_strokes(st.points, st.half_widths, st.opacities, H, W))
    grown = renderer.capacity(3)
    assert grown.chords > cap.chords and grown.patch > cap.patch and grown.pairs > cap.pairs
    image = renderer.render(Strokes(points, st.half_widths, st.opacities), H, W)
    assert torch.allclose(image, exact, atol=1e-9) and int(renderer.overflows) == 1


def test_strokes_growing_between_eval_steps_do_not_overflow():
    """Adam moves every point each step, so strokes grow between the eval steps that size renders
    exactly. Each static render's needs reach the host without a sync and size the next one: strokes
    growing 15 % a step for 8 steps (2.9x in all) never overflow. Without the per-step refit the
    third step overflowed (its NaN step was skipped), more often in a batch of seeds than alone."""
    centre = torch.tensor([24.0, 20.0], dtype=torch.float64)
    base = strokes(1, 4, S=2, N=4)
    small = Strokes(centre + (base.points - centre) * 0.2, base.half_widths, base.opacities, 4)
    renderer = TorchRenderer()
    with torch.no_grad():
        renderer.render(small, H, W)  # an eval step: exact sizes, then a fitted budget
    first = renderer.capacity(8)
    scale = 0.2
    with SyncRecorder() as rec:
        for _ in range(8):
            scale *= 1.15
            points = (centre + (base.points - centre) * scale).requires_grad_(True)
            loss(renderer.render(Strokes(points, base.half_widths, base.opacities, 4), H, W)).backward()
    assert rec.current.syncs == [], rec.current.syncs
    assert int(renderer.overflows) == 0
    assert renderer.capacity(8).pairs > first.pairs  # the sizes followed the strokes


def test_a_compiled_steps_sizes_change_seldom_as_strokes_grow():
    """For a compiled step every change of sizes recompiles its graph, so there the sizes only grow, all
    together, by twice the need: strokes growing 10 % a step for 20 steps (6.7x in all) change them 3
    times and never overflow (6 times when each size grew on its own, 13 with the eager headroom)."""
    centre = torch.tensor([24.0, 20.0], dtype=torch.float64)
    base = strokes(1, 4, S=2, N=4)
    renderer = TorchRenderer(Budget(chords=1.0, patch=16.0, pairs=4.0, path_patch=16.0))
    renderer.compiled = True
    scale, sizes = 0.1, []
    with torch.no_grad():  # the eval at step 0 sizes the budget for the first strokes
        renderer.render(Strokes(centre + (base.points - centre) * scale, base.half_widths, base.opacities, 4), H, W)
    for _ in range(20):
        scale *= 1.10
        points = (centre + (base.points - centre) * scale).requires_grad_(True)
        loss(renderer.render(Strokes(points, base.half_widths, base.opacities, 4), H, W)).backward()
        sizes.append(renderer.planned[2])
    changes = sum(a != b for a, b in zip(sizes, sizes[1:]))
    assert int(renderer.overflows) == 0 and 1 <= changes <= 3, changes


def test_needs_name_the_sizes_that_overflow():
    st = strokes(2, 4).cubics()
    args = (st.points, st.half_widths, st.opacities, H, W, 2)
    cap = Budget().capacity(st.num_sketches * st.num_strokes, 2)
    roomy, needs, over = rasterize(*args, cap)
    assert not bool(over) and needs.shape == (len(NEEDS),)
    assert torch.allclose(roomy, render_strokes(*args), atol=1e-9)  # the exact render
    needs = needs.tolist()
    fit = Capacity(*needs[:4], cap.window)  # the window sets the chord length: keep it
    image, _, over = rasterize(*args, fit)
    assert not bool(over) and torch.allclose(image, roomy, atol=1e-9)  # padding changes nothing
    short = Capacity(needs[0], needs[1], needs[2] - 1, needs[3], cap.window)
    assert short.overflowed(needs) == ["pairs"]
    image, _, over = rasterize(*args, short)
    assert bool(over) and torch.isnan(image).all()


def test_budget_sizes_grow_on_a_grid_with_hysteresis():
    assert [_grid(x) for x in (1, 16, 17, 100, 128, 129)] == [16, 16, 20, 108, 128, 153]
    assert window_for(1.5) == (10, 8) and window_for(3.0) == (13, 11)
    b = Budget()
    assert b.capacity(16).chords == _grid(16 * b.chords)
    assert b.fit([b.chords * 0.8, b.patch * 0.5, b.pairs * 0.9, 0.0], b.window) == b  # within the band: unchanged
    grown = b.fit([b.chords * 2, b.patch, b.pairs * 0.1, 0.0], (12, 9))
    assert grown.chords == b.chords * 2 * Budget.HEADROOM and grown.pairs == b.pairs * 0.1 * Budget.HEADROOM
    assert grown.window == (12, 9) and grown.path_patch == b.path_patch
    # a training step's needs only grow the sizes (pairs fell to 0.1 of the size: kept)
    assert b.fit([b.chords * 2, b.patch, b.pairs * 0.1, 0.0], b.window, shrink=False).pairs == b.pairs
    with pytest.raises(ValueError, match="positive integers"):
        Capacity(0, 1, 1, 1, (10, 8))


def test_renderer_op_count_stays_low():
    """Launch count of a GPU step: forward + backward of 3 sketches of 16 strokes (607 kernels
    before the static renderer)."""
    st = strokes(1, 4, S=3, N=16)
    renderer = TorchRenderer()
    with torch.no_grad():
        renderer.render(st, 224, 224)
    points = st.points.clone().requires_grad_(True)
    with SyncRecorder() as rec:
        renderer.render(Strokes(points, st.half_widths, st.opacities), 224, 224).sum().backward()
    assert rec.current.kernels < 560, rec.current.kernels


@pytest.mark.slow
@pytest.mark.parametrize("segments", [1, 2])
def test_fullgraph_compile_matches_eager(segments):
    st = strokes(segments, 4).cubics()
    cap = TorchRenderer().capacity(st.num_sketches * st.num_strokes, segments)

    def render(points, half_widths, opacities):
        return loss(render_strokes(points, half_widths, opacities, H, W, segments, cap))

    compiled = torch.compile(render, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (render, compiled):
        leaves = [t.clone().requires_grad_(True) for t in (st.points, st.half_widths, st.opacities)]
        value = fn(*leaves)
        value.backward()
        results.append([value.detach(), *(t.grad for t in leaves)])
    for a, b in zip(*results):
        assert torch.isfinite(a).all() and float((a - b).abs().max()) <= 1e-5 * max(1.0, float(a.abs().max()))
