"""The callback contract (clipasso_pl.training.contract): both sketching LightningModules, built from the
tiny configs, carry every member the callbacks read, with its type, before and after training.

Tiny random-weight models, CPU, no network.
"""

import re
from pathlib import Path

import pytorch_lightning as pl
import pytest
import torch
from PIL import Image, ImageDraw

from clipasso_pl.api import build_module
from clipasso_pl.config import compose
from clipasso_pl.training.contract import Evaluation, PointSketcher, Sketcher
from clipasso_pl.training.nonfinite import NonfiniteSteps
from clipasso_pl.scene.driver import SceneRunner
from clipasso_pl.scene.inputs import prepare_inputs
from clipasso_pl.sketch_target import config_target
from clipasso_pl.training.steps import step_loader
from clipasso_pl.strokes import Strokes

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "clipasso_pl"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 64 x 48 photo whose alpha channel marks a disc (the scene's object)."""
    img = Image.new("RGBA", (64, 48), (180, 200, 230, 255))
    ImageDraw.Draw(img).rectangle((0, 32, 64, 48), fill=(80, 130, 60, 255))
    alpha = Image.new("L", (64, 48), 0)
    ImageDraw.Draw(alpha).ellipse((20, 10, 44, 40), fill=255)
    img.putalpha(alpha)
    path = tmp_path_factory.mktemp("contract") / "photo.png"
    img.save(path)
    return path


def sketch_module(photo, **values):
    cfg = compose("sketch", ["preset=smoke"], target=str(photo), seeds=[0, 1000], steps=2, eval_interval=1,
                  logger="none", **values)
    return build_module(cfg, config_target(cfg).image)


def scene_module(photo, tmp_path):
    cfg = compose("scene", ["preset=smoke"], target=str(photo))
    inputs = prepare_inputs(photo, ["background"], max_size=64, mask_model=None)
    runner = SceneRunner(cfg, tmp_path, inputs, "fp")
    initial = 8 + (cfg.canvas - 16) * torch.rand(len(cfg.seeds), 6, 4, 2, generator=torch.Generator().manual_seed(0))
    return runner.module("background", int(cfg.layers[0]), initial, eval_start=0, eval_interval=1, select="lowest")


def fit(module, steps: int = 2):
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, train_dataloaders=step_loader(steps))


def check_sketcher(module, trained_opacities: bool) -> None:
    """Every Sketcher member with its type; ``trained_opacities``: the module trains opacities [S, M]."""
    assert isinstance(module, Sketcher)
    S = len(module.seeds)
    assert S == 2 and all(isinstance(s, int) for s in module.seeds)
    assert isinstance(module.height, int) and isinstance(module.width, int) and isinstance(module.eval_interval, int)
    points = module.points
    assert isinstance(points, torch.Tensor) and points.ndim == 4 and points.shape[0] == S and points.shape[-1] == 2
    strokes = module.strokes(points[:1])
    assert isinstance(strokes, Strokes) and strokes.points.shape[0] == 1
    assert module.renderer.render(strokes, module.height, module.width).shape == (1, 3, module.height, module.width)
    if trained_opacities:
        assert isinstance(module.opacities, torch.Tensor) and module.opacities.shape == points.shape[:2]
    else:
        assert module.opacities is None
    assert module.nonfinite is None or isinstance(module.nonfinite, NonfiniteSteps)


def check_after_an_eval_step(module) -> None:
    """After a fit whose last step evaluated: last_train and last_eval hold per-seed values [S]."""
    S = len(module.seeds)
    assert isinstance(module.last_train, dict) and all(v.shape == (S,) for v in module.last_train.values())
    record = module.last_eval
    assert isinstance(record, Evaluation)
    assert isinstance(record.step, int) and record.terms["loss"].shape == (S,)
    assert record.points.shape[0] == S and record.points.shape[-1] == 2
    assert record.opacities is None or record.opacities.shape == record.points.shape[:2]
    assert record.count is None or isinstance(record.count, int)
    assert record.sketches is None or record.sketches.shape == (S, 3, module.height, module.width)


def test_sketch_module_keeps_the_whole_contract(photo):
    module = sketch_module(photo)
    assert isinstance(module, PointSketcher)
    check_sketcher(module, trained_opacities=False)
    assert module.last_train is None and module.last_eval is None
    assert isinstance(module.nonfinite, NonfiniteSteps) and int(module.nonfinite.total) == 0
    assert module.active.dtype == torch.bool and module.target.shape == (1, 3, module.height, module.width)
    fit(module)
    check_after_an_eval_step(module)
    assert module.last_eval.sketches is not None and module.last_eval.count == module.visible_strokes()
    assert module.init_results is not None and len(module.init_results) == 2


def test_sketch_module_with_trained_opacities(photo):
    check_sketcher(sketch_module(photo, force_sparse=True), trained_opacities=True)


def test_scene_module_keeps_the_callbacks_part_of_the_contract(photo, tmp_path):
    module = scene_module(photo, tmp_path)
    check_sketcher(module, trained_opacities=False)
    assert module.nonfinite is None and module.last_eval is None
    assert not isinstance(module, PointSketcher)  # no init, stages or early stopping: the sketch callbacks refuse it
    fit(module)
    check_after_an_eval_step(module)
    assert module.last_eval.sketches is None and module.last_eval.count is None


def test_callbacks_read_the_contract_not_probes():
    """No getattr/hasattr on a module or a record in the callbacks or the app's run hook."""
    files = sorted((PACKAGE / "callbacks").glob("*.py")) + [PACKAGE / "app" / "watch.py"]
    probes = [f"{f.name}: {line.strip()}" for f in files for line in f.read_text().splitlines()
              if re.search(r"\b(getattr|hasattr)\((module|pl_module|record)\b", line)]
    assert len(files) > 5 and probes == []
