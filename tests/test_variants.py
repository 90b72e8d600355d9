"""Behaviour where a plausible variant of the code gives another number.

Each test is built at values where the official formula and its careless variants disagree (a ratio
r != 1, several augmented views, a textured background, one seed stopping while another goes on, the
numbers the module actually feeds its parts) and was checked by making the wrong change by hand and
seeing it fail (README "Development"). Defaults are in test_defaults.py, stage boundaries in
test_stroke_options.py, the schema's boundaries in test_config_schema.py.
"""

import math

import pytest
import torch

from clipasso_pl.api import build_module, build_trainer, lr_schedule, total_steps
from clipasso_pl.callbacks.stopping import EvalEarlyStopping
from clipasso_pl.config import compose
from clipasso_pl.images import resolve_target
from clipasso_pl.sketch_target import load_target
from clipasso_pl.training.steps import step_loader

TARGET = "skimage:coffee"


def sketch_cfg(*overrides, **values):
    base = dict(target=TARGET, save_interval=0, checkpoint_interval=0, logger="none", canvas=96, strokes=4)
    base.update(values)
    return compose("sketch", ["preset=smoke", *overrides], **base)


# ------------------------------------------------------------------------------ CLIPascene
@pytest.fixture(scope="module")
def scene_runner(tmp_path_factory):
    """The scene driver as `clipasso-pl scene preset=smoke parts=[background]` builds it (tiny ViT)."""
    from clipasso_pl.scene.driver import SceneRunner
    from clipasso_pl.scene.inputs import prepare_inputs

    cfg = compose("scene", ["preset=smoke", "parts=[background]"], target=TARGET)
    inputs = prepare_inputs(cfg.target, list(cfg.parts), max_size=cfg.max_size)
    return SceneRunner(cfg, tmp_path_factory.mktemp("scene"), inputs, "fp")


def simplicity_module(runner, ratio: float):
    g = torch.Generator().manual_seed(0)
    initial = 8 + (runner.canvas - 16) * torch.rand(int(runner.cfg.strokes), 4, 2, generator=g)
    return runner.module("background", 0, initial, simplify=True, ratio=ratio, eval_start=0, eval_interval=1,
                         select="zscore")


def test_the_scene_module_feeds_its_width_mlp_the_official_width(scene_runner, monkeypatch):
    """The official width MLP's input is the initial stroke width, 1.5, for every stroke (SceneSketch
    painter_params: init_widths = ones(num_paths) * 1.5): what the module passes, not what a test passes.
    The module runs every seed's WidthMLP in one batched forward (WidthMLP.batched): its input is recorded."""
    from clipasso_pl.scene.mlp import WidthMLP

    module = simplicity_module(scene_runner, ratio=0.25)
    fed = []
    forward = WidthMLP.batched

    def recording(mlps, x):
        assert all(isinstance(m, WidthMLP) for m in mlps)
        fed.append(x.detach().clone())
        return forward(mlps, x)

    monkeypatch.setattr(WidthMLP, "batched", staticmethod(recording))
    module.keep(noise=True)
    module.keep(noise=False)
    assert fed and all(x.shape[-1] == scene_runner.cfg.strokes for x in fed)
    assert all(torch.equal(x, torch.full_like(x, 1.5)) for x in fed), [x.unique() for x in fed]


def test_the_ratio_term_is_sparsity_minus_r_times_clip(scene_runner):
    """(S - r * clip)^2 with r = 0.25: (r S - clip)^2 or (S - clip)^2 give other numbers. The total adds the
    CLIP term and the sparsity at coefficient 1 each (no gradnorm weights given)."""
    from clipasso_pl.scene.losses import ratio_loss

    assert float(ratio_loss(torch.tensor(0.3), torch.tensor(0.8), 0.25)) == pytest.approx((0.3 - 0.2) ** 2)
    module = simplicity_module(scene_runner, ratio=0.25)
    raw = {"conv/block0": torch.tensor([0.8, 1.2]), "sparsity": torch.tensor([0.3, 0.6])}
    terms = module.combine(raw, None)
    assert torch.allclose(terms["ratio"], torch.tensor([(0.3 - 0.25 * 0.8) ** 2, (0.6 - 0.25 * 1.2) ** 2]))
    assert torch.allclose(terms["clip"], raw["conv/block0"])
    assert torch.allclose(terms["loss"], raw["conv/block0"] + raw["sparsity"] + terms["ratio"])


def test_scene_points_are_the_initial_points_plus_a_tenth_of_the_mlp_offset(scene_runner):
    """The module's points: 0.5 (x + offset_scale MLP(x) + 1) W with the composed offset_scale (0.1 by
    default: a different scale moves the first sketch by another amount)."""
    from clipasso_pl.scene.mlp import LocationMLP, from_unit

    module = simplicity_module(scene_runner, ratio=1.0)
    mlps = [m for m in module.modules() if isinstance(m, LocationMLP)]
    assert len(mlps) == len(scene_runner.cfg.seeds) and {m.offset_scale for m in mlps} == {0.1}
    x = module.initial  # [S, N * 8] in [-1, 1]
    with torch.no_grad():
        expected = torch.stack([from_unit((xi + 0.1 * m.net(xi)).view(-1, 4, 2), module.side) for m, xi in zip(mlps, x)])
        moved = (expected - from_unit(x.view(expected.shape), module.side)).abs().max()
    assert torch.allclose(module.points, expected, atol=1e-4)
    assert moved > 1e-2  # the MLP's offset is visible at this scale


# ------------------------------------------------------------------------ object mask
def test_mask_object_attention_multiplies_the_saliency_on_a_textured_background():
    """With the mask multiplied in, no start point can fall outside the object even where the background
    has edges and saliency; adding the mask (or dropping it) leaves the background a probability."""
    from clipasso_pl.init import StrokeInit, xdog_edges

    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    stripes = 0.5 + 0.5 * torch.sin(xx / 2.0 + yy / 5.0)  # texture everywhere: XDoG edges all over
    target = torch.stack([stripes, stripes.flip(0), 1 - stripes])
    mask = torch.zeros(96, 96, dtype=torch.bool)
    mask[30:70, 25:65] = True
    init = StrokeInit("saliency_xdog", "tiny-vit", None)
    saliency, _ = init.maps(target)
    edges = xdog_edges(target)
    assert float((saliency * edges)[~mask].max()) > 0  # the background would be a candidate
    init.attention_mask = mask
    init._maps = None  # the cache is per target; the mask changed
    _, probability = init.maps(target)
    assert float(probability[~mask].sum()) == 0.0 and float(probability[mask].sum()) == pytest.approx(1.0, abs=1e-5)
    starts = init(target, 24, torch.Generator().manual_seed(3)).starts.long()
    assert mask[starts[:, 1], starts[:, 0]].all()


# ------------------------------------------------------------------------ text term
def test_the_text_term_sums_the_augmented_views_only():
    """Training: sum over the num_augs augmented views of 1 - cos(view, prompt), not the plain view too
    (with 3 views the two differ by the plain view's term); eval: the plain sketch alone."""
    cfg = sketch_cfg(text_target="a cat", clip_text_guide=1.0, seeds=[0, 1000], **{"augment.num_augs": 3})
    module = build_module(cfg, load_target(resolve_target(TARGET), size=96))
    module.initialize()
    drawn = []
    for g in module.augment_generators:  # the same draws as the step's own augmentation
        c = torch.Generator()
        c.set_state(g.get_state())
        drawn.append(c)
    with torch.no_grad():
        sketches = module.render()
        terms = module.compute_loss(sketches)
        views, _ = module.augment(sketches, module.target, drawn)
        per_view = module.text_guide(views).view(2, 4)  # [S, plain + 3 views]
    assert torch.allclose(terms["text"], per_view[:, 1:].sum(1), atol=1e-5)
    assert (terms["text"] - per_view.sum(1)).abs().min() > 1e-3  # the variant with the plain view differs
    with torch.no_grad():
        record = module.evaluate()
    assert torch.allclose(record.terms["text"], module.text_guide(sketches), atol=1e-5)


# ------------------------------------------------------------------------ lr schedule
def test_the_lr_schedule_spans_every_stage():
    """With num_stages=3 the half-cosine runs over steps x 3 (the whole run), not one stage's steps."""
    from clipasso_pl.schedules import official_lr

    cfg = sketch_cfg(lr_scheduler=True, lr=0.5, steps=4, num_stages=3)
    schedule = lr_schedule(cfg)
    assert total_steps(cfg) == 12
    assert [schedule(t) for t in range(12)] == pytest.approx([official_lr(t, 0.5, 12) for t in range(12)])
    assert schedule(3) == pytest.approx(0.5 * (math.cos(math.pi * 3 / 12) + 1) / 2)  # one stage: 0.07, not 0.43


# ------------------------------------------------------------------------ early stopping
class StopFirstSeed(EvalEarlyStopping):
    """The real callback, with its rule scripted: seed 0 stops at the eval of step 2; seed 1 never stops."""

    def __init__(self):
        super().__init__()
        self.evals = 0

    def update(self, loss: torch.Tensor) -> torch.Tensor:
        self.evals += 1
        return torch.tensor([self.evals >= 3] + [False] * (len(loss) - 1))


def fit_recording(cfg, tmp_path, stopper):
    import pytorch_lightning as pl

    class Record(pl.Callback):
        def __init__(self):
            self.points = {}

        def on_train_batch_start(self, trainer, module, batch, idx):
            self.points[trainer.global_step] = module.points.detach().clone()

    module = build_module(cfg, load_target(resolve_target(TARGET), size=int(cfg.canvas)))
    record = Record()
    trainer = build_trainer(cfg, tmp_path, ([stopper] if stopper else []) + [record])
    trainer.fit(module, train_dataloaders=step_loader(total_steps(cfg)))
    return module, record.points, trainer


@pytest.mark.slow
def test_a_stopped_seed_stays_where_it_stopped_while_the_other_goes_on(tmp_path):
    cfg = sketch_cfg("init=random", steps=8, eval_interval=1, seeds=[0, 1000])
    module, p, trainer = fit_recording(cfg, tmp_path / "stop", StopFirstSeed())
    assert trainer.global_step == 8  # the run goes on while one seed is active
    assert module.active.tolist() == [False, True]
    assert not torch.equal(p[2][0], p[3][0])  # seed 0 moved until its stop (the update of step 2) ...
    for step in range(4, 8):
        assert torch.equal(p[step][0], p[3][0]), step  # ... and never after it, momentum or not
    assert torch.equal(module.points[0], p[3][0])
    assert not torch.equal(p[7][1], p[3][1])  # seed 1 kept moving
    # seeds never mix: seed 1 moved exactly as in a run where no seed stops
    free, _, _ = fit_recording(cfg, tmp_path / "free", None)
    assert torch.allclose(module.points[1], free.points[1], atol=1e-5)
    assert not torch.equal(free.points[0], module.points[0])


# ------------------------------------------------------------------------------ bench
def test_bench_step_times_skip_the_warmup_and_take_medians():
    """Marks at 0, 1, 2, 3, 10 s with one warm-up step: the span (10 - 1) / 3 steps = 3 s (not 10 / 4, not
    9 / 4); the median step 1 s (the mean would be 3 s); outside the module = the step minus its inside time,
    the warm-up's inside time dropped with its step."""
    from clipasso_pl.bench.timing import StepTimes

    times = StepTimes(torch.device("cpu"), warmup=1)
    times.marks = [0.0, 1.0, 2.0, 3.0, 10.0]
    times.inside = [0.5, 0.2, 0.4, 1.0]  # seconds inside training_step..optimizer_step, per step
    summary = times.summary()
    assert summary["step_ms"] == pytest.approx(3000.0) and summary["step_median_ms"] == pytest.approx(1000.0)
    assert summary["timed_steps"] == 3
    assert summary["outside_median_ms"] == pytest.approx(800.0)  # [800, 600, 6000]
    assert summary["outside_mean_ms"] == pytest.approx(7400.0 / 3)
