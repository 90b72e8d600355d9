"""SketchModule: the control points of S seeds of one image, optimised against CLIP.

One training step renders all seeds, augments every (sketch, target) pair with that
seed's own generator, runs one CLIP forward over all views and sums the per-seed
losses. Seeds never mix: the gradient of seed k depends only on seed k's strokes and
draws, so seed k gives the same sketch alone or in a batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .accel import StepCompiler
from .clip.text import with_text_term
from .init.stroke_init import seed_inits
from .strokes import Strokes, points_per_stroke
from .training.compiled import mark_compiled, plan_compiled_render
from .training.ddp import from_rank0, rank_agreement, rank_generators
from .training.nonfinite import NonfiniteSteps, all_finite
from .training.objective import augmented_terms, plain_terms
from .training.optim import (freeze_earlier_strokes, optimizer_follows_device, points_adam, project_opacities,
                             skip_nonfinite_step)
from .training.records import EvalRecord
from .training.sketching import SketchingModule
from .training.stages import StrokeStages, first_strokes


class SketchModule(SketchingModule):
    """Optimises ``points: [S, M, P, 2]`` (pixels) for S seeds of one target.

    target: [3, H, W] in [0, 1]; clip: a ``ClipFeatures``; loss: a ``ClipassoLoss``;
    augment: a ``JointAugment``; renderer: a ``Renderer``; init: a ``StrokeInit``
    (used when no ``initial_points`` are given).

    Options of the official code: a stroke is ``num_segments`` segments of
    ``control_points_per_seg`` points (P = K (c - 1) + 1; the default, one cubic, is P = 4).
    ``force_sparse`` trains each stroke's opacity ``opacities: [S, M]`` with its own Adam
    group (``color_lr``), clamped to [0, 1] after every step; ``color_vars_threshold`` > 0
    then sets each opacity to 1 at or above it and to 0 below (the official line, which is
    commented out there, so 0 = off). ``num_stages`` > 1: stroke stages of ``stage_steps`` steps
    (:class:`clipasso_pl.training.stages.StrokeStages`), M = strokes x num_stages, all start points drawn at
    once as the official does.

    Every setting after ``seeds`` is keyword-only, and those that are config values have no
    default here: their one home is the YAML (``configs/sketch.yaml``, ``sketch_options.yaml``),
    and :func:`clipasso_pl.api.build_module` passes them from a config. The defaults left are
    "absent" markers (no initial points, no schedule, no text guide, no stages).
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
        *,
        strokes: int,
        half_width: float,
        lr: float,
        eval_interval: int,
        initial_points: Tensor | None = None,
        max_nonfinite: int,
        num_segments: int,
        control_points_per_seg: int,
        force_sparse: bool,
        color_lr: float,
        color_vars_threshold: float,
        num_stages: int,
        stage_steps: int = 0,
        initial_opacities: Tensor | None = None,
        lr_schedule=None,
        text_guide: nn.Module | None = None,
        text_weight: float,
        compile_step: str | None = None,
    ):
        super().__init__(target, clip, renderer, seeds, eval_interval)
        self.stages = StrokeStages(strokes, int(num_stages), int(stage_steps))
        self.half_width = half_width
        self.lr = lr
        self.num_segments = int(num_segments)
        self.control_points_per_seg = int(control_points_per_seg)
        self.force_sparse = bool(force_sparse)
        self.color_lr = float(color_lr)
        self.color_vars_threshold = float(color_vars_threshold)
        # Options of the official code (README "Options from the official code"):
        # lr_schedule(step) -> the points' lr (``lr_scheduler=true``); the CLIP text term.
        self.lr_schedule = lr_schedule
        self.text_guide = text_guide.requires_grad_(False).eval() if text_guide is not None else None
        self.text_weight = float(text_weight)
        # compile=step: a torch.compile backend name for step_terms (None: eager); compiled on first use.
        self.step_compiler = StepCompiler(compile_step)
        mark_compiled(renderer, compile_step)
        self.loss_fn = loss
        self.augment = augment
        self.init = init
        S = len(self.seeds)
        total = self.stages.total
        self.points = nn.Parameter(torch.zeros(S, total, points_per_stroke(self.num_segments, self.control_points_per_seg), 2))
        # Only a parameter with force_sparse, so the default run's state and optimiser are unchanged.
        self.opacities = nn.Parameter(torch.ones(S, total)) if self.force_sparse else None
        self.register_buffer("active", torch.ones(S, dtype=torch.bool))
        self.register_buffer("initialized", torch.tensor(False))
        # Non-finite steps: skipped, counted on the device, and fatal after max_nonfinite in a row.
        self.nonfinite = NonfiniteSteps(max_nonfinite)
        if initial_points is not None:
            if initial_points.shape != self.points.shape:
                raise ValueError(f"initial_points must be {tuple(self.points.shape)}, got {tuple(initial_points.shape)}")
            self.points.data.copy_(initial_points)
            self.initialized.fill_(True)
        if initial_opacities is not None and self.opacities is not None:
            self.opacities.data.copy_(initial_opacities.expand_as(self.opacities).clamp(0, 1))
        # One generator per seed: its init draws come first, then its augmentation draws.
        self.generators = [torch.Generator().manual_seed(int(s)) for s in self.seeds]
        self.augment_generators = self.generators
        self.init_results: list | None = None
        # Under DDP: how far the ranks' strokes ended apart, and each rank's last step (set at train end).
        self.rank_divergence = 0.0
        self.rank_steps: list[int] | None = None
        self._target_eval_feats: dict[str, Tensor] | None = None

    # ----------------------------------------------------------------- state
    frozen = ("clip.", "init.", "text_guide.")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["generator_states"] = [g.get_state() for g in self.generators]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for g, state in zip(self.generators, checkpoint.get("generator_states", [])):
            g.set_state(state)

    # ------------------------------------------------------------------ init
    def initialize(self) -> list:
        """Draw initial strokes for every seed with its own generator; returns the InitResults."""
        total, num_points = self.points.shape[1:3]
        results = seed_inits(self.init, self.target[0].cpu(), self.generators, total, num_points)
        with torch.no_grad():
            self.points.copy_(torch.stack([r.points for r in results]).to(self.points))
        self.initialized.fill_(True)
        self.init_results = results
        return results

    def setup(self, stage: str) -> None:
        if self.global_rank > 0:
            self.augment_generators = rank_generators(self.seeds, self.global_rank)

    def on_fit_start(self) -> None:
        if not bool(self.initialized):
            self.initialize()

    # ------------------------------------------------------------- rendering
    def visible_strokes(self, step: int | None = None) -> int:
        """How many strokes are drawn at ``step`` (default: the current step): those of the stages reached so far."""
        return self.stages.visible(int(self.global_step) if step is None else step)

    def strokes(self, points: Tensor | None = None, opacities: Tensor | None = None, count: int | None = None) -> Strokes:
        """The first ``count`` strokes (default: those drawn now) of the current (or given) points [S, M, P, 2];
        ``opacities`` [S, M] default to the trained ones with force_sparse when ``points`` is None, else 1."""
        if points is None:
            points = self.points
            if opacities is None and self.opacities is not None:
                opacities = self.opacities
        count = self.visible_strokes() if count is None else int(count)
        points, opacities = first_strokes(points, opacities, count)
        if opacities is None:
            return Strokes.constant(points, self.half_width, control_points_per_seg=self.control_points_per_seg)
        return Strokes(points, points.new_full(points.shape[:2], self.half_width), opacities.to(points),
                       self.control_points_per_seg)

    def render(self, points: Tensor | None = None, opacities: Tensor | None = None, count: int | None = None) -> Tensor:
        """Sketch pixels [S, 3, H, W] of the current (or given) control points."""
        with self.full_precision():
            return self.renderer.render(self.strokes(points, opacities, count), self.height, self.width)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, sketches: Tensor) -> dict[str, Tensor]:
        """Augmented CLIP loss. sketches: [S, 3, H, W] -> per-seed terms [S] (draws this step's views)."""
        views = self.augment.device_params(self.augment_generators, *sketches.shape[-2:], sketches.device, sketches.dtype)
        return self.loss_terms(sketches, views)

    def loss_terms(self, sketches: Tensor, views: Tensor | None) -> dict[str, Tensor]:
        """Per-seed terms [S] of sketches [S, 3, H, W] under the drawn ``views`` (JointAugment.device_params)."""
        terms, sketch_views = augmented_terms(self.clip, self.loss_fn, self.augment, sketches, self.target, views,
                                              len(self.seeds))
        if self.text_guide is not None:
            terms = with_text_term(terms, self.text_guide, sketch_views, len(self.seeds),
                                   int(getattr(self.augment, "num_augs", 0)), self.text_weight)
        return terms

    def step_terms(self, points: Tensor, opacities: Tensor | None, views: Tensor | None) -> dict[str, Tensor]:
        """A training step's per-seed terms [S]: render the drawn strokes ``points`` [S, M', P, 2] (with
        ``opacities`` [S, M'] or None), augment them with the drawn ``views`` [S * A, 12] (or None), CLIP
        towers, loss. Device work only, no draw and no host read: ``compile=step`` compiles it as one
        graph (its backward through AOTAutograd)."""
        with self.full_precision():
            sketches = self.renderer.render(self.strokes(points, opacities, points.shape[1]), self.height, self.width)
        return self.loss_terms(sketches, views)

    def step_function(self):
        """``step_terms`` as the step runs it: compiled with ``compile=step`` (see :class:`StepCompiler`)."""
        return self.step_compiler(self.step_terms, self.device)

    def visible(self) -> tuple[Tensor, Tensor | None]:
        """The trained points [S, M', P, 2] and opacities [S, M'] (or None) of the strokes drawn now."""
        return first_strokes(self.points, self.opacities, self.visible_strokes())

    @torch.no_grad()
    def evaluate(self) -> EvalRecord:
        """Loss on the plain (sketch, target) pair of every seed, no augmentation."""
        if self._target_eval_feats is None:
            self._target_eval_feats = {k: v.expand(len(self.seeds), *v.shape[1:]) for k, v in self.clip(self.target).items()}
        sketches = self.render()
        terms = plain_terms(self.clip, self.loss_fn, sketches, self._target_eval_feats, len(self.seeds))
        if self.text_guide is not None:
            terms = with_text_term(terms, self.text_guide, sketches, len(self.seeds), 0, self.text_weight)
        terms = from_rank0({k: v.detach() for k, v in terms.items()})
        return EvalRecord(int(self.global_step), terms,
                          self.points.detach().clone(), self.active.clone(),
                          opacities=None if self.opacities is None else self.opacities.detach().clone(),
                          count=self.visible_strokes(), sketches=sketches)

    def training_step(self, batch, batch_idx):
        step = int(self.global_step)
        if self.eval_interval > 0 and step % self.eval_interval == 0:
            self.last_eval = self.evaluate()
        else:
            self.last_eval = None
        points, opacities = self.visible()
        views = self.augment.device_params(self.augment_generators, self.height, self.width, points.device, points.dtype)
        plan_compiled_render(self.renderer, points, self.num_segments)  # a no-op unless the step is compiled
        terms = self.step_function()(points, opacities, views)
        self.last_train = {k: v.detach() for k, v in terms.items()}
        # Summed, not averaged, so seed k's gradient does not depend on how many seeds share the batch.
        total = (terms["loss"] * self.active).sum()
        # A non-finite step is skipped in optimizer_step without reading this on the host (no GPU sync);
        # the values are logged by LayerLossLogger, which reads them on eval steps.
        self.step_finite = torch.isfinite(total)
        if self.opacities is not None:  # logged as train/opacity_mean with the loss terms
            self.last_train["opacity_mean"] = self.opacities.detach()[:, : self.visible_strokes()].mean(dim=1)
        return total

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        if self.lr_schedule is not None:  # the points' group only, set before the step as officially
            optimizer.param_groups[0]["lr"] = float(self.lr_schedule(int(self.global_step)))
        optimizer_closure()  # training_step + backward
        loss_ok = self.step_finite if self.step_finite is not None else torch.ones((), dtype=torch.bool, device=self.device)
        ok = all_finite(loss_ok, [self.points, self.opacities])
        self.nonfinite.count(int(self.global_step), loss_ok, ok, self.last_train)
        if self.stages.num_stages > 1:  # in stage k only the strokes added in stage k move (a fresh Adam)
            first, fresh = self.stages.frozen(int(self.global_step))
            freeze_earlier_strokes(optimizer, [self.points, self.opacities], first, fresh)
        skip_nonfinite_step(optimizer, ok, self.active, [p for p in (self.points, self.opacities) if p is not None])
        if self.opacities is not None:  # the official code clamps the stroke colour before every render
            project_opacities(self.opacities, self.color_vars_threshold)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        step = int(self.global_step) - 1  # the step just taken
        interval = self.eval_interval if self.eval_interval > 0 else 10
        if step % interval == 0:
            self.nonfinite.check(self.last_train or {})

    def configure_optimizers(self):
        return points_adam(self.points, self.opacities, self.lr, self.color_lr, self.device)

    def on_train_start(self) -> None:
        super().on_train_start()
        # After the optimiser state of a checkpoint loaded (Lightning restores it before this hook): a checkpoint
        # from another device brings that device's `capturable` and `step` placement.
        for optimizer in self.trainer.optimizers:
            optimizer_follows_device(optimizer, self.device)

    def on_train_end(self) -> None:
        self.nonfinite.check(self.last_train or {})
        self.rank_divergence, self.rank_steps = rank_agreement(self, self.points.detach())
