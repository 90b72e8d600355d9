"""Stroke options of the official code: multi-segment strokes, sparse opacity, stages.

Each reaches ``run_sketch`` (the body of ``clipasso-pl sketch``), changes what it should,
and round-trips through ``path_svg`` and ``resume=``.
"""

import io

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from clipasso_pl.api import build_module, build_trainer, run_sketch, total_steps
from clipasso_pl.config import compose
from clipasso_pl.errors import ClipassoError
from clipasso_pl.images import resolve_target
from clipasso_pl.sketch_target import load_target
from clipasso_pl.init import StrokeInit
from clipasso_pl.training.steps import step_loader
from clipasso_pl.render import render_strokes
from clipasso_pl.render.renderers import TorchRenderer
from clipasso_pl.strokes import Strokes, cubic_segments, read_strokes, svg_string, write_svg
from cli_runs import cli, kill_after_first_checkpoint

TARGET = "skimage:coffee"


def smoke(**values):
    base = dict(target=TARGET, steps=8, eval_interval=2, save_interval=0, checkpoint_interval=0, logger="none",
                canvas=96, seeds=[0], strokes=4)
    base.update(values)
    return compose("sketch", ["preset=smoke"], **base)


class Record(pl.Callback):
    """The points (and opacities) at the start of every step."""

    def __init__(self):
        self.points, self.opacities = {}, {}

    def on_train_batch_start(self, trainer, module, batch, idx):
        self.points[trainer.global_step] = module.points.detach().clone()
        if module.opacities is not None:
            self.opacities[trainer.global_step] = module.opacities.detach().clone()


def fit(cfg, tmp_path):
    module = build_module(cfg, load_target(resolve_target(cfg.target), size=cfg.canvas))
    record = Record()
    trainer = build_trainer(cfg, tmp_path, [instantiate(c) for c in cfg.callbacks.values() if c] + [record])
    trainer.fit(module, train_dataloaders=step_loader(total_steps(cfg)))
    return module, record, trainer


# --- multi-segment strokes -----------------------------------------------------------------------

TWO_SEGMENTS = torch.tensor([[20.0, 30.0], [40.0, 10.0], [60.0, 50.0], [70.0, 35.0],  # segment 1 ends here
                             [80.0, 20.0], [85.0, 70.0], [50.0, 80.0]])  # [7, 2]


def test_two_segment_stroke_renders_as_two_cubics_sharing_an_end_point():
    two = Strokes(TWO_SEGMENTS[None, None], torch.tensor([[2.0]]), torch.tensor([[1.0]]))
    assert two.num_segments == 2
    mine = TorchRenderer().render(two, 96, 96)
    cubics = torch.stack((TWO_SEGMENTS[0:4], TWO_SEGMENTS[3:7]))[None]  # [1, 2, 4, 2]: shared point (70, 35)
    theirs = render_strokes(cubics, torch.full((1, 2), 2.0), torch.ones(1, 2), 96, 96)
    # One path (diffvg's union of the two bands) differs from two composited strokes only where
    # both round ends overlap, around the shared point; everywhere else it is the same picture.
    diff = (mine - theirs)[0, 0].abs()
    ys, xs = torch.meshgrid(torch.arange(96) + 0.5, torch.arange(96) + 0.5, indexing="ij")
    near_joint = (xs - 70) ** 2 + (ys - 35) ** 2 <= (2.0 + 1.5) ** 2
    assert torch.equal(diff[~near_joint], torch.zeros_like(diff[~near_joint]))
    assert diff.max() < 0.35 and float((1 - mine).sum()) == pytest.approx(float((1 - theirs).sum()), rel=0.02)
    # and it is not just the first cubic
    first = render_strokes(cubics[:, :1], torch.full((1, 1), 2.0), torch.ones(1, 1), 96, 96)
    assert (first - mine).abs().sum() > 50


@pytest.mark.parametrize("c", [2, 3])
def test_lines_and_quadratics_are_the_same_curves_as_cubics(c):
    pts = TWO_SEGMENTS[: 2 * (c - 1) + 1]
    cub = cubic_segments(pts, c)  # [2, 4, 2]
    t = torch.linspace(0, 1, 11)[:, None]
    for k in range(2):
        seg = pts[k * (c - 1): k * (c - 1) + c]
        if c == 2:
            direct = seg[0] + t * (seg[1] - seg[0])
        else:
            direct = (1 - t) ** 2 * seg[0] + 2 * (1 - t) * t * seg[1] + t ** 2 * seg[2]
        b = cub[k]
        bez = (1 - t) ** 3 * b[0] + 3 * (1 - t) ** 2 * t * b[1] + 3 * (1 - t) * t ** 2 * b[2] + t ** 3 * b[3]
        assert torch.allclose(bez, direct, atol=1e-4)


@pytest.mark.parametrize("c, command", [(4, " C "), (3, " Q "), (2, " L ")])
def test_multi_segment_svg_agrees_with_resvg_and_round_trips(tmp_path, c, command):
    resvg_py = pytest.importorskip("resvg_py")
    from PIL import Image

    g = torch.Generator().manual_seed(c)
    k, n = 3, 6
    pts = torch.rand(n, k * (c - 1) + 1, 2, generator=g) * 70 + 13
    hw, op = torch.full((n,), 1.5), torch.linspace(0.4, 1.0, n)
    svg = svg_string(pts, hw, op, 96, 96, c)
    assert svg.count(command) == n * k  # one command per segment, as diffvg's save_svg writes
    png = resvg_py.svg_to_bytes(svg_string=svg, zoom=4.0)
    theirs = np.asarray(Image.open(io.BytesIO(bytes(png))).convert("RGB"), dtype=np.float64) / 255.0
    theirs = theirs.reshape(96, 4, 96, 4, 3).mean(axis=(1, 3))
    strokes = Strokes(pts[None], hw[None], op[None], c)
    mine = TorchRenderer().render(strokes, 96, 96)[0].permute(1, 2, 0).double().numpy()
    mae = np.abs(theirs - mine).mean()
    assert mae <= 0.004, mae  # measured 0.0021 (C), 0.0021 (Q), 0.0009 (L); drawing segments as separate strokes: 0.0063, 0.0047, 0.0042
    # reading only the first segment of every stroke would be far off
    first = TorchRenderer().render(Strokes(pts[None, :, :c], hw[None], op[None], c), 96, 96)[0].permute(1, 2, 0).numpy()
    assert np.abs(theirs - first).mean() > 3 * mae
    back, size = read_strokes(write_svg(tmp_path / "s.svg", pts, hw, op, 96, 96, c), num_strokes=n)
    assert size == (96, 96) and back.control_points_per_seg == c and back.num_segments == k
    assert (back.points[0] - pts).abs().max() <= 1e-3 and torch.allclose(back.opacities[0], op, atol=1e-4)


def test_read_strokes_refuses_mixed_layouts(tmp_path):
    (tmp_path / "m.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 1 2 C 1 2 3 4 5 6"/>'
                                     '<path d="M 1 2 C 1 2 3 4 5 6 C 1 1 1 1 1 1"/></svg>')
    with pytest.raises(ClipassoError, match="same"):
        read_strokes(tmp_path / "m.svg")
    (tmp_path / "q.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><path d="M 1 2 C 1 2 3 4 5 6 Q 1 1 1 1"/></svg>')
    with pytest.raises(ClipassoError, match="one kind"):
        read_strokes(tmp_path / "q.svg")


def test_random_walk_continues_through_every_segment():
    init = StrokeInit(mode="random", radius=0.05)
    res = init(torch.rand(3, 96, 96), 5, torch.Generator().manual_seed(0), num_points=7)
    assert res.points.shape == (5, 7, 2)
    assert torch.equal(res.points[:, 0], res.starts)
    steps = res.points[:, 1:] - res.points[:, :-1]
    assert steps.abs().max() <= 0.5 * 0.05 * 96 + 1e-5 and steps.abs().max() > 0.5


@pytest.mark.slow
def test_two_segment_run_writes_and_restarts_from_its_svg(tmp_path):
    result = run_sketch(smoke(num_segments=2, steps=4), tmp_path / "run")
    strokes, _ = read_strokes(result.best_svg, num_strokes=4)
    assert strokes.points.shape == (1, 4, 7, 2) and strokes.num_segments == 2
    module = build_module(smoke(num_segments=2, path_svg=str(result.best_svg)), load_target(resolve_target(TARGET), size=96))
    assert (module.points[0] - strokes.points[0]).abs().max() < 1e-6
    with pytest.raises(ClipassoError, match="num_segments=2"):
        build_module(smoke(path_svg=str(result.best_svg)), load_target(resolve_target(TARGET), size=96))
    line = run_sketch(smoke(control_points_per_seg=2, num_segments=3, steps=2), tmp_path / "lines")
    assert " L " in line.best_svg.read_text() and " C " not in line.best_svg.read_text()


# --- sparse opacity ------------------------------------------------------------------------------


@pytest.mark.slow
def test_force_sparse_moves_opacities_within_0_1_and_writes_them(tmp_path):
    cfg = smoke(force_sparse=True, color_lr=0.2, steps=8)
    module, record, trainer = fit(cfg, tmp_path)
    groups = trainer.optimizers[0].param_groups
    assert [g["lr"] for g in groups] == [1.0, 0.2]
    ops = module.opacities.detach()
    assert (ops >= 0).all() and (ops <= 1).all()
    assert (ops - 1).abs().max() > 0.1  # they moved
    assert any(((o == 0) | (o == 1)).any() for o in record.opacities.values())  # the clamp was reached
    best = trainer.callbacks[[type(c).__name__ for c in trainer.callbacks].index("BestSketch")]
    strokes, _ = read_strokes(tmp_path / "best.svg")
    assert torch.allclose(strokes.opacities[0], best.best_opacities[best.best_seed_index], atol=1e-4)
    final, _ = read_strokes(tmp_path / "seeds" / "seed0" / "final.svg")
    assert torch.allclose(final.opacities[0], ops[0], atol=1e-4)
    # a stroke's opacity changes the rendered sketch, so its gradient is real
    assert not torch.equal(module.render(), module.render(opacities=torch.ones_like(ops)))


def test_opacity_step_is_the_official_adam_step(tmp_path):
    """The first update of a stroke's opacity is color_lr x sign(gradient) (Adam's first step), then the clamp."""
    cfg = smoke(force_sparse=True, color_lr=0.05, steps=2, eval_interval=0)
    module, record, _ = fit(cfg, tmp_path)
    moved = record.opacities[1] - record.opacities[0]
    assert ((moved.abs() - 0.05).abs() < 1e-4).sum() + (record.opacities[1] == 1).sum() == moved.numel()
    assert (moved < -0.04).any()


@pytest.mark.slow
def test_color_vars_threshold_binarises(tmp_path):
    module, record, _ = fit(smoke(force_sparse=True, color_lr=0.4, color_vars_threshold=0.8, steps=4), tmp_path)
    for ops in record.opacities.values():
        assert ((ops == 0) | (ops == 1)).all()
    assert (module.opacities == 0).any()


def test_force_sparse_starts_from_the_opacities_of_path_svg(tmp_path):
    pts = torch.rand(4, 4, 2) * 80 + 8
    ops = torch.tensor([0.2, 0.4, 0.6, 0.8])
    write_svg(tmp_path / "s.svg", pts, torch.full((4,), 1.5), ops, 96, 96)
    module = build_module(smoke(force_sparse=True, path_svg=str(tmp_path / "s.svg")), load_target(resolve_target(TARGET), size=96))
    assert torch.allclose(module.opacities[0], ops)


# --- stages --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stage_k_adds_its_strokes_and_freezes_the_earlier_ones(tmp_path):
    """Three stages (two boundaries: a rule for "the first boundary" only would pass with two)."""
    cfg = smoke(num_stages=3, steps=4, eval_interval=0, save_interval=4)
    module, record, trainer = fit(cfg, tmp_path)
    assert trainer.global_step == 12 and module.points.shape[:2] == (1, 12)
    starts = torch.stack([r.starts for r in module.init_results])[0]
    assert len({tuple(s.tolist()) for s in starts}) == 12  # all stages' starts in one draw without replacement
    p = {**record.points, 12: module.points.detach()}
    for stage in range(3):
        first, last = 4 * stage, 4 * stage + 4  # stage k's strokes and steps
        a, b = p[4 * stage], p[4 * stage + 4]
        assert torch.equal(a[:, :first], b[:, :first]), stage  # earlier stages' strokes stay where they were
        assert not torch.equal(a[:, first:last], b[:, first:last]), stage  # stage k trains its strokes ...
        assert torch.equal(a[:, last:], b[:, last:]), stage  # ... and not the later stages'
        if stage == 0:
            continue
        # every stage starts a fresh Adam: its first step moves every coordinate with a gradient by lr = 1
        # (without the reset Adam's bias correction at step 5 or 9 would make it about 0.5; tiny gradients
        # lose a little to eps)
        step = (p[4 * stage + 1] - a)[:, first:last].abs()
        moved = step[step > 1e-6]
        assert moved.numel() > 0 and (moved > 0.99).all() and (moved < 1 + 1e-5).all(), (stage, moved)
    snaps = tmp_path / "seeds" / "seed0" / "snapshots"
    assert [read_strokes(snaps / f"step{s:05d}.svg")[0].num_strokes for s in (0, 4, 8)] == [4, 8, 12]
    assert read_strokes(tmp_path / "seeds" / "seed0" / "final.svg")[0].num_strokes == 12


def test_bad_stroke_options_name_the_fix(tmp_path):
    with pytest.raises(ClipassoError, match="control_points_per_seg=5"):
        run_sketch(smoke(control_points_per_seg=5), tmp_path)
    with pytest.raises(ClipassoError, match="num_stages"):
        run_sketch(smoke(num_stages=2, path_svg="x.svg"), tmp_path)


# --- resume --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_and_resume_with_every_stroke_option(tmp_path):
    args = ["sketch", "preset=smoke", f"target={TARGET}", "steps=8", "num_stages=2", "num_segments=2",
            "force_sparse=true", "color_lr=0.1", "eval_interval=2", "save_interval=0", "checkpoint_interval=4",
            "seeds=[0]", "logger=none", "canvas=96", "strokes=4"]
    whole = tmp_path / "whole"
    res = cli(*args, f"hydra.run.dir={whole}")
    assert res.returncode == 0, res.stderr[-3000:]
    killed = tmp_path / "killed"
    assert kill_after_first_checkpoint(*args, run_dir=killed).exists()
    res = cli("sketch", f"resume={killed}", f"hydra.run.dir={tmp_path / 'h'}")
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("best.svg", "seeds/seed0/final.svg"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    final, _ = read_strokes(whole / "seeds" / "seed0" / "final.svg")
    assert final.num_strokes == 8 and final.num_segments == 2 and (final.opacities < 1).any()


def test_evaluation_reads_multi_segment_sketches(tmp_path):
    from clipasso_pl.evaluate.runner import load_sketch

    write_svg(tmp_path / "s.svg", TWO_SEGMENTS[None] * 2, torch.tensor([4.0]), torch.tensor([0.7]), 192, 192)
    image = load_sketch(tmp_path / "s.svg", 96, TorchRenderer())
    direct = TorchRenderer().render(Strokes(TWO_SEGMENTS[None, None], torch.tensor([[2.0]]), torch.tensor([[0.7]])), 96, 96)[0]
    assert (image - direct).abs().max() < 1e-3 and (1 - image).sum() > 50
    assert compose("evaluate", ["preset=smoke"], num_segments=2, force_sparse=True).num_segments == 2


@pytest.mark.parametrize("which", ["points", "opacities"])
def test_multi_segment_gradients_match_finite_differences(which):
    """Through the segment union (nearest segment per pixel) the gradient is still the image's derivative."""
    g = torch.Generator().manual_seed(5)
    pts = (torch.rand(1, 2, 7, 2, generator=g, dtype=torch.float64) * 20 + 2).requires_grad_(which == "points")
    op = torch.tensor([[0.8, 0.6]], dtype=torch.float64, requires_grad=which == "opacities")
    hw = torch.tensor([[1.4, 1.1]], dtype=torch.float64)
    weight = torch.nn.functional.avg_pool2d(torch.randn(1, 3, 24, 24, generator=g, dtype=torch.float64), 5, 1, 2)

    def f(p, o):
        return float((TorchRenderer().render(Strokes(p, hw, o), 24, 24) * weight).sum()) if not torch.is_grad_enabled() \
            else (TorchRenderer().render(Strokes(p, hw, o), 24, 24) * weight).sum()

    x = pts if which == "points" else op
    (grad,) = torch.autograd.grad(f(pts, op), x)
    flat, fd, h = x.detach().reshape(-1), torch.empty(x.numel(), dtype=torch.float64), 1e-4
    with torch.no_grad():
        for i in range(flat.numel()):
            vals = []
            for s in (h, -h):
                v = flat.clone()
                v[i] += s
                vals.append(f(v.view_as(x), op.detach()) if which == "points" else f(pts.detach(), v.view_as(x)))
            fd[i] = (vals[0] - vals[1]) / (2 * h)
    grad = grad.reshape(-1)
    cos = float(grad @ fd / (grad.norm() * fd.norm()))
    rel = float((grad - fd).norm() / fd.norm())
    # points: the same ~3% normal-rotation error as one cubic (see test_render_grad); opacities: exact
    assert (cos > 0.998 and rel < 0.05) if which == "points" else (cos > 0.99999 and rel < 1e-3), (cos, rel)
