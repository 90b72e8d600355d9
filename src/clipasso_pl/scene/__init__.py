"""CLIPascene: scene sketches as a fidelity x simplicity matrix, foreground and background.

mlp: LocationMLP, WidthMLP, keep_probabilities (Gumbel-softmax); losses: SceneClipLoss,
sparsity_loss, ratio_loss; ratios: fit_exponential, simplicity_ratios; module:
SceneSketchModule; selection: SceneRecord and which evaluation a stage keeps; inputs:
prepare_inputs (mask, inpainting); matrix: cells and the labelled picture; driver: run_scene
(the ``clipasso-pl scene`` command).
"""

from .losses import SceneClipLoss, ratio_loss, sparsity_loss
from .mlp import LocationMLP, WidthMLP, keep_probabilities
from .module import SceneSketchModule
from .ratios import fit_exponential, simplicity_ratios, step_size
from .selection import SceneRecord, select_lowest, select_zscore

__all__ = [
    "LocationMLP",
    "SceneClipLoss",
    "SceneRecord",
    "SceneSketchModule",
    "WidthMLP",
    "fit_exponential",
    "keep_probabilities",
    "ratio_loss",
    "select_lowest",
    "select_zscore",
    "simplicity_ratios",
    "sparsity_loss",
    "step_size",
]
