"""SketchingModule: what both sketching LightningModules share, and the contract members they set.

:class:`clipasso_pl.module.SketchModule` and :class:`clipasso_pl.scene.module.SceneSketchModule`
derive from it. It holds the frozen CLIP, the renderer and the target, sets every member of
:class:`clipasso_pl.training.contract.Sketcher` (an absent value is None), keeps the frozen towers out of
the saved state, and gives the float32 region both use under a mixed-precision trainer.
"""

from __future__ import annotations

import pytorch_lightning as pl
from torch import Tensor, nn

from .contract import Evaluation
from .nonfinite import NonfiniteSteps
from .objective import full_precision


class SketchingModule(pl.LightningModule):
    """The shared part of a sketching module: seeds [S], target [3, H, W] in [0, 1] (kept as a
    buffer [1, 3, H, W]), a frozen ``clip``, a ``renderer`` and the steps between evals.

    ``frozen``: prefixes of the state rebuilt from the config, never saved (the CLIP towers).
    """

    frozen: tuple[str, ...] = ("clip.",)

    def __init__(self, target: Tensor, clip: nn.Module, renderer, seeds: list[int], eval_interval: int):
        super().__init__()
        self.seeds = list(seeds)
        self.height, self.width = target.shape[-2:]
        self.eval_interval = eval_interval
        self.clip = clip.requires_grad_(False).eval()
        self.renderer = renderer
        self.register_buffer("target", target[None].float())
        # The contract's members (contract.Sketcher): set by the subclass where it has them.
        self.opacities: Tensor | None = None  # [S, M] trained opacities
        self.nonfinite: NonfiniteSteps | None = None
        self.last_train: dict[str, Tensor] | None = None  # the latest step's terms, each [S]
        self.last_eval: Evaluation | None = None  # the latest step's eval, None on other steps
        self.step_finite: Tensor | None = None  # [] bool: this step's total loss is finite
        # The frozen CLIP is rebuilt from config, never saved as state.
        self.strict_loading = False

    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        return {k: v for k, v in sd.items() if not k.startswith(self.frozen)}

    def full_precision(self):
        """A float32 region even under a mixed-precision trainer: the renderer's coverage and log-sum
        compositing, the augmentation and the loss stay float32; only the CLIP runs in bf16/fp16."""
        return full_precision(self.device)

    def on_train_start(self) -> None:
        self.clip.eval()
