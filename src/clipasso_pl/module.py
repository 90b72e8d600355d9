"""SketchModule: the control points of S seeds of one image, optimised against CLIP.

One training step renders all seeds, augments every (sketch, target) pair with that
seed's own generator, runs one CLIP forward over all views and sums the per-seed
losses. Seeds never mix: the gradient of seed k depends only on seed k's strokes and
draws, so seed k gives the same sketch alone or in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .errors import ClipassoError
from .strokes import Strokes


class StepDataset(Dataset):
    """``steps`` dummy items: one optimisation step each (the target lives in the module)."""

    def __init__(self, steps: int):
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> int:
        return index


def step_loader(steps: int) -> DataLoader:
    return DataLoader(StepDataset(steps), batch_size=None, shuffle=False)


@dataclass
class EvalRecord:
    """The eval loss at one step, taken before that step's update.

    terms: per-seed values [S] of every named loss term (``loss`` is the total).
    points: the control points that were evaluated [S, N, 4, 2].
    sketches: their renders [S, 3, H, W] (reused by the snapshots: no second render).
    """

    step: int
    terms: dict[str, Tensor]
    points: Tensor
    active: Tensor | None = None
    sketches: Tensor | None = None


class SketchModule(pl.LightningModule):
    """Optimises ``points: [S, N, 4, 2]`` (pixels) for S seeds of one target.

    target: [3, H, W] in [0, 1]; clip: a ``ClipFeatures``; loss: a ``ClipassoLoss``;
    augment: a ``JointAugment``; renderer: a ``Renderer``; init: a ``StrokeInit``
    (used when no ``initial_points`` are given).
    """

    def __init__(
        self,
        target: Tensor,
        clip: nn.Module,
        loss: nn.Module,
        augment: nn.Module,
        renderer,
        init,
        seeds: list[int],
        strokes: int = 16,
        half_width: float = 1.5,
        lr: float = 1.0,
        eval_interval: int = 10,
        initial_points: Tensor | None = None,
        max_nonfinite: int = 10,
    ):
        super().__init__()
        if strokes < 1:
            raise ValueError("strokes must be >= 1")
        self.seeds = list(seeds)
        self.num_strokes = strokes
        self.half_width = half_width
        self.lr = lr
        self.eval_interval = eval_interval
        self.max_nonfinite = max_nonfinite
        self.clip = clip.requires_grad_(False).eval()
        self.loss_fn = loss
        self.augment = augment
        self.renderer = renderer
        self.init = init
        self.height, self.width = target.shape[-2:]
        S = len(self.seeds)
        self.register_buffer("target", target[None].float())
        self.points = nn.Parameter(torch.zeros(S, strokes, 4, 2))
        self.register_buffer("active", torch.ones(S, dtype=torch.bool))
        self.register_buffer("initialized", torch.tensor(False))
        # Non-finite steps: skipped, counted, and fatal after max_nonfinite in a row.
        self.register_buffer("nonfinite_total", torch.tensor(0))
        self.register_buffer("nonfinite_in_row", torch.tensor(0))
        # Kept on the device and read on eval steps only (no host sync per step): the step at which
        # max_nonfinite in a row was first reached (-1: never), whether the loss or the gradient was
        # non-finite then, and the mean loss terms of that step.
        self.register_buffer("nonfinite_stop_step", torch.tensor(-1))
        self.register_buffer("nonfinite_stop_loss", torch.tensor(False))
        self.nonfinite_stop_means: Tensor | None = None  # [M] means of the loss terms (last_train order)
        self.step_finite: Tensor | None = None  # [] bool: this step's total loss is finite
        if initial_points is not None:
            if initial_points.shape != self.points.shape:
                raise ValueError(f"initial_points must be {tuple(self.points.shape)}, got {tuple(initial_points.shape)}")
            self.points.data.copy_(initial_points)
            self.initialized.fill_(True)
        # One generator per seed: its init draws come first, then its augmentation draws.
        self.generators = [torch.Generator().manual_seed(int(s)) for s in self.seeds]
        self.augment_generators = self.generators
        self.init_results: list | None = None
        self.last_train: dict[str, Tensor] | None = None
        self.last_eval: EvalRecord | None = None
        self._target_eval_feats: dict[str, Tensor] | None = None
        # The frozen CLIP is rebuilt from config, never saved as state.
        self.strict_loading = False

    # ----------------------------------------------------------------- state
    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        return {k: v for k, v in sd.items() if not k.startswith(("clip.", "init."))}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["generator_states"] = [g.get_state() for g in self.generators]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for g, state in zip(self.generators, checkpoint.get("generator_states", [])):
            g.set_state(state)

    # ------------------------------------------------------------------ init
    def initialize(self) -> list:
        """Draw initial strokes for every seed with its own generator; returns the InitResults."""
        results = [self.init(self.target[0].cpu(), self.num_strokes, g) for g in self.generators]
        with torch.no_grad():
            self.points.copy_(torch.stack([r.points for r in results]).to(self.points))
        self.initialized.fill_(True)
        self.init_results = results
        return results

    def setup(self, stage: str) -> None:
        # Under DDP every rank starts from the same strokes (same init draws) but draws its own
        # augmentations, so N ranks act like one run with N times the augmentations.
        rank = self.global_rank
        if rank > 0:
            self.augment_generators = [torch.Generator().manual_seed(int(s) * 7919 + rank) for s in self.seeds]

    def on_fit_start(self) -> None:
        if not bool(self.initialized):
            self.initialize()

    # ------------------------------------------------------------- rendering
    def strokes(self, points: Tensor | None = None) -> Strokes:
        return Strokes.constant(self.points if points is None else points, self.half_width)

    def full_precision(self):
        """A float32 region even under a mixed-precision trainer: the renderer's coverage and log-sum
        compositing, the augmentation and the loss stay float32; only the CLIP runs in bf16/fp16."""
        return torch.autocast(self.device.type, enabled=False)

    def render(self, points: Tensor | None = None) -> Tensor:
        """Sketch pixels [S, 3, H, W] of the current (or given) control points."""
        with self.full_precision():
            return self.renderer.render(self.strokes(points), self.height, self.width)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, sketches: Tensor) -> dict[str, Tensor]:
        """Augmented CLIP loss. sketches: [S, 3, H, W] -> per-seed terms [S]."""
        with self.full_precision():
            sketch_views, target_views = self.augment(sketches, self.target, self.augment_generators)
        with torch.no_grad():
            target_feats = self.clip(target_views)
        sketch_feats = self.clip(sketch_views)
        with self.full_precision():
            return self.loss_fn(sketch_feats, target_feats, len(self.seeds))

    @torch.no_grad()
    def evaluate(self) -> EvalRecord:
        """Loss on the plain (sketch, target) pair of every seed, no augmentation."""
        if self._target_eval_feats is None:
            self._target_eval_feats = {k: v.expand(len(self.seeds), *v.shape[1:]) for k, v in self.clip(self.target).items()}
        sketches = self.render()
        sketch_feats = self.clip(sketches)
        with self.full_precision():
            terms = self.loss_fn(sketch_feats, self._target_eval_feats, len(self.seeds))
        return EvalRecord(int(self.global_step), {k: v.detach() for k, v in terms.items()},
                          self.points.detach().clone(), self.active.clone(), sketches)

    def training_step(self, batch, batch_idx):
        step = int(self.global_step)
        if self.eval_interval > 0 and step % self.eval_interval == 0:
            self.last_eval = self.evaluate()
        else:
            self.last_eval = None
        terms = self.compute_loss(self.render())
        self.last_train = {k: v.detach() for k, v in terms.items()}
        # Summed, not averaged, so seed k's gradient does not depend on how many seeds share the batch.
        total = (terms["loss"] * self.active).sum()
        # A non-finite step is skipped in optimizer_step without reading this on the host (no GPU sync);
        # the values are logged by LayerLossLogger, which reads them on eval steps.
        self.step_finite = torch.isfinite(total)
        return total

    @torch.no_grad()
    def count_nonfinite(self, step: int, loss_ok: Tensor, ok: Tensor) -> None:
        """Count a skipped step on the device; remember the step where ``max_nonfinite`` in a row was reached."""
        bad = ~ok
        self.nonfinite_total += bad
        self.nonfinite_in_row.add_(bad).mul_(bad)
        hit = (self.nonfinite_in_row >= self.max_nonfinite) & (self.nonfinite_stop_step < 0)
        self.nonfinite_stop_step.copy_(torch.where(hit, step, self.nonfinite_stop_step))
        self.nonfinite_stop_loss.copy_(torch.where(hit, ~loss_ok, self.nonfinite_stop_loss))
        if self.last_train:
            means = torch.stack(list(self.last_train.values())).mean(-1)  # [M]: one op, not one per term
            before = self.nonfinite_stop_means if self.nonfinite_stop_means is not None else torch.zeros_like(means)
            self.nonfinite_stop_means = torch.where(hit, means, before)

    def check_nonfinite(self) -> None:
        """Stop the run once ``max_nonfinite`` steps in a row were non-finite (one host read; eval steps only)."""
        step = int(self.nonfinite_stop_step)
        if step < 0:
            return
        what = "loss" if bool(self.nonfinite_stop_loss) else "gradient"
        means = [] if self.nonfinite_stop_means is None else self.nonfinite_stop_means.tolist()
        values = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.last_train or {}, means))
        raise ClipassoError(
            f"stopped at step {step}: {self.max_nonfinite} steps in a row with a non-finite {what} "
            f"({values}); the best sketch so far is kept; lower lr or check the target image"
        )

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        optimizer_closure()  # training_step + backward
        loss_ok = self.step_finite if self.step_finite is not None else torch.ones((), dtype=torch.bool, device=self.device)
        grad = self.points.grad
        ok = loss_ok if grad is None else loss_ok & torch.isfinite(grad).all()
        self.count_nonfinite(int(self.global_step), loss_ok, ok)
        # Step, then put back what must not change, with device-side selects instead of host branches:
        # a non-finite step keeps every parameter and its Adam state; a stopped seed keeps its points
        # (Adam's momentum would keep moving it).
        params = [p for group in optimizer.param_groups for p in group["params"]]
        saved = [(p, p.detach().clone(), {k: v.clone() for k, v in optimizer.state.get(p, {}).items()
                                          if isinstance(v, Tensor)}) for p in params]
        optimizer.step()
        with torch.no_grad():
            for p, before, state in saved:
                keep = (ok & self.active).view(-1, *[1] * (p.dim() - 1)) if p is self.points else ok
                p.copy_(torch.where(keep, p, before))
                for k, v in optimizer.state[p].items():
                    if isinstance(v, Tensor):
                        old = state[k] if k in state else torch.zeros_like(v)
                        v.copy_(torch.where(ok.to(v.device), v, old))

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        step = int(self.global_step) - 1  # the step just taken
        interval = self.eval_interval if self.eval_interval > 0 else 10
        if step % interval == 0:
            self.check_nonfinite()

    def configure_optimizers(self):
        # capturable: Adam's step count lives on the GPU, so a skipped step can be undone without a host sync.
        return torch.optim.Adam([self.points], lr=self.lr, capturable=self.device.type == "cuda")

    def on_train_start(self) -> None:
        self.clip.eval()

    def on_train_end(self) -> None:
        self.check_nonfinite()
        # Under DDP the strokes must stay identical on every rank; record how far apart they are.
        self.rank_divergence = 0.0
        if self.trainer.world_size > 1:
            gathered = self.all_gather(self.points.detach())  # [ranks, S, N, 4, 2]
            self.rank_divergence = float((gathered - gathered[0:1]).abs().max())
