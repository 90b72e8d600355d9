"""Hardening: bad input, resume after a kill, determinism, non-finite steps."""

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from clipasso_pl.api import build_module, build_trainer, run_sketch
from clipasso_pl.config import compose
from clipasso_pl.images import resolve_target
from clipasso_pl.sketch_target import load_target
from clipasso_pl.training.steps import step_loader
from clipasso_pl.strokes import read_svg
from cli_runs import cli, kill_after_first_checkpoint, one_line_error

TARGET = "skimage:coffee"


def smoke(**values):
    base = dict(target=TARGET, steps=12, eval_interval=3, save_interval=0, checkpoint_interval=0, logger="none")
    base.update(values)
    return compose("sketch", ["preset=smoke"], **base)


@pytest.mark.slow
def test_huge_image_is_downscaled_on_load(tmp_path):
    p = tmp_path / "huge.jpg"
    Image.new("RGB", (12000, 12000), (10, 200, 30)).save(p, quality=50)
    t = load_target(p, size=224)
    assert t.shape == (3, 224, 224) and abs(float(t[1].mean()) - 200 / 255) < 0.02


@pytest.mark.slow
def test_huge_png_is_handled(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("L", (12000, 12000), 128).save(p, compress_level=1)
    assert load_target(p, size=64).shape == (3, 64, 64)


def test_non_square_with_and_without_fix_scale(tmp_path):
    arr = np.zeros((100, 300, 3), np.uint8)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    padded, squashed = load_target(tmp_path / "wide.png", 32, True), load_target(tmp_path / "wide.png", 32, False)
    assert padded[:, 0, 16].min() == 1 and squashed.max() == 0


@pytest.mark.slow
def test_output_directory_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    res = cli("sketch", "preset=smoke", f"target={TARGET}", f"hydra.run.dir={blocker / 'run'}")
    one_line_error(res, "not writable")


@pytest.mark.slow
def test_unknown_clip_model_and_group(tmp_path):
    one_line_error(cli("sketch", "preset=smoke", "clip.model=NoSuchCLIP", f"hydra.run.dir={tmp_path}"), "NoSuchCLIP")
    one_line_error(cli("sketch", "init=nonsense", f"hydra.run.dir={tmp_path}"), "nonsense")


@pytest.mark.slow
def test_bad_path_svg_leaves_no_partial_run(tmp_path):
    bad = tmp_path / "bad.svg"
    bad.write_text("<svg><path d='M 0 0 L 1 1'/></svg>")
    out = tmp_path / "run"
    one_line_error(cli("sketch", "preset=smoke", f"target={TARGET}", f"path_svg={bad}", f"hydra.run.dir={out}"),
                    "path_svg")
    assert not (out / "best.svg").exists()


@pytest.mark.slow
def test_same_seed_gives_byte_identical_svg(tmp_path):
    a = run_sketch(smoke(seeds=[3]), tmp_path / "a")
    b = run_sketch(smoke(seeds=[3]), tmp_path / "b")
    assert a.best_svg.read_bytes() == b.best_svg.read_bytes()


@pytest.mark.slow
def test_rerun_never_overwrites_a_first_run(tmp_path):
    first = run_sketch(smoke(seeds=[0], steps=3), tmp_path / "run")
    stamp = first.best_svg.read_bytes()
    res = cli("sketch", "preset=smoke", f"target={TARGET}", "steps=3", "seeds=[5]", "logger=none",
              f"hydra.run.dir={tmp_path / 'run'}", "strokes=0")
    assert res.returncode == 2 and first.best_svg.read_bytes() == stamp


class NanOnCalls(torch.nn.Module):
    """Wraps a loss and makes the given training calls non-finite (eval calls pass through)."""

    def __init__(self, loss, bad_calls):
        super().__init__()
        self.loss, self.bad_calls, self.calls = loss, set(bad_calls), 0

    def forward(self, sketch_feats, target_feats, num_seeds):
        terms = self.loss(sketch_feats, target_feats, num_seeds)
        if next(iter(sketch_feats.values())).requires_grad:
            self.calls += 1
            if self.calls in self.bad_calls:
                terms = {k: v * float("nan") for k, v in terms.items()}
        return terms


@pytest.mark.slow
def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    cfg = smoke(seeds=[0], steps=8, max_nonfinite=3)
    module = build_module(cfg, load_target(resolve_target(TARGET)))
    module.loss_fn = NanOnCalls(module.loss_fn, bad_calls={3, 4})
    seen = {}

    class Snap(pl.Callback):
        def on_train_batch_start(self, trainer, m, batch, idx):
            seen[trainer.global_step] = m.points.detach().clone()

    from hydra.utils import instantiate

    trainer = build_trainer(cfg, tmp_path, [instantiate(c) for c in cfg.callbacks.values() if c] + [Snap()])
    trainer.fit(module, train_dataloaders=step_loader(cfg.steps))
    assert int(module.nonfinite.total) == 2
    assert torch.isfinite(module.points).all()
    # calls 3 and 4 are steps 2 and 3: their updates were skipped
    assert torch.equal(seen[2], seen[3]) and not torch.equal(seen[1], seen[2])
    assert (tmp_path / "best.svg").is_file()


@pytest.mark.slow
def test_too_many_nonfinite_steps_stop_with_a_message(tmp_path):
    out = tmp_path / "run"
    res = cli("sketch", "preset=smoke", f"target={TARGET}", "steps=20", "clip.fc_weight=nan", "max_nonfinite=3",
              "logger=none", f"hydra.run.dir={out}")
    one_line_error(res, "non-finite")
    assert "step 2" in res.stderr and "fc=" in res.stderr
    assert (out / "best.svg").is_file()  # the best sketch so far is kept


def test_strokes_leaving_the_canvas_render_without_nan():
    from clipasso_pl.render import render_strokes

    pts = torch.tensor([[[[-50.0, -50.0], [300.0, 10.0], [10.0, 400.0], [500.0, 500.0]]]], requires_grad=True)
    img = render_strokes(pts, torch.full((1, 1), 1.5), torch.ones(1, 1), 64, 64)
    img.sum().backward()
    assert torch.isfinite(img).all() and torch.isfinite(pts.grad).all()


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_best_svg(tmp_path):
    args = ["preset=smoke", f"target={TARGET}", "steps=30", "eval_interval=3", "save_interval=0",
            "checkpoint_interval=6", "seeds=[0]", "logger=csv"]
    whole = tmp_path / "whole"
    assert cli("sketch", *args, f"hydra.run.dir={whole}").returncode == 0

    killed = tmp_path / "killed"
    ckpt = kill_after_first_checkpoint("sketch", *args, run_dir=killed)
    assert ckpt.exists() and not (killed / "summary.json").exists()
    assert read_svg(killed / "best.svg")[0].shape[0] == 16  # the best so far is on disk from the first eval
    assert json.loads((killed / "best_so_far.json").read_text())["best_step"] >= 0

    res = cli("sketch", f"resume={killed}", f"hydra.run.dir={tmp_path / 'resume_hydra'}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (killed / "best.svg").read_bytes() == (whole / "best.svg").read_bytes()


@pytest.mark.slow
def test_resume_of_a_directory_without_checkpoint(tmp_path):
    one_line_error(cli("sketch", f"resume={tmp_path}", f"hydra.run.dir={tmp_path / 'h'}"), "resume=")


def test_skipped_step_keeps_every_parameter_and_adam_state_and_a_stopped_seed_keeps_its_strokes():
    """The fused Adam's on-device skip: a non-finite step changes nothing (parameters, moments, step
    count), and a stopped seed does not move though its momentum is nonzero; no clones needed."""
    from clipasso_pl.training.optim import skip_nonfinite_step

    points = torch.nn.Parameter(torch.rand(2, 3, 4, 2))
    adam = torch.optim.Adam([points], lr=0.1, fused=True)
    active, yes = torch.ones(2, dtype=torch.bool), torch.tensor(True)
    for _ in range(3):
        points.grad = torch.rand_like(points)
        skip_nonfinite_step(adam, yes, active, [points])
    before = points.detach().clone()
    state = {k: v.clone() for k, v in adam.state[points].items()}
    points.grad = torch.full_like(points, float("nan"))
    skip_nonfinite_step(adam, torch.tensor(False), active, [points])
    assert torch.equal(points.detach(), before)
    assert all(torch.equal(adam.state[points][k], v) for k, v in state.items())
    assert float(adam.state[points]["step"]) == 3.0
    # seed 1 stops: the masked loss gives it a zero gradient; Adam's momentum alone would still move it
    active = torch.tensor([True, False])
    points.grad = torch.rand_like(points) * active.view(2, 1, 1, 1)
    skip_nonfinite_step(adam, yes, active, [points])
    assert torch.equal(points.detach()[1], before[1]) and not torch.equal(points.detach()[0], before[0])
    with pytest.raises(ValueError, match="fused"):
        skip_nonfinite_step(torch.optim.Adam([points]), yes, active, [points])
