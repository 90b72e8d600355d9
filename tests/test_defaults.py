"""Every default the official code sets, asserted on the config each command composes (configs/*.yaml
through ``config.compose``, as the CLI does), never on a Python default: a careless edit of one YAML value
fails here.

Where the values come from (checked in the official repositories): CLIPasso ``config.py`` (argparse
defaults), ``models/painter_params.py`` (random walk radius 0.05), ``models/loss.py`` (augmentations) and
``run_object_sketching.py`` (seeds 0, 1000, 2000); SceneSketch ``preprocess_images.py`` (512 px, 11 x 11
dilation), ``sketch_utils.py`` (resize_obj to 0.7 of the side), ``models/painter_params.py`` (width MLP
input 1.5, Gumbel temperature 0.2) and ``scripts/`` (the run lengths, layers, ratios and step sizes).
The deliberate differences are README "Differences from the official code" and are pinned as such.
"""

import pytest
from omegaconf import OmegaConf

from clipasso_pl.config import compose

# CLIPasso: the sketch settings, shared by `sketch` and `evaluate` (and `bench`, which composes sketch.yaml).
SKETCH = {
    "clip.model": "RN101-quickgelu",  # --clip_model_name RN101 (open_clip's name for OpenAI's RN101)
    "clip.pretrained": "openai",
    "clip.conv_layer_weights": [0.0, 0.0, 1.0, 1.0, 0.0],  # --clip_conv_layer_weights 0,0,1.0,1.0,0
    "clip.fc_weight": 0.1,  # --clip_fc_loss_weight
    "clip.conv_loss_type": "L2",  # --clip_conv_loss_type
    "init.mode": "saliency_xdog",  # --attention_init 1 --xdog_intersec 1
    "init.model": "ViT-B-32-quickgelu",  # --saliency_clip_model ViT-B/32
    "init.temperature": 0.3,  # --softmax_temp
    "init.radius": 0.05,  # get_path: radius = 0.05
    "augment.num_augs": 4,  # --num_aug_clip
    "augment.distortion_scale": 0.5,  # RandomPerspective(distortion_scale=0.5)
    "augment.crop_scale": 0.8,  # RandomResizedCrop(scale=(0.8, 0.8))
    "augment.augmentations": "affine",  # --augemntations affine
    "half_width": 1.5,  # --width
    "lr": 1.0,  # --lr
    "eval_interval": 10,  # --eval_interval
    "canvas": 224,  # --image_scale
    "seeds": [0, 1000, 2000],  # run_object_sketching.py: range(0, 3 * 1000, 1000)
    "num_segments": 1,
    "control_points_per_seg": 4,
    "force_sparse": False,
    "color_lr": 0.01,
    "color_vars_threshold": 0.0,
    "num_stages": 1,
    "mask_object": False,
    "mask_object_attention": False,
    "text_target": None,
    "clip_text_guide": 0.0,
    "lr_scheduler": False,
    "callbacks.early_stopping.min_delta": 1e-5,  # the official loop's 0.00001
    "callbacks.early_stopping.patience": 2,  # ... and its second calm eval
    "steps": 2001,  # the paper (README: config.py says 500, run_object_sketching.py 801)
    "fix_scale": True,  # deliberate (README): the official default 0 is preset=official
    "official_padding": False,  # deliberate (README), preset=official switches it on
}
SKETCH_ONLY = {"strokes": 16, "save_interval": 10}  # --num_paths; --save_interval
EVALUATE_ONLY = {"levels": [4, 8, 16, 32], "save_interval": 500, "progress": False}  # README: evaluation

# CLIPascene (SceneSketch).
SCENE = {
    "clip.model": "ViT-B-32-quickgelu",
    "clip.pretrained": "openai",
    "init.mode": "saliency_xdog",
    "init.model": "ViT-B-32-quickgelu",
    "init.temperature": 0.3,
    "init.radius": 0.05,
    "augment.num_augs": 4,
    "augment.distortion_scale": 0.5,
    "augment.crop_scale": 0.8,
    "augment.augmentations": "affine",
    "square": "official",
    "max_size": 512,  # preprocess_images.py: larger photos are resized to 512 x 512
    "dilation": 11,  # binary_dilation(structure=np.ones((11, 11)))
    "resize_obj": True,
    "object_fraction": 0.7,  # target_size = int(min(h, w) * 0.7)
    "canvas": 224,
    "combined_size": 448,
    "combined_width_scale": 1.8,
    "strokes": 64,
    "half_width": 1.5,
    "seeds": [0, 1000],
    "lr": 1e-4,
    "width_lr": 5e-5,
    "hidden": 1000,
    "offset_scale": 0.1,  # points = x + 0.1 * MLP(x)
    "layers": [2, 8, 11],
    "levels": 8,
    "object_anchor_layer": 4,
    "object_anchor_weight": 0.5,
    "gradnorm": True,
    "fidelity.background_steps": 1501,
    "fidelity.foreground_steps": 600,
    "fidelity.foreground_steps_deep": 1000,
    "fidelity.deep_layer": 8,
    "fidelity.eval_start": 400,
    "fidelity.eval_interval": 50,
    "simplicity.steps": 401,
    "simplicity.eval_start": 100,
    "simplicity.eval_interval": 100,
    "simplicity.temperature": 0.2,  # --gumbel_temp
    "simplicity.keep_threshold": 0.7,
    "simplicity.halvings": 4,
    "simplicity.step_layers": [2, 8, 11],
    "simplicity.background_step_sizes": [0.35, 0.5, 0.85],
    "simplicity.foreground_step_sizes": [0.4, 0.5, 0.9],
    "simplicity.nested": False,
}

EXPECTED = {
    "sketch": {**SKETCH, **SKETCH_ONLY},
    "evaluate": {**SKETCH, **EVALUATE_ONLY},
    "bench": SKETCH,
    "scene": SCENE,
}


def composed_values(command: str) -> dict:
    cfg = compose(command)
    return {key: OmegaConf.to_container(v) if OmegaConf.is_config(v := OmegaConf.select(cfg, key)) else v
            for key in EXPECTED[command]}


@pytest.mark.parametrize("command", list(EXPECTED))
def test_each_command_composes_the_official_defaults(command):
    got = composed_values(command)
    wrong = {k: (got[k], want) for k, want in EXPECTED[command].items()
             if not (got[k] == want and type(got[k]) is type(want) or got[k] == pytest.approx(want, rel=1e-12))}
    assert not wrong, f"{command}: (composed, official) {wrong}"


def test_the_presets_change_only_what_they_say():
    """preset=official switches back exactly the deliberate differences; preset=smoke leaves the method alone."""
    official = compose("sketch", ["preset=official"])
    assert (official.fix_scale, official.official_padding) == (False, True)
    smoke, default = compose("sketch", ["preset=smoke"]), compose("sketch")
    for key in ("half_width", "lr", "strokes", "init.temperature", "init.radius", "clip.fc_weight", "canvas",
                "augment.distortion_scale", "augment.crop_scale", "callbacks.early_stopping.min_delta"):
        assert OmegaConf.select(smoke, key) == OmegaConf.select(default, key), key
