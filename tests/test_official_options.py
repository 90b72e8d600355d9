"""Options from the official CLIPasso code: early stopping, lr_scheduler, conv_loss_type,
augmentations, text guidance, the object mask, preset=official and the progress animation."""

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipasso_pl.api import build_module, run_sketch
from clipasso_pl.callbacks.stopping import EvalEarlyStopping
from clipasso_pl.config import compose
from clipasso_pl.errors import ClipassoError
from clipasso_pl.images import resolve_target
from clipasso_pl.losses import ClipassoLoss
from clipasso_pl.schedules import official_lr
from clipasso_pl.sketch_target import load_sketch_target, load_target
from cli_runs import cli

TARGET = "skimage:coffee"


def smoke(**values):
    base = dict(target=TARGET, steps=10, eval_interval=5, save_interval=0, checkpoint_interval=0, logger="none",
                seeds=[0])
    base.update(values)
    return compose("sketch", ["preset=smoke"], **base)


def metrics(run_dir):
    """logs/metrics.csv of a run as {column: [(step, value), ...]}."""
    files = sorted(run_dir.glob("logs/**/metrics.csv"))
    assert files, f"no metrics.csv under {run_dir}"
    out: dict[str, list] = {}
    for path in files:
        for row in csv.DictReader(path.open()):
            for k, v in row.items():
                if v not in ("", None) and k != "step":
                    out.setdefault(k, []).append((int(row["step"]), float(v)))
    return out


# ---------------------------------------------------------------- early stopping

def official_stop(losses, min_delta=1e-5):
    """The official training loop's stopping decision over a sequence of eval losses:
    the index of the eval at which it breaks, or None (written from its rules)."""
    best, terminate = 100.0, False
    for i, loss in enumerate(losses):
        delta = loss - best
        if abs(delta) > min_delta and delta < 0:
            best, terminate = loss, False
        if abs(delta) <= min_delta:
            if terminate:
                return i
            terminate = True
    return None


def callback_stop(seqs):
    """EvalEarlyStopping over sequences [S][E]: per seed, the eval index at which it stops (or None)."""
    cb = EvalEarlyStopping(min_delta=1e-5, patience=2)
    stops = [None] * len(seqs)
    for i in range(len(seqs[0])):
        stopped = cb.update(torch.tensor([s[i] for s in seqs], dtype=torch.float64))
        for k, flag in enumerate(stopped.tolist()):
            if flag and stops[k] is None:
                stops[k] = i
    return stops


def test_early_stopping_scripted_sequence_stops_where_the_official_loop_does():
    # 0: first best; 1: new best; 2: calm (1st); 3: a rise (no reset); 4: new best (reset);
    # 5: calm (1st); 6: a rise; 7: calm again (2nd, not consecutive) -> stop at eval 7.
    seq = [1.0, 0.5, 0.500005, 0.6, 0.499, 0.499001, 0.51, 0.498995, 0.1]
    assert official_stop(seq) == 7
    assert callback_stop([seq]) == [7]
    # the old rule (two consecutive changes <= 1e-5 from the previous eval) would run on past eval 7
    assert callback_stop([[1.0, 1.0, 1.0]]) == [2]  # best at 0, calm at 1 and 2
    # a rise never counts as calm, and a slow but steady improvement > 1e-5 never stops
    assert callback_stop([[1.0 - 2e-5 * i for i in range(50)]]) == [None]


def test_early_stopping_matches_the_official_loop_on_random_sequences():
    gen = np.random.default_rng(0)
    seqs = []
    for _ in range(200):
        steps = gen.choice([-3e-5, -1e-5, -5e-6, 0.0, 5e-6, 1e-5, 2e-5, 1e-3], size=30)
        seqs.append(list(0.8 + np.cumsum(steps)))
    assert callback_stop(seqs) == [official_stop(s) for s in seqs]
    assert 50 < sum(official_stop(s) is not None for s in seqs) < 200  # both outcomes are exercised


@pytest.mark.slow
def test_early_stopping_ends_a_real_run_at_the_second_calm_eval(tmp_path):
    # Loss weights ~0 (lr must stay > 0): the eval loss moves by far less than 1e-5 -> best at step 0, calm at 5,
    # stop after step 10's update.
    cfg = smoke(steps=40, seeds=[0, 1000], **{"clip.conv_layer_weights": [0, 0, 0, 0, 0], "clip.fc_weight": 1e-9})
    result = run_sketch(cfg, tmp_path)
    assert result.summary["steps_run"] == 11


# ---------------------------------------------------------------- lr_scheduler

def test_official_lr_formula():
    assert official_lr(0, 1.0, 100) == 1.0
    assert official_lr(50, 1.0, 100) == pytest.approx(0.5, abs=1e-12)
    assert official_lr(100, 1.0, 100) == pytest.approx(0.0, abs=1e-12)
    # warm-up: linear from 0.1 to cosine(10) over 10 steps, then the cosine from step 10
    cos10 = 0.2 + 0.8 * (math.cos(0.0) + 1) / 2  # = 1.0 at the end of the warm-up
    assert official_lr(5, 1.0, 110, lr_end=0.2, lr_warmup_steps=10, lr_warmup_start=0.1) == pytest.approx(
        0.1 + 5 * (cos10 - 0.1) / 10)
    assert official_lr(60, 1.0, 110, lr_end=0.2, lr_warmup_steps=10, lr_warmup_start=0.1) == pytest.approx(
        0.2 + 0.8 * (math.cos(math.pi * 50 / 100) + 1) / 2)


@pytest.mark.slow
def test_lr_scheduler_decays_the_points_lr_in_a_run(tmp_path):
    run_sketch(smoke(lr_scheduler=True, lr=0.5, logger="csv", eval_interval=0), tmp_path / "on")
    logged = dict(metrics(tmp_path / "on")["train/lr"])
    assert sorted(logged) == list(range(10))
    for step, lr in logged.items():
        assert lr == pytest.approx(0.5 * (math.cos(math.pi * step / 10) + 1) / 2, rel=1e-6), step
    run_sketch(smoke(logger="csv", eval_interval=0), tmp_path / "off")
    assert {v for _, v in metrics(tmp_path / "off")["train/lr"]} == {1.0}


@pytest.mark.slow
def test_lr_scheduler_runs_over_every_stage(tmp_path):
    """num_stages=3 x steps=3: one half-cosine over the 9 steps of the run (not one per stage, not over 3)."""
    run_sketch(smoke(lr_scheduler=True, lr=0.5, logger="csv", eval_interval=0, steps=3, num_stages=3, strokes=4,
                     canvas=96), tmp_path)
    logged = dict(metrics(tmp_path)["train/lr"])
    assert sorted(logged) == list(range(9))
    for step, lr in logged.items():
        assert lr == pytest.approx(0.5 * (math.cos(math.pi * step / 9) + 1) / 2, rel=1e-6), step


# ---------------------------------------------------------------- conv_loss_type

def two_seed_feats(model):
    torch.manual_seed(0)
    sketch = model(torch.rand(6, 3, 224, 224))  # 2 seeds x 3 views
    target = model(torch.rand(2, 3, 224, 224))  # one target row per seed
    return sketch, target


@pytest.mark.parametrize("kind", ["L1", "Cos"])
@pytest.mark.parametrize("tower", ["rn", "vit"])
def test_conv_loss_types_equal_direct_recomputation(kind, tower, request):
    model = request.getfixturevalue(tower)
    names = model.layer_names
    weights = [0.0] * len(names)
    weights[0], weights[1] = 1.0, 0.5
    sketch, target = two_seed_feats(model)
    terms = ClipassoLoss(weights, 0.1, layer_names=names, conv_loss_type=kind)(sketch, target, 2)
    for layer in names[:2]:
        for seed in range(2):
            values = []
            for view in range(3):
                x, y = sketch[layer][seed * 3 + view], target[layer][seed]
                if kind == "L1":
                    values.append(torch.abs(x - y).mean())
                else:  # the official cos_layers: 1 - cos along dim 1 of the [1, ...] batch, then the mean
                    values.append((1 - torch.cosine_similarity(x[None], y[None], dim=1)).mean())
            assert terms[f"conv/{layer}"][seed] == pytest.approx(float(torch.stack(values).mean()), rel=1e-5)
    l2 = ClipassoLoss(weights, 0.1, layer_names=names)(sketch, target, 2)
    assert not torch.allclose(terms["loss"], l2["loss"])


def test_conv_loss_type_reaches_the_loss_and_is_checked():
    from clipasso_pl.api import build_clip

    _, loss = build_clip(compose("sketch", ["preset=smoke", "clip.conv_loss_type=Cos"]).clip)
    assert loss.conv_loss_type == "Cos"
    with pytest.raises(ClipassoError, match="conv_loss_type"):
        ClipassoLoss(conv_loss_type="L3")


def test_augmentations_none_gives_plain_copies():
    from clipasso_pl.clip import JointAugment

    sketch, target = torch.rand(2, 3, 32, 32), torch.rand(1, 3, 32, 32)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    views, tviews = JointAugment(3, size=32, augmentations="none")(sketch, target, gens)
    assert views.shape == (8, 3, 32, 32)
    assert torch.equal(views[4:8], sketch[1:2].expand(4, -1, -1, -1)) and torch.equal(tviews[0:4], target.expand(4, -1, -1, -1))
    with pytest.raises(ClipassoError, match="augmentations"):
        JointAugment(augmentations="press")


# ---------------------------------------------------------------- text guidance

def test_text_term_is_in_the_loss_and_its_gradient_reaches_the_points():
    cfg = smoke(text_target="a cat", clip_text_guide=2.0, seeds=[0, 1000])
    module = build_module(cfg, load_target(resolve_target(TARGET)))
    module.initialize()
    terms = module.compute_loss(module.render())
    assert terms["text"].shape == (2,)
    # the total is the CLIPasso loss plus clip_text_guide x text
    without = {k: v for k, v in terms.items() if k not in ("text", "loss")}
    base = sum(module.loss_fn.active[k.split("/")[1]] * v for k, v in without.items() if k.startswith("conv/"))
    base = base + module.loss_fn.fc_weight * terms["fc"]
    assert torch.allclose(terms["loss"], base + 2.0 * terms["text"], atol=1e-6)
    module.points.grad = None
    terms["text"].sum().backward()
    grad = module.points.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # eval: 1 - cos of the plain sketch's embedding and the prompt's
    record = module.evaluate()
    guide = module.text_guide
    direct = 1 - F.cosine_similarity(guide.model.encode_image(
        __import__("clipasso_pl.clip.features", fromlist=["prepare"]).prepare(guide.model, module.render().detach())),
        guide.text_embedding, dim=1)
    assert torch.allclose(record.terms["text"], direct, atol=1e-6)


@pytest.mark.slow
def test_text_term_is_logged_as_its_own_term(tmp_path):
    run_sketch(smoke(text_target="a cat", clip_text_guide=1.0, logger="csv", steps=4, eval_interval=2), tmp_path)
    logged = metrics(tmp_path)
    assert [s for s, _ in logged["train/text"]] == [0, 1, 2, 3] and {0, 2} <= {s for s, _ in logged["eval/text"]}
    assert all(0 < v < 2 * 2 for _, v in logged["train/text"])  # a sum over 2 views of 1 - cos


def test_text_guide_without_a_prompt_is_refused():
    with pytest.raises(ClipassoError, match="text_target"):
        run_sketch(smoke(clip_text_guide=1.0), "/nonexistent/never-made")


# ---------------------------------------------------------------- object mask

@pytest.fixture()
def photo_and_mask(tmp_path):
    """A 60x40 photo: red background, blue object in the middle; and its mask (white = object)."""
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:] = (200, 30, 30)
    arr[10:30, 20:45] = (20, 40, 220)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:45] = 255
    Image.fromarray(arr).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path / "photo.png", tmp_path / "mask.png"


def test_without_options_the_target_is_loaded_as_before(photo_and_mask):
    photo, _ = photo_and_mask
    for fix_scale in (True, False):
        assert torch.equal(load_sketch_target(photo, 64, fix_scale).image, load_target(photo, 64, fix_scale))


@pytest.mark.parametrize("fix_scale", [True, False])
def test_mask_makes_the_background_white(photo_and_mask, fix_scale):
    photo, mask = photo_and_mask
    loaded = load_sketch_target(photo, 224, fix_scale, mask=mask)
    outside, inside = ~loaded.mask, loaded.mask
    assert loaded.mask.shape == (224, 224) and inside.any() and outside.any()
    # masked-out pixels white, well inside the object blue (away from the resampled border)
    eroded = -F.max_pool2d(-inside[None, None].float(), 9, stride=1, padding=4)[0, 0] > 0.5
    grown = F.max_pool2d(inside[None, None].float(), 9, stride=1, padding=4)[0, 0] > 0.5
    assert torch.all(loaded.image[:, outside] == 1.0)
    blue = loaded.image[:, eroded]
    assert blue[2].min() > 0.8 and blue[0].max() < 0.2
    # without the mask the red background is there
    plain = load_sketch_target(photo, 224, fix_scale).image
    assert plain[0, ~grown].mean() < 0.9 or plain[1, ~grown].mean() < 0.5


@pytest.mark.slow
def test_mask_in_a_run_saves_mask_png_and_restricts_the_start_points(photo_and_mask, tmp_path):
    photo, mask = photo_and_mask
    cfg = smoke(target=str(photo), mask=str(mask), mask_object_attention=True, strokes=12, steps=2, seeds=[0, 5])
    result = run_sketch(cfg, tmp_path / "run")
    saved = np.asarray(Image.open(result.run_dir / "mask.png"))
    loaded = load_sketch_target(photo, 224, True, mask=mask)
    assert np.array_equal(saved > 127, loaded.mask.numpy())
    inp = np.asarray(Image.open(result.run_dir / "input.png"))
    assert (inp[~loaded.mask.numpy()] == 255).all()  # masked-out pixels of the input picture are white
    module = build_module(cfg, loaded.image, loaded.mask)
    for res in module.initialize():
        cols, rows = res.starts[:, 0].long(), res.starts[:, 1].long()
        assert loaded.mask[rows, cols].all()


def test_mask_object_uses_alpha_else_asks_for_rembg(photo_and_mask, tmp_path):
    photo, mask = photo_and_mask
    if __import__("importlib").util.find_spec("rembg") is None:
        with pytest.raises(ClipassoError, match="rembg") as info:
            load_sketch_target(photo, 64, True, mask_object=True)
        assert "mask=" in str(info.value) and "\n" not in str(info.value)
    rgba = np.dstack([np.asarray(Image.open(photo)), np.asarray(Image.open(mask))])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "object.png")
    by_alpha = load_sketch_target(tmp_path / "object.png", 64, True, mask_object=True)
    by_file = load_sketch_target(photo, 64, True, mask=mask)
    assert torch.equal(by_alpha.mask, by_file.mask) and torch.equal(by_alpha.image, by_file.image)


def test_mask_options_are_checked(photo_and_mask, tmp_path):
    photo, _ = photo_and_mask
    with pytest.raises(ClipassoError, match="mask_object_attention"):
        run_sketch(smoke(target=str(photo), mask_object_attention=True), tmp_path / "a")
    with pytest.raises(ClipassoError, match="does not exist"):
        run_sketch(smoke(target=str(photo), mask=str(tmp_path / "nope.png")), tmp_path / "b")


# ---------------------------------------------------------------- preset=official

def test_preset_official_squashes_a_non_square_photo(photo_and_mask, tmp_path):
    photo, _ = photo_and_mask
    cfg = compose("sketch", ["preset=official"], target=str(photo))
    assert cfg.fix_scale is False and cfg.official_padding is True
    loaded = load_sketch_target(photo, int(cfg.canvas), bool(cfg.fix_scale), official_padding=bool(cfg.official_padding))
    squashed = Image.open(photo).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    assert loaded.image.shape == (3, 224, 224)
    assert np.array_equal((loaded.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), np.asarray(squashed))


def test_official_padding_adds_the_official_margin(photo_and_mask):
    photo, _ = photo_and_mask
    img = load_sketch_target(photo, 80, True, official_padding=True).image  # 60x40 -> 80x80 canvas, no resize
    # the photo sits at (80 // 2 - 60 // 2, 80 // 2 - 40 // 2) = (10, 20)
    assert torch.all(img[:, :20] == 1) and torch.all(img[:, 60:] == 1) and torch.all(img[:, :, :10] == 1)
    assert torch.all(img[:, :, 70:] == 1) and torch.all(img[:, 20:60, 10:70] < 1)


@pytest.mark.slow
def test_preset_official_reaches_the_cli(photo_and_mask, tmp_path):
    photo, _ = photo_and_mask
    res = cli("sketch", "preset=official", f"target={photo}",
              "clip.model=tiny-rn", "clip.pretrained=null", "init.model=tiny-vit", "init.pretrained=null",
              "steps=2", "seeds=[0]", "augment.num_augs=1", "logger=none", "clip.conv_loss_type=L1",
              "text_target='a red cup'", "clip_text_guide=0.5", "lr_scheduler=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 0, res.stderr[-3000:]
    inp = np.asarray(Image.open(tmp_path / "run" / "input.png"))
    squashed = np.asarray(Image.open(photo).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC))
    assert np.array_equal(inp, squashed)
    if __import__("importlib").util.find_spec("pydiffvg") is None:
        assert "pydiffvg is not installed" in res.stderr
    import yaml

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["text_target"] == "a red cup" and saved["clip"]["conv_loss_type"] == "L1" and saved["lr_scheduler"]


# ---------------------------------------------------------------- progress animation

@pytest.mark.slow
def test_progress_gif_has_one_frame_per_snapshot_of_the_best_seed(tmp_path):
    result = run_sketch(smoke(steps=12, save_interval=4, seeds=[0, 1000]), tmp_path / "on")
    gif = Image.open(result.run_dir / "progress.gif")
    assert gif.n_frames == 4  # steps 0, 4, 8 and the end (12)
    gif.seek(gif.n_frames - 1)
    last = np.asarray(gif.convert("RGB"))
    final = np.asarray(Image.open(result.run_dir / "seeds" / f"seed{result.best_seed}" / "final.png").convert("RGB"))
    assert np.abs(last.astype(int) - final.astype(int)).mean() < 3  # GIF palette quantisation
    off = run_sketch(smoke(steps=4, save_interval=2, progress=False), tmp_path / "off")
    assert not list(off.run_dir.glob("progress.*"))


@pytest.mark.slow
def test_progress_frames_draw_each_step_as_its_snapshot_did(tmp_path):
    """With trained opacities and stages, a frame shows that step's opacities and only its stages' strokes."""
    result = run_sketch(smoke(steps=4, save_interval=2, num_stages=2, force_sparse=True, color_lr=0.3), tmp_path)
    gif = Image.open(result.run_dir / "progress.gif")
    seed = result.run_dir / "seeds" / "seed0"
    for index, picture in ((0, seed / "snapshots" / "step00000.png"), (gif.n_frames - 1, seed / "final.png")):
        gif.seek(index)
        frame = np.asarray(gif.convert("L")).astype(int)
        differs = np.abs(frame - np.asarray(Image.open(picture).convert("L")).astype(int)) > 32
        assert differs.sum() <= 5, (picture, int(differs.sum()))  # a missing or extra stroke is hundreds of pixels


def test_progress_is_logged_to_wandb_as_a_video(tmp_path):
    import wandb

    result = run_sketch(smoke(steps=4, save_interval=2, logger="wandb"), tmp_path / "wb")
    wandb.finish()
    videos = list((result.run_dir / "wandb").glob("offline-run-*/files/media/videos/progress_*.gif"))
    assert len(videos) == 1 and videos[0].read_bytes() == (result.run_dir / "progress.gif").read_bytes()


# ---------------------------------------------------------------- resume

@pytest.mark.slow
def test_resume_with_the_official_options_gives_the_same_run(tmp_path, photo_and_mask):
    photo, mask = photo_and_mask
    options = dict(target=str(photo), mask=str(mask), mask_object_attention=True, text_target="a cup",
                   clip_text_guide=0.5, lr_scheduler=True, steps=12, eval_interval=3, save_interval=3,
                   checkpoint_interval=6, seeds=[0], logger="none")
    options["clip.conv_loss_type"] = "Cos"
    whole = run_sketch(compose("sketch", ["preset=smoke", *(f"{k}={v}" for k, v in options.items()
                                                           if k == "clip.conv_loss_type")],
                               **{k: v for k, v in options.items() if k != "clip.conv_loss_type"}), tmp_path / "whole")
    # the same run stopped after step 7 (its last checkpoint: step 6), then resumed to the end
    part_cfg = compose("sketch", ["preset=smoke", "clip.conv_loss_type=Cos", "trainer.max_steps=7"],
                       **{k: v for k, v in options.items() if k != "clip.conv_loss_type"})
    run_sketch(part_cfg, tmp_path / "part")
    saved = (tmp_path / "part" / "config.yaml").read_text().replace("max_steps: 7", "max_steps: 12")
    (tmp_path / "part" / "config.yaml").write_text(saved)
    resumed = run_sketch(compose("sketch", [f"resume={tmp_path / 'part'}"]), tmp_path / "ignored")
    assert resumed.summary["steps_run"] == whole.summary["steps_run"] == 12
    assert resumed.best_svg.read_bytes() == whole.best_svg.read_bytes()
    assert (tmp_path / "part" / "progress.gif").read_bytes() == (tmp_path / "whole" / "progress.gif").read_bytes()
