"""CLIPascene end to end: the smoke matrix through the CLI, resuming, cell selection, bad input.

Tiny random-weight ViT (``tiny-vit``), CPU, no network. The 2 x 2 matrix is run once (CLI,
subprocess) and its files are checked by several tests; resuming it trains nothing.
"""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from clipasso_pl.clip import ClipFeatures
from clipasso_pl.config import compose
from clipasso_pl.errors import ClipassoError
from clipasso_pl.scene.driver import run_scene
from clipasso_pl.scene.losses import SceneClipLoss
from clipasso_pl.scene.matrix import parse_cells
from clipasso_pl.scene.module import SceneRecord, select_lowest, select_zscore

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
PARTS = ("background", "foreground")


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "clipasso_pl.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


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
    res = cli("scene", f"target={scene_png}", "preset=smoke", f"hydra.run.dir={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


# ----------------------------------------------------------------------------- units
def record(step, clip, ratio):
    return SceneRecord(step, {"clip": torch.tensor(clip), "ratio": torch.tensor(ratio),
                              "loss": torch.tensor(clip) + torch.tensor(ratio)},
                       torch.zeros(len(clip), 1, 4, 2), torch.ones(len(clip), 1))


def test_best_step_by_summed_z_scores():
    # The ratio term is 1000x smaller than the CLIP term: summing raw losses would ignore it,
    # z-scores weigh both. Step 20 of seed 1 is best on ratio and second-best on clip.
    recs = [record(10, [1.00, 1.02], [0.0009, 0.0005]),
            record(20, [1.01, 1.00], [0.0008, 0.0001]),
            record(30, [0.99, 1.03], [0.0010, 0.0009])]
    assert select_zscore(recs) == (1, 1)
    assert select_lowest(recs, "loss") == (0, 2)


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
    t = obj(fa, fb, 2, balance=3.0)
    l0 = (fa["block0"] - fb["block0"]).pow(2).flatten(1).mean(1)
    l1 = (fa["block1"] - fb["block1"]).pow(2).flatten(1).mean(1)
    assert torch.allclose(t["clip"], 0.5 * l0 + 3.0 * l1, rtol=1e-5)
    assert obj.balanced and not SceneClipLoss(names, layer=0, anchor_layer=0).balanced
    background = SceneClipLoss(names, layer=1)
    assert torch.allclose(background(fa, fb, 2)["clip"], l1, rtol=1e-5)


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


def test_stroke_counts_do_not_grow_along_simplicity(smoke_matrix):
    out, _ = smoke_matrix
    summary = json.loads((out / "summary.json").read_text())
    fidelity = {row["layer"]: row["strokes_kept"] for row in summary["fidelity"]}
    for layer in (0, 1):
        cells = sorted((c for c in summary["cells"] if c["layer"] == layer), key=lambda c: c["level"])
        for part in PARTS:
            counts = [fidelity[layer][part]] + [c["strokes_kept"][part] for c in cells]
            assert counts[0] == 16 and all(b <= a for a, b in zip(counts, counts[1:])), (layer, part, counts)
        ratios = [c["ratio"]["background"] for c in cells]
        assert ratios[1] < ratios[0]


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
    assert (cfg.simplicity.steps, cfg.simplicity.temperature, cfg.levels, cfg.lr) == (401, 0.2, 8, 1e-4)
    assert (cfg.fidelity.eval_start, cfg.fidelity.eval_interval, list(cfg.seeds)) == (400, 50, [0, 1000])
    smoke = compose("scene", ["preset=smoke"])
    assert smoke.clip.model == "tiny-vit" and smoke.clip.pretrained is None and smoke.init.model == "tiny-vit"


def test_module_trains_only_the_mlps_and_balances_the_object_terms():
    from clipasso_pl.clip import JointAugment
    from clipasso_pl.render import TorchRenderer
    from clipasso_pl.scene.losses import grad_norm
    from clipasso_pl.scene.module import SceneSketchModule

    feats = ClipFeatures("tiny-vit", None)
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 64, 64, generator=g)
    initial = 8 + 48 * torch.rand(2, 6, 4, 2, generator=g)
    loss = SceneClipLoss(feats.layer_names, layer=1, anchor_layer=0, anchor_weight=0.5)
    module = SceneSketchModule(target, feats, loss, JointAugment(num_augs=1, size=64), TorchRenderer(), initial,
                               seeds=[0, 1000], hidden=32, simplify=True, ratio=1.0)
    trainable = {n.split(".")[0] for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"locations", "widths"}
    # Points are the location MLP's output: x + 0.1 * delta, in pixels, near the initialisation.
    assert module.points.shape == (2, 6, 4, 2) and (module.points - initial).abs().max() < 0.1 * 64 * 2
    keep = module.keep(noise=True)
    assert keep.shape == (2, 6) and bool(((keep >= 0) & (keep <= 1)).all())
    sketch = module.render(module.current_points(), keep)
    sf = feats(sketch)
    with torch.no_grad():
        tf = feats(module.target)
    module._measure_balance(sf, tf)
    b = float(module.balance)
    params = [p for p in module.parameters() if p.requires_grad]
    raw = loss(sf, tf, 2, 1.0)
    anchor = grad_norm(raw["conv/block0"].sum(), params)
    layer = grad_norm((b * raw["conv/block1"]).sum(), params)
    assert b > 0 and float(layer) == pytest.approx(float(anchor), rel=1e-4)
