"""One home per concept (issue 18): one target loader for every command that sketches a photo,
the scene honouring clip.conv_loss_type, and a scene schema without keys the scene does not read.

Tiny random-weight models, CPU, no network.
"""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image, ImageDraw

import clipasso_pl.api as api
import clipasso_pl.runs as runs
import clipasso_pl.scene.driver as driver
from clipasso_pl.api import sketch
from clipasso_pl.bench.run import run_bench
from clipasso_pl.config import SCHEMA, compose, config_dir
from clipasso_pl.evaluate import runner as evaluate_runner
from clipasso_pl.images import to_uint8
from clipasso_pl.scene.inputs import prepare_inputs
from clipasso_pl.sketch_target import load_target


def photo_and_mask(folder: Path) -> tuple[Path, Path]:
    """A non-square 90 x 60 photo (a red disc on a green field) and its mask (the disc, white)."""
    photo = Image.new("RGB", (90, 60), (60, 140, 60))
    ImageDraw.Draw(photo).ellipse((20, 10, 60, 50), fill=(200, 40, 40))
    mask = Image.new("L", (90, 60), 0)
    ImageDraw.Draw(mask).ellipse((20, 10, 60, 50), fill=255)
    folder.mkdir(parents=True, exist_ok=True)
    photo.save(folder / "photo.png")
    mask.save(folder / "mask.png")
    return folder / "photo.png", folder / "mask.png"


@pytest.mark.slow
def test_sketch_bench_and_evaluate_ceiling_see_the_same_target(tmp_path, monkeypatch):
    """mask= and official_padding=true on a non-square photo: sketch's input.png, the tensor bench's module
    is built with and evaluate's photo ceiling are the same picture."""
    photo, mask = photo_and_mask(tmp_path / "in")
    options = [f"mask={mask}", "official_padding=true", "seeds=[0]"]

    # sketch: the input.png of a real run
    sketch(photo, tmp_path / "sketch", ["preset=smoke", "logger=none", *options], steps=1, eval_interval=0,
           save_interval=0, checkpoint_interval=0, progress=False)
    seen_by_sketch = np.asarray(Image.open(tmp_path / "sketch" / "input.png"))

    # bench: the target and mask every module of the benchmark is built with
    built = []
    real_build = api.build_module

    def recording_build(cfg, target, mask=None, **kw):
        built.append((target, mask))
        return real_build(cfg, target, mask, **kw)

    monkeypatch.setattr(api, "build_module", recording_build)
    run_bench(compose("bench", ["preset=smoke", f"target={photo}", *options, "bench.loops=[bare]", "bench.run=[fp32]",
                                "bench.warmup=0", "bench.repeats=1", f"bench.out={tmp_path / 'bench' / 'step'}"]))
    assert built and all(m is not None for _, m in built)  # the mask went in too (mask_object_attention)
    bench_target = built[0][0]

    # evaluate: the photos of the ceiling row, with the sketch of the one job already in the store
    store = tmp_path / "store"
    for name in ("disc", "ball"):  # zero-shot recognition needs two classes
        (tmp_path / "data" / name).mkdir(parents=True)
        shutil.copy(photo, tmp_path / "data" / name / "photo.png")
        (store / "4" / name).mkdir(parents=True)
        Image.new("RGB", (224, 224), "white").save(store / "4" / name / "photo.png")
    ceilings = []
    real_ceiling = evaluate_runner.ceiling_photos

    def recording_ceiling(cfg, dataset):
        ceilings.append(real_ceiling(cfg, dataset))
        return ceilings[-1]

    monkeypatch.setattr(evaluate_runner, "ceiling_photos", recording_ceiling)
    state = evaluate_runner.run_evaluate(compose("evaluate", ["preset=smoke", f"data={tmp_path / 'data'}", "levels=[4]",
                                                              f"sketches={store}", "eval.random_baseline=false",
                                                              "logger=none", *options]), tmp_path / "eval")
    assert state["complete"] and state["sketches_reused"] == 2
    (ceiling,) = ceilings

    assert torch.equal(bench_target, ceiling[0]) and torch.equal(bench_target, ceiling[1])
    assert np.array_equal(to_uint8(bench_target), seen_by_sketch)
    # ... and the options took effect: not the plain padded photo, white outside the mask
    assert not np.array_equal(to_uint8(load_target(photo, 224, True)), seen_by_sketch)
    assert (seen_by_sketch[:, :12] == 255).all() and (seen_by_sketch[:12] == 255).all()  # the official 20 px margin


# ----------------------------------------------------------------------------- the scene's CLIP distance
def scene_runner(tmp_path: Path, kind: str):
    cfg = compose("scene", ["preset=smoke", f"clip.conv_loss_type={kind}", "parts=[background]"])
    photo, _ = photo_and_mask(tmp_path)
    inputs = prepare_inputs(photo, ["background"], max_size=cfg.max_size, square=cfg.square)
    return driver.SceneRunner(cfg, tmp_path, inputs, "test")


def test_scene_trains_with_clip_conv_loss_type(tmp_path):
    """The scene's block term follows clip.conv_loss_type: Cos gives another loss than L2, and the one
    recomputed by hand (mean of 1 - cos along dim 1 of the ViT block output)."""
    losses, features = {}, {}
    for kind in ("L2", "Cos"):
        runner = scene_runner(tmp_path / kind, kind)
        target = runner.inputs.target("background", runner.canvas)
        initial = torch.stack([runner.init(target, runner.cfg.strokes, torch.Generator().manual_seed(s)).points
                               for s in runner.cfg.seeds])  # [S, N, 4, 2], as the fidelity stage starts
        module = runner.module("background", 1, initial, eval_start=0, eval_interval=1, select="lowest")
        assert module.loss_fn.terms.conv_loss_type == kind
        record = module.evaluate(0)
        losses[kind] = record.terms["conv/block1"]
        with torch.no_grad():
            features[kind] = (runner.clip(module.render(record.points, record.keep))["block1"],
                              runner.clip(module.target)["block1"])
    sketch_block, target_block = features["Cos"]
    by_hand = (1 - F.cosine_similarity(sketch_block, target_block.expand_as(sketch_block), dim=1)).mean(dim=1)
    assert torch.allclose(losses["Cos"], by_hand, rtol=1e-5, atol=1e-7)
    by_hand_l2 = (sketch_block - target_block).pow(2).flatten(1).mean(dim=1)
    assert torch.allclose(losses["L2"], by_hand_l2, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(losses["Cos"], losses["L2"])


# ----------------------------------------------------------------------------- every scene key is read
class ReadKeys:
    """Records the dotted keys the code reads from any DictConfig (attribute, item, ``get``), the
    subtrees it hands to ``instantiate`` (every key there is an argument) and the keys those
    subtrees interpolate. Paused while the schema validates (the check reads keys, the scene does not)."""

    def __init__(self, monkeypatch):
        self.read: set[str] = set()
        self.instantiated: set[str] = set()
        self.paused = 0
        get_attr, get_item, get = DictConfig.__getattr__, DictConfig.__getitem__, DictConfig.get

        def note(node, key):
            if not self.paused and isinstance(key, str):
                self.read.add(node._get_full_key(key))

        def getattr_(node, key):
            value = get_attr(node, key)
            note(node, key)
            return value

        def getitem_(node, key):
            value = get_item(node, key)
            note(node, key)
            return value

        def get_(node, key, default=None):
            note(node, key)
            return get(node, key, default)

        monkeypatch.setattr(DictConfig, "__getattr__", getattr_)
        monkeypatch.setattr(DictConfig, "__getitem__", getitem_)
        monkeypatch.setattr(DictConfig, "get", get_)
        for module in (driver, api, runs):  # runs.build_logger instantiates the logger group
            real = module.instantiate

            def instantiate(node, *args, _real=real, **kwargs):
                if not self.paused:
                    self.instantiated.add(node._get_full_key(None))
                return _real(node, *args, **kwargs)

            monkeypatch.setattr(module, "instantiate", instantiate)
        real_validate = driver.validate

        def validate(cfg):
            self.paused += 1
            try:
                return real_validate(cfg)
            finally:
                self.paused -= 1

        monkeypatch.setattr(driver, "validate", validate)

    def interpolated_by(self, group: str) -> set[str]:
        """The keys that any option of config group ``group`` interpolates (``${key}``)."""
        found = set()
        for path in (config_dir() / group).glob("*.yaml"):
            found |= set(re.findall(r"\$\{([A-Za-z_][\w.]*)\}", path.read_text()))
        return found

    def is_read(self, key: str) -> bool:
        return key in self.read or any(key.startswith(prefix + ".") for prefix in self.instantiated)


@pytest.mark.slow
def test_every_key_of_the_scene_schema_is_read_by_the_scene(tmp_path, monkeypatch):
    """The smoke matrix of an RGBA scene runs with a config that records what the scene code reads:
    every key of SCHEMA["scene"] is read (or handed to instantiate), so the schema holds no key that
    the scene would accept and ignore."""
    monkeypatch.setenv("LAMA_MODEL", "")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    photo, mask = photo_and_mask(tmp_path / "in")
    cfg = compose("scene", ["preset=smoke", f"target={photo}", f"mask={mask}", "clip.conv_loss_type=Cos", "levels=1",
                          "seeds=[0]"])
    assert set(SCHEMA["scene"]) >= {k for k in _leaves(cfg)}  # the composed config is inside the schema
    keys = ReadKeys(monkeypatch)
    summary = driver.run_scene(cfg, tmp_path / "run")
    assert summary["complete"]
    for group in {k.split(".", 1)[0] for k in keys.instantiated}:
        keys.read |= keys.interpolated_by(group)  # e.g. logger=wandb's group: ${experiment}
    assert {"logger", "trainer", "init", "augment", "renderer"} <= keys.instantiated
    # trainer.max_steps belongs to the shared trainer group; each stage passes its own step count and
    # the scene's rule refuses any other value than -1 (see test_scene_refuses_trainer_max_steps).
    unread = sorted(k for k in SCHEMA["scene"] if not keys.is_read(k) and k != "trainer.max_steps")
    assert unread == [], f"scene schema keys the scene never reads: {unread}"
    assert "clip.conv_loss_type" in keys.read


def _leaves(node, prefix=""):
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and len(child):
            yield from _leaves(child, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_scene_refuses_keys_it_does_not_use():
    """The sketch's loss weights, steps and eval_interval are not scene keys; trainer.max_steps only -1."""
    from clipasso_pl.errors import ClipassoError

    cfg = compose("scene", ["preset=smoke"])
    assert "conv_layer_weights" not in cfg.clip and "fc_weight" not in cfg.clip
    assert "steps" not in cfg and "eval_interval" not in cfg
    for override in ("+clip.fc_weight=0.5", "+steps=3"):
        with pytest.raises(ClipassoError, match="is not a key of clipasso-pl scene"):
            compose("scene", ["preset=smoke", override])
    with pytest.raises(ClipassoError, match="trainer.max_steps=5 is not used by clipasso-pl scene"):
        compose("scene", ["preset=smoke", "trainer.max_steps=5"])


def test_evaluate_composes_sketch_and_refuses_single_sketch_keys(tmp_path):
    """evaluate.yaml holds no copy of the sketch's settings: they come from sketch.yaml; the per-job keys
    (target, path_svg, resume) are refused rather than ignored."""
    from clipasso_pl.errors import ClipassoError

    # (test_evaluate_metrics checks that the composed values are the sketch's)
    text = (config_dir() / "evaluate.yaml").read_text()
    assert not re.search(r"^(steps|canvas|augment|max_nonfinite|lr):", text, re.M)
    with pytest.raises(ClipassoError, match="target=x.png is not used by clipasso-pl evaluate"):
        compose("evaluate", ["preset=smoke", "target=x.png"])


def test_augment_is_one_group_shared_by_sketch_and_scene():
    sketch_cfg, scene_cfg = compose("sketch"), compose("scene")
    assert sketch_cfg.augment == scene_cfg.augment
    for name in ("sketch.yaml", "scene.yaml", "evaluate.yaml"):
        assert "JointAugment" not in (config_dir() / name).read_text(), name
