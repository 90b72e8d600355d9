"""Real training steps through the real Trainer dispatch no op that would block the host on CUDA.

The recorder (``clipasso_pl.syncs``) is the first callback, so each record spans one whole step:
Lightning's loop, the step, the backward, the optimiser and every callback and logger. Eval,
log and checkpoint steps may read the device (``eval_interval`` = 4 here; the loss logger
flushes at evals, saving and checkpoints are off); every other step must record zero syncs.
On CUDA the same steps run under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from PIL import Image

from clipasso_pl.api import build_module, build_trainer, target_path
from clipasso_pl.config import compose
from clipasso_pl.images import resolve_target
from clipasso_pl.training.steps import step_loader
from clipasso_pl.sketch_target import load_sketch_target
from clipasso_pl.syncs import StepRecord, SyncRecorderCallback

TARGET = "skimage:coffee"
EVAL = 4
# The default sketch (S = 3, 16 strokes, 4 augmentations) and each official option on top of it.
SKETCH_CASES = {
    "default": {},
    "segments_sparse": {"num_segments": 2, "force_sparse": True},
    "text": {"text_target": "a cat", "clip_text_guide": 1.0},
    "stages": {"num_stages": 2, "steps": 3},  # 2 x 3 steps; stage 1 starts at step 3
    "mask": {"mask": "MASK"},
}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def sketch_cfg(case: str, tmp_path: Path, device: str = "cpu"):
    values = dict(SKETCH_CASES[case])
    if values.get("mask") == "MASK":
        w, h = Image.open(resolve_target(TARGET)).size
        mask = np.zeros((h, w), np.uint8)
        mask[h // 5:h - h // 5, w // 4:w - w // 4] = 255  # the object: the middle of the photo
        Image.fromarray(mask).save(tmp_path / "mask.png")
        values["mask"] = str(tmp_path / "mask.png")
    base = dict(target=TARGET, logger="csv", save_interval=0, checkpoint_interval=0, eval_interval=EVAL,
                seeds=[0, 1000, 2000], strokes=16, steps=6)
    cfg = compose("sketch", ["preset=smoke", "init=random", "init.pretrained=null", "augment.num_augs=4"],
                  **{**base, **values})
    cfg.trainer.accelerator = "gpu" if device == "cuda" else "cpu"
    return cfg


def fit_sketch(case: str, tmp_path: Path, first: pl.Callback, device: str = "cpu") -> int:
    """Train the case with ``first`` as the first callback; returns the number of steps run."""
    cfg = sketch_cfg(case, tmp_path, device)
    loaded = load_sketch_target(target_path(cfg), size=int(cfg.canvas), fix_scale=cfg.fix_scale, mask=cfg.get("mask"))
    module = build_module(cfg, loaded.image, loaded.mask)
    callbacks = [first] + [instantiate(c) for c in cfg.callbacks.values() if c]
    trainer = build_trainer(cfg, tmp_path, callbacks)
    steps = int(trainer.max_steps)
    trainer.fit(module, train_dataloaders=step_loader(steps))
    assert trainer.global_step == steps
    return steps


def fit_scene(tmp_path: Path, first: pl.Callback, device: str = "cpu") -> int:
    """A simplicity level of the scene module (location and width MLPs, Gumbel draws, gradnorm
    weights each step), S = 3, trained like the scene driver does (with its loss logger)."""
    from clipasso_pl.callbacks.loss_logger import LayerLossLogger
    from clipasso_pl.clip import ClipFeatures, JointAugment
    from clipasso_pl.render import TorchRenderer
    from clipasso_pl.scene.losses import SceneClipLoss
    from clipasso_pl.scene.module import SceneSketchModule

    g = torch.Generator().manual_seed(0)
    feats = ClipFeatures("tiny-vit", None)
    loss = SceneClipLoss(feats.layer_names, layer=1, anchor_layer=0, anchor_weight=0.5)
    module = SceneSketchModule(torch.rand(3, 64, 64, generator=g), feats, loss, JointAugment(num_augs=2, size=64),
                               TorchRenderer(), 8 + 48 * torch.rand(3, 8, 4, 2, generator=g), seeds=[0, 1000, 2000],
                               hidden=32, simplify=True, eval_start=0, eval_interval=EVAL)
    steps = 6
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         accelerator="gpu" if device == "cuda" else "cpu", default_root_dir=str(tmp_path),
                         callbacks=[first, LayerLossLogger()])
    trainer.fit(module, train_dataloaders=step_loader(steps))
    return steps


def quiet_steps(steps: int) -> list[int]:
    """The steps that are neither eval (nor log-flush) steps: 1-3, 5, ..."""
    return [s for s in range(steps) if s % EVAL]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> dict[str, list[StepRecord]]:
    """Every case trained once with the recorder: case -> the records of its quiet steps."""
    out = {}
    for case in [*SKETCH_CASES, "scene"]:
        rec = SyncRecorderCallback()
        folder = tmp_path_factory.mktemp(case)
        steps = fit_scene(folder, rec) if case == "scene" else fit_sketch(case, folder, rec)
        assert [r.step for r in rec.records] == list(range(steps))
        out[case] = [r for r in rec.records if r.step in quiet_steps(steps)]
    return out


def syncs(records: list[StepRecord]) -> list[tuple[int, str, str]]:
    return [(r.step, reason, where) for r in records for reason, _, where in r.syncs]


@pytest.mark.slow
@pytest.mark.parametrize("case", [*SKETCH_CASES, "scene"])
def test_training_steps_have_no_host_sync(recorded, case):
    records = recorded[case]
    assert len(records) >= 4 and all(r.kernels > 100 for r in records)
    assert syncs(records) == []


@pytest.mark.slow
def test_ops_per_step_are_the_same_each_quiet_step(recorded):
    """A static step: the same ops every quiet step (within a stage), so it can be captured once. The first
    step after an eval differs by the renderer's budget bookkeeping (its needs' running max starts over at the
    eval's refit), the last step's window also holds the end of fit."""
    ops = [r.ops for r in recorded["default"][1:-1]]
    assert len(ops) >= 2 and len(set(ops)) == 1, ops


class SyncDebug(pl.Callback):
    """First in the list: CUDA raises on any synchronising call from a quiet step's start to the next step's."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        torch.cuda.set_sync_debug_mode("error" if trainer.global_step % EVAL else 0)

    def on_train_end(self, trainer, module):
        torch.cuda.set_sync_debug_mode(0)

    def on_exception(self, trainer, module, exception):
        torch.cuda.set_sync_debug_mode(0)


@CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("case", [*SKETCH_CASES, "scene"])
def test_training_steps_do_not_synchronise_on_cuda(tmp_path, case):
    try:
        if case == "scene":
            fit_scene(tmp_path, SyncDebug(), device="cuda")
        else:
            fit_sketch(case, tmp_path, SyncDebug(), device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode(0)
