"""Every choice list of the config, in one torch-free module.

The schema (:mod:`clipasso_pl.config`) checks values against these before any model loads,
and the code that acts on a value (losses, augmentation, initialisation, scene inputs, ...)
imports the same tuple, so the two cannot drift apart. Nothing here may import torch.
"""

from __future__ import annotations

# clip.conv_loss_type: the per-layer distance of the geometric loss (official --clip_conv_loss_type).
CONV_LOSS_TYPES = ("L2", "L1", "Cos")
# augment.augmentations: the official --augemntations words we support.
AUGMENTATIONS = ("affine", "none")
# init.mode: how stroke start points are drawn.
INIT_MODES = ("random", "saliency", "saliency_xdog")
# precision (and trainer.precision): 16-mixed is refused, its GradScaler would silently skip our
# manual optimizer step.
PRECISIONS = ("32-true", "bf16-mixed")
# scene `square`: how a non-square scene photo becomes square (masking.square_image).
SQUARE_MODES = ("official", "pad", "squash")
# scene `inpaint_method`: how the background behind the object is filled (scene.background.fill_background).
INPAINT_METHODS = ("auto", "lama", "telea", "ns")
# scene `parts`: what a scene is split into.
PARTS = ("background", "foreground")
# eval.ci: the confidence interval of a recognition rate.
CI_KINDS = ("wilson", "clopper_pearson", "bootstrap")
