"""CLIPascene end to end: the smoke matrix through the CLI, resuming, cell selection, bad input.

Tiny random-weight ViT (``tiny-vit``), CPU, no network. The 2 x 2 matrix is run once (CLI,
subprocess) and its files are checked by several tests; resuming it trains nothing.
"""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clipasso_pl.clip import ClipFeatures
from clipasso_pl.config import compose
from clipasso_pl.errors import ClipassoError
from clipasso_pl.scene.driver import run_scene
from clipasso_pl.scene.losses import SceneClipLoss
from clipasso_pl.scene.matrix import parse_cells
from clipasso_pl.scene.selection import SceneRecord, select_lowest
from cli_runs import cli

PARTS = ("background", "foreground")


def make_scene(path: Path, opaque: bool = False) -> Path:
    """A small non-square scene: sky, ground, a wire; the alpha channel marks a vase-like object."""
    w, h = 120, 90
    img = Image.new("RGBA", (w, h), (185, 205, 235, 255))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 60, w, h), fill=(80, 130, 60, 255))
    d.line((0, 20, w, 30), fill=(30, 30, 30, 255), width=2)
    obj = Image.new("L", (w, h), 0)
    o = ImageDraw.Draw(obj)
    o.ellipse((45, 30, 80, 80), fill=255)
    o.rectangle((57, 15, 68, 35), fill=255)
    img = Image.composite(Image.new("RGBA", (w, h), (160, 40, 40, 255)), img, obj)
    if not opaque:
        img.putalpha(obj)
    img.save(path)
    return path


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory) -> Path:
    return make_scene(tmp_path_factory.mktemp("scene") / "scene.png")


@pytest.fixture(scope="module")
def smoke_matrix(tmp_path_factory, scene_png):
    out = tmp_path_factory.mktemp("matrix") / "run"
    res = cli("scene", f"target={scene_png}", "preset=smoke", f"hydra.run.dir={out}",
              env={"TORCH_HOME": str(out.parent / "torch_home"), "LAMA_MODEL": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


# ----------------------------------------------------------------------------- units
def test_fidelity_best_step_is_the_lowest_eval_loss():
    recs = [SceneRecord(step, {"loss": torch.tensor(v)}, torch.zeros(2, 1, 4, 2), torch.ones(2, 1))
            for step, v in [(400, [1.0, 0.9]), (450, [0.8, 0.95]), (500, [0.85, 0.7])]]
    assert select_lowest(recs) == (1, 2)


def test_scene_clip_loss_weights_and_errors():
    feats = ClipFeatures("tiny-vit", None)
    names = feats.layer_names
    with pytest.raises(ClipassoError, match="transformer blocks"):
        SceneClipLoss(names, layer=11)
    with pytest.raises(ClipassoError, match="ViT"):
        SceneClipLoss(["stem", "layer1", "layer2", "layer3", "layer4"], layer=2)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        fa, fb = feats(a), feats(b)
    obj = SceneClipLoss(names, layer=1, anchor_layer=0, anchor_weight=0.5)
    t = obj(fa, fb, 2)
    l0 = (fa["block0"] - fb["block0"]).pow(2).flatten(1).mean(1)
    l1 = (fa["block1"] - fb["block1"]).pow(2).flatten(1).mean(1)
    assert set(t) == {"conv/block0", "conv/block1"}  # unweighted: the module weights them
    assert torch.allclose(t["conv/block0"], l0, rtol=1e-5) and torch.allclose(t["conv/block1"], l1, rtol=1e-5)
    assert obj.coefficients == {"conv/block1": 1.0, "conv/block0": 0.5}
    assert obj.balanced and not SceneClipLoss(names, layer=0, anchor_layer=0).balanced
    background = SceneClipLoss(names, layer=1)
    assert background.coefficients == {"conv/block1": 1.0}
    assert torch.allclose(background(fa, fb, 2)["conv/block1"], l1, rtol=1e-5)


def test_parse_cells():
    assert parse_cells(None, [2, 8, 11], 8) == {2: 7, 8: 7, 11: 7}
    assert parse_cells("layer8", [2, 8, 11], 8) == {8: 7}
    assert parse_cells(["layer11/level2", "layer2/level0", "layer2/level3"], [2, 8, 11], 8) == {2: 3, 11: 2}
    for bad, what in [("layer5", "not in layers"), ("layer2/level8", "levels run"), ("row2", "not a cell name")]:
        with pytest.raises(ClipassoError, match=what):
            parse_cells(bad, [2, 8, 11], 8)


# ------------------------------------------------------------------------ end to end
def test_smoke_matrix_writes_every_file(smoke_matrix):
    out, res = smoke_matrix
    assert "scene matrix:" in res.stdout
    for name in ["matrix.png", "summary.json", "config.yaml", "scene.json", "inputs/input.png", "inputs/mask.png",
                 "inputs/background.png", "inputs/foreground.png"]:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["cells_total"] == 4 and len(summary["cells"]) == 4
    assert summary["clip_model"] == "tiny-vit" and summary["layers"] == [0, 1] and summary["levels"] == 2
    for cell in summary["cells"]:
        folder = out / cell["files"]
        assert folder == out / f"layer{cell['layer']}" / f"level{cell['level']}"
        for part in (*PARTS, "combined"):
            for ext in ("svg", "png"):
                assert (folder / f"{part}.{ext}").is_file(), f"{folder}/{part}.{ext}"
            root = ET.parse(folder / f"{part}.svg").getroot()
            paths = [el for el in root.iter() if el.tag.endswith("path")]
            assert len(paths) == cell["strokes_kept"][part], (folder, part)
        assert Image.open(folder / "combined.png").size == (256, 256)  # combined_size of the smoke preset
        assert set(cell) >= {"layer", "level", "ratio", "strokes_kept", "loss"}
        for part in PARTS:
            assert cell["ratio"][part] > 0 and cell["loss"][part] > 0
    for layer in (0, 1):
        for part in PARTS:
            assert (out / f"layer{layer}" / "fidelity" / f"{part}.svg").is_file()


def test_levels_follow_the_official_objective(smoke_matrix):
    out, _ = smoke_matrix
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inpainting"] == "opencv-telea"  # no LaMa weights on disk in the test environment
    fidelity = {row["layer"]: row["strokes_kept"] for row in summary["fidelity"]}
    for layer in (0, 1):
        cells = sorted((c for c in summary["cells"] if c["layer"] == layer), key=lambda c: c["level"])
        for part in PARTS:
            assert fidelity[layer][part] == 16
            # Not nested (official): a level keeps any subset; counts only bound by the stroke budget.
            assert all(0 <= c["strokes_kept"][part] <= 16 for c in cells)
            # r_1 = 1 / (the row's unweighted CLIP sum: block l, + block 0 (the anchor) for objects).
            done = json.loads((out / f"layer{layer}" / "fidelity" / part / "done.json").read_text())
            blocks = {f"conv/block{layer}"} | ({"conv/block0"} if part == "foreground" else set())
            assert set(k for k in done["terms"] if k.startswith("conv/")) == blocks
            r1 = 1.0 / sum(done["terms"][k] for k in blocks)
            assert cells[0]["ratio"][part] == pytest.approx(r1, rel=1e-6)
        ratios = [c["ratio"]["background"] for c in cells]
        assert ratios[1] < ratios[0]
        level = json.loads((out / f"layer{layer}" / "level1" / "foreground" / "done.json").read_text())
        # Simplicity terms: gradnorm weights of the three terms sum to 1; the written strokes are
        # those whose sampled keep-probability exceeds 0.7.
        weights = [v for k, v in level["terms"].items() if k.startswith("weight/")]
        assert len(weights) == (3 if layer != 0 else 2)  # block 0 is also the smoke preset's anchor
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)
        assert level["strokes_kept"] == level["terms"]["kept"]


def test_optimiser_state_carries_over_between_levels(smoke_matrix):
    out, _ = smoke_matrix
    # Smoke: 2 steps per level, evaluated at step 1; the chosen state is the one after its update.
    # Level 0 starts fresh Adam states (2 updates), level 1 continues them (4).
    for part in PARTS:
        steps = []
        for level in (0, 1):
            state = torch.load(out / "layer1" / f"level{level}" / part / "state.pt", weights_only=True)
            counters = {float(s["step"]) for s in state["optimizer"]}
            assert len(counters) == 1, counters
            steps.append(counters.pop())
        assert steps == [2.0, 4.0], (part, steps)


def test_matrix_picture_is_a_labelled_grid(smoke_matrix):
    out, _ = smoke_matrix
    img = Image.open(out / "matrix.png").convert("L")
    # Two rows and two columns of 128 px tiles plus labels and captions.
    assert img.width > 2 * 128 and img.height > 2 * 128
    assert (torch.tensor(list(img.getdata())) < 128).float().mean() > 0.002  # strokes and text drawn


def test_resume_skips_finished_cells_and_refuses_other_settings(smoke_matrix, scene_png):
    out, _ = smoke_matrix
    before = json.loads((out / "summary.json").read_text())
    cfg = compose("scene", ["preset=smoke", f"target={scene_png}", f"matrix_dir={out}", "logger=none"])
    summary = run_scene(cfg, out / "ignored")
    assert summary["this_run"]["stages"] == []  # nothing trained again
    assert [c["strokes_kept"] for c in summary["cells"]] == [c["strokes_kept"] for c in before["cells"]]
    other = compose("scene", ["preset=smoke", f"target={scene_png}", f"matrix_dir={out}", "strokes=8"])
    with pytest.raises(ClipassoError, match="other settings"):
        run_scene(other, out / "ignored")


@pytest.mark.slow
def test_no_mask_is_a_one_line_error(tmp_path):
    opaque = make_scene(tmp_path / "opaque.png", opaque=True)
    cfg = compose("scene", ["preset=smoke", f"target={opaque}", "mask_model=null"])
    with pytest.raises(ClipassoError) as e:
        run_scene(cfg, tmp_path / "run")
    assert "\n" not in str(e.value) and "mask=" in str(e.value)
    res = cli("scene", f"target={opaque}", "preset=smoke", "mask_model=null", f"hydra.run.dir={tmp_path / 'cli'}",
              timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no alpha channel" in lines[0], res.stderr


def test_default_config_resolves_and_reproduces_the_paper():
    from omegaconf import OmegaConf

    cfg = compose("scene")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves (no sketch-only keys)
    assert cfg.clip.model == "ViT-B-32-quickgelu" and cfg.strokes == 64 and list(cfg.layers) == [2, 8, 11]
    assert (cfg.fidelity.background_steps, cfg.fidelity.foreground_steps, cfg.fidelity.foreground_steps_deep) == (1501, 600, 1000)
    assert (cfg.simplicity.steps, cfg.simplicity.temperature, cfg.levels, cfg.lr, cfg.width_lr) == (401, 0.2, 8, 1e-4, 5e-5)
    assert (cfg.simplicity.eval_start, cfg.simplicity.eval_interval, cfg.simplicity.keep_threshold) == (100, 100, 0.7)
    assert not cfg.simplicity.nested and cfg.gradnorm and cfg.resize_obj and cfg.square == "official"
    assert (cfg.inpaint_method, cfg.combined_size, cfg.combined_width_scale) == ("auto", 448, 1.8)
    assert (cfg.fidelity.eval_start, cfg.fidelity.eval_interval, list(cfg.seeds)) == (400, 50, [0, 1000])
    smoke = compose("scene", ["preset=smoke"])
    assert smoke.clip.model == "tiny-vit" and smoke.clip.pretrained is None and smoke.init.model == "tiny-vit"


def _fit(module, steps):
    import pytorch_lightning as pl

    from clipasso_pl.training.steps import step_loader

    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, train_dataloaders=step_loader(steps))
    return trainer


def _tiny_module(feats, **kwargs):
    from clipasso_pl.clip import JointAugment
    from clipasso_pl.render import TorchRenderer
    from clipasso_pl.scene.module import SceneSketchModule

    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 64, 64, generator=g)
    initial = 8 + 48 * torch.rand(2, 6, 4, 2, generator=g)
    loss = SceneClipLoss(feats.layer_names, layer=1, anchor_layer=0, anchor_weight=0.5)
    return SceneSketchModule(target, feats, loss, JointAugment(num_augs=1, size=64), TorchRenderer(), initial,
                             seeds=[0, 1000], hidden=32, **kwargs), initial


def test_module_trains_the_mlps_with_gradnorm_weights_each_step():
    from clipasso_pl.scene.losses import gradnorm_weights

    feats = ClipFeatures("tiny-vit", None)
    module, initial = _tiny_module(feats, simplify=True, ratio=1.0, eval_start=1, eval_interval=1)
    trainable = {n.split(".")[0] for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"locations", "widths"}
    # Points are the location MLP's output: 0.5 (x + 0.1 MLP(x) + 1) W, near the initialisation.
    assert module.points.shape == (2, 6, 4, 2) and (module.points - initial).abs().max() < 0.05 * 64 * 3
    optimizer = module.configure_optimizers()
    assert [grp["lr"] for grp in optimizer.param_groups] == [1e-4, 5e-5]  # location, width (official)
    _fit(module, 3)
    # Every step re-measures the weights per seed on the width MLP; eval reuses the last ones.
    assert set(module.weights) == {"conv/block1", "conv/block0", "sparsity"}
    total = sum(module.weights.values())
    assert total.shape == (2,) and torch.allclose(total, torch.ones(2), atol=1e-6)
    assert not torch.allclose(module.weights["sparsity"][0], module.weights["sparsity"][1])
    assert [r.step for r in module.records] == [1, 2]
    last = module.records[-1]
    assert torch.allclose(last.terms["weight/sparsity"], module.weights["sparsity"].cpu())
    # The record holds the step's *sampled* keep-probabilities; kept = those above 0.7.
    assert torch.equal(last.terms["kept"], (last.keep > 0.7).sum(-1).float())
    noiseless = module.keep(noise=False).detach().cpu()
    assert not torch.allclose(last.keep, noiseless, atol=1e-3)
    # A direct recomputation of the weights agrees with the formula's implementation.
    points, keep = module.current_points(), module.keep(noise=True)
    sf = feats(module.render(points, keep))
    with torch.no_grad():
        tf = {k: v.expand(2, *v.shape[1:]) for k, v in feats(module.target).items()}
    raw = module.raw_terms(sf, tf, points, keep)
    w = gradnorm_weights(raw, [module.seed_parameters(i, "width") for i in range(2)])
    assert all(float(v.min()) > 0 for v in w.values())


def test_keep_rule_threshold_and_reappearing_strokes():
    feats = ClipFeatures("tiny-vit", None)
    module, _ = _tiny_module(feats, simplify=True)
    keep = torch.tensor([0.69, 0.70, 0.71, 0.95, 0.2, 1.0])
    assert module.keep_vector(keep).tolist() == [False, False, True, True, False, True]
    # Not nested (the default): a stroke dropped by the previous level is free to come back.
    assert bool(module.keep_mask.all())
    nested, _ = _tiny_module(feats, simplify=True, keep_mask=torch.tensor([1, 0, 1, 1, 1, 1]))
    assert float(nested.keep(noise=True).detach()[:, 1].abs().max()) == 0.0
    assert nested.keep_vector(torch.ones(6)).tolist() == [True, False, True, True, True, True]


def test_object_fidelity_weights_its_two_blocks_by_gradnorm_per_seed():
    feats = ClipFeatures("tiny-vit", None)
    module, _ = _tiny_module(feats, eval_start=0, eval_interval=1)
    _fit(module, 2)
    assert set(module.weights) == {"conv/block1", "conv/block0"}
    assert torch.allclose(sum(module.weights.values()), torch.ones(2), atol=1e-6)
    rec = module.records[-1]
    expected = 1.0 * rec.terms["weight/conv/block1"] * rec.terms["conv/block1"] + \
        0.5 * rec.terms["weight/conv/block0"] * rec.terms["conv/block0"]
    assert torch.allclose(rec.terms["loss"], expected, rtol=1e-5)
    assert torch.allclose(rec.terms["clip"], rec.terms["conv/block1"] + rec.terms["conv/block0"], rtol=1e-6)
    off, _ = _tiny_module(feats, gradnorm=False, eval_start=0, eval_interval=1)
    _fit(off, 1)
    r = off.records[-1]
    assert torch.allclose(r.terms["loss"], r.terms["conv/block1"] + 0.5 * r.terms["conv/block0"], rtol=1e-6)


@pytest.mark.slow
def test_adam_step_counter_keeps_growing_when_a_level_loads_the_previous_state():
    feats = ClipFeatures("tiny-vit", None)
    first, initial = _tiny_module(feats, simplify=True, eval_start=2, eval_interval=1)
    _fit(first, 3)
    seed, record, states = first.best()
    assert {float(s["step"]) for s in states["optimizer"]} == {3.0}  # saved after the step-2 update
    second, _ = _tiny_module(feats, simplify=True, eval_start=1, eval_interval=1, location_states=states["location"],
                             width_states=states["width"], optimizer_state=states["optimizer"])
    trainer = _fit(second, 2)
    adam = trainer.optimizers[0]
    assert {float(adam.state[p]["step"]) for p in second.parameters() if p.requires_grad} == {5.0}


def test_composite_erases_background_inside_the_object_and_scales_widths(tmp_path, scene_png):
    from clipasso_pl.scene.driver import SceneRunner
    from clipasso_pl.scene.store import Stage
    from clipasso_pl.scene.inputs import prepare_inputs

    cfg = compose("scene", ["preset=smoke", f"target={scene_png}"])
    inputs = prepare_inputs(scene_png, ["background", "foreground"], max_size=128)
    runner = SceneRunner(cfg, tmp_path, inputs, "fp")
    # One horizontal background stroke through the object (mask rows ~ 50..110 of 128 px).
    y = 85.0
    line = torch.tensor([[[4.0, y], [40.0, y], [88.0, y], [124.0, y]]])
    back = Stage(tmp_path, {}, line, torch.tensor([1.5]), torch.tensor([True]))
    fore = Stage(tmp_path, {}, line, torch.tensor([1.5]), torch.tensor([False]))  # no object stroke kept
    count = runner.combine({"background": back, "foreground": fore}, tmp_path / "cell")
    assert count == 1
    img = torch.from_numpy(np.array(Image.open(tmp_path / "cell" / "combined.png").convert("L")))
    row = img[int(2 * y)].float() / 255  # combined_size 256 = 2 x canvas
    mask = inputs.mask[int(y) * inputs.side // 128]
    cols = torch.arange(256) * inputs.side // 256
    inside = mask[cols]
    assert float(row[inside].min()) == 1.0  # erased inside the object
    assert float(row[~inside][10:].min()) < 0.2  # drawn outside it
    svg = ET.parse(tmp_path / "cell" / "combined.svg").getroot()
    widths = [float(el.get("stroke-width")) for el in svg.iter() if el.tag.endswith("path")]
    assert widths == [pytest.approx(2 * 1.5 * 1.8)]  # SVG stroke-width = 2 x half-width, x 1.8


def test_matrix_title_wraps_inside_the_picture():
    from clipasso_pl.pictures import font, wrap_text
    from clipasso_pl.scene.matrix import matrix_picture

    title = "a_rather_long_scene_file_name.png: rows = fidelity (ViT block), columns = simplicity"
    pic = matrix_picture({}, ["layer 0"], ["level 0", "level 1"], {}, tile=128, title=title)
    fs = max(11, 128 // 14)
    lines = wrap_text(title, font(fs), pic.width - 12)
    assert len(lines) > 1 and " ".join(lines) == title
    draw = ImageDraw.Draw(pic)
    assert all(draw.textlength(line, font=font(fs)) <= pic.width - 12 for line in lines)
    # No ink in the last 3 px columns: nothing runs off the right edge.
    grey = np.asarray(pic.convert("L"))
    assert grey[:, -3:].min() == 255
