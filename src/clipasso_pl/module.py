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
    """

    step: int
    terms: dict[str, Tensor]
    points: Tensor
    active: Tensor | None = None


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
        lr_schedule=None,
        text_guide: nn.Module | None = None,
        text_weight: float = 0.0,
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
        # Options of the official code (README "Options from the official code"):
        # lr_schedule(step) -> the points' lr (``lr_scheduler=true``); the CLIP text term.
        self.lr_schedule = lr_schedule
        self.text_guide = text_guide.requires_grad_(False).eval() if text_guide is not None else None
        self.text_weight = float(text_weight)
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
        return {k: v for k, v in sd.items() if not k.startswith(("clip.", "init.", "text_guide."))}

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

    def render(self, points: Tensor | None = None) -> Tensor:
        """Sketch pixels [S, 3, H, W] of the current (or given) control points."""
        return self.renderer.render(self.strokes(points), self.height, self.width)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, sketches: Tensor) -> dict[str, Tensor]:
        """Augmented CLIP loss. sketches: [S, 3, H, W] -> per-seed terms [S]."""
        sketch_views, target_views = self.augment(sketches, self.target, self.augment_generators)
        with torch.no_grad():
            target_feats = self.clip(target_views)
        terms = self.loss_fn(self.clip(sketch_views), target_feats, len(self.seeds))
        if self.text_guide is not None:
            terms = self.add_text_term(terms, sketch_views, int(getattr(self.augment, "num_augs", 0)))
        return terms

    def add_text_term(self, terms: dict[str, Tensor], sketch_views: Tensor, num_augs: int) -> dict[str, Tensor]:
        """The CLIP text term ``text`` [S] and ``text_weight`` x it added to ``loss``.

        sketch_views: seed-major rows, 1 plain + ``num_augs`` augmented views per seed. As in
        the official code, training sums 1 - cos over the augmented views only (the plain
        view when there are none); eval (one row per seed) takes the plain sketch.
        """
        S = len(self.seeds)
        views = sketch_views.view(S, -1, *sketch_views.shape[1:])
        if num_augs > 0 and views.shape[1] > 1:
            views = views[:, 1:]
        text = self.text_guide(views.flatten(0, 1)).view(S, -1).sum(dim=1)
        return {**terms, "text": text, "loss": terms["loss"] + self.text_weight * text}

    @torch.no_grad()
    def evaluate(self) -> EvalRecord:
        """Loss on the plain (sketch, target) pair of every seed, no augmentation."""
        if self._target_eval_feats is None:
            self._target_eval_feats = {k: v.expand(len(self.seeds), *v.shape[1:]) for k, v in self.clip(self.target).items()}
        sketches = self.render()
        terms = self.loss_fn(self.clip(sketches), self._target_eval_feats, len(self.seeds))
        if self.text_guide is not None:
            terms = self.add_text_term(terms, sketches, 0)
        return EvalRecord(int(self.global_step), {k: v.detach() for k, v in terms.items()},
                          self.points.detach().clone(), self.active.clone())

    def training_step(self, batch, batch_idx):
        step = int(self.global_step)
        if self.eval_interval > 0 and step % self.eval_interval == 0:
            self.last_eval = self.evaluate()
            self.log("eval/loss", self.last_eval.terms["loss"].mean(), prog_bar=True)
        else:
            self.last_eval = None
        terms = self.compute_loss(self.render())
        self.last_train = {k: v.detach() for k, v in terms.items()}
        # Summed, not averaged, so seed k's gradient does not depend on how many seeds share the batch.
        total = (terms["loss"] * self.active).sum()
        if not torch.isfinite(total):
            self.skip_nonfinite(step, "loss", terms)
            return None
        self.log("train/loss", self.last_train["loss"].mean(), prog_bar=True)
        return total

    def skip_nonfinite(self, step: int, what: str, terms: dict[str, Tensor]) -> None:
        """Count a skipped step; stop the run after ``max_nonfinite`` of them in a row."""
        self.nonfinite_total += 1
        self.nonfinite_in_row += 1
        self.log("train/nonfinite_steps", self.nonfinite_total.float())
        if int(self.nonfinite_in_row) >= self.max_nonfinite:
            values = ", ".join(f"{k}={v.mean().item():.4g}" for k, v in terms.items())
            raise ClipassoError(
                f"stopped at step {step}: {int(self.nonfinite_in_row)} steps in a row with a non-finite {what} "
                f"({values}); the best sketch so far is kept; lower lr or check the target image"
            )

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        if self.lr_schedule is not None:  # the points' group only, set before the step as officially
            optimizer.param_groups[0]["lr"] = float(self.lr_schedule(int(self.global_step)))
        loss = optimizer_closure()  # training_step + backward
        if loss is None:  # non-finite loss, already counted
            optimizer.zero_grad()
            return
        grad = self.points.grad
        if grad is not None and not bool(torch.isfinite(grad).all()):
            optimizer.zero_grad()
            self.skip_nonfinite(int(self.global_step), "gradient", self.last_train)
            return
        self.nonfinite_in_row.zero_()
        frozen = ~self.active
        kept = self.points.detach()[frozen].clone()
        optimizer.step()
        if frozen.any():  # Adam's momentum would keep moving stopped seeds
            with torch.no_grad():
                self.points[frozen] = kept

    def configure_optimizers(self):
        return torch.optim.Adam([self.points], lr=self.lr)

    def on_train_start(self) -> None:
        self.clip.eval()

    def on_train_end(self) -> None:
        # Under DDP the strokes must stay identical on every rank; record how far apart they are.
        self.rank_divergence = 0.0
        if self.trainer.world_size > 1:
            gathered = self.all_gather(self.points.detach())  # [ranks, S, N, 4, 2]
            self.rank_divergence = float((gathered - gathered[0:1]).abs().max())
