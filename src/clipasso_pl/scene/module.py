"""SceneSketchModule: one part (background or foreground) at one (fidelity, simplicity) level.

The trainable parameters are MLPs, one set per seed: the location MLP (always, Adam at
``lr``) and the width MLP (simplicity levels, Adam at ``width_lr``). The control points are
the location MLP's output on the fixed initial points; the stroke half-widths are the
Gumbel-sampled keep-probability x ``half_width``. The renderer, CLIP taps and joint
augmentation are the core's, batched over seeds as in :class:`clipasso_pl.module.SketchModule`,
and each seed keeps its own generator (its augmentation and Gumbel draws), so seeds never mix.

Each step computes the loss terms, their gradnorm weights (see
:func:`clipasso_pl.scene.losses.gradnorm_weights`) and the total. Evaluation runs at every
step ``t >= eval_start`` with ``(t - eval_start) % eval_interval == 0``, as the official code
does: the sketch of that step (its points and its Gumbel-sampled keep-probabilities) is
scored on the plain (sketch, target) pair, no augmentation, with that step's gradnorm
weights; each evaluation is a :class:`clipasso_pl.scene.selection.SceneRecord`. After the
update, the MLP weights (and, in simplicity levels, the Adam state) of candidate records are
kept on the CPU so the chosen step can warm-start the next level (see
:mod:`clipasso_pl.scene.selection`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..strokes import Strokes
from ..training.nonfinite import all_finite
from ..training.optim import adam_state_on_cpu, load_adam_state, skip_nonfinite_step
from ..training.sketching import SketchingModule
from .losses import SceneClipLoss, combine_terms, gradnorm_weights, inside_canvas, sparsity_loss
from .mlp import LocationMLP, WidthMLP, from_unit, gumbel_uniforms, keep_probabilities, load_states, seeded, to_unit
from .selection import CandidateStates, SceneRecord, cpu_state


class SceneSketchModule(SketchingModule):
    """Optimises per-seed MLPs that place (and, with ``simplify``, thin out) N strokes.

    target: [3, H, W] in [0, 1]; clip: a ``ClipFeatures`` (ViT); loss: a :class:`SceneClipLoss`;
    augment: a ``JointAugment``; renderer: a ``Renderer``.
    initial_points: [N, 4, 2] or [S, N, 4, 2] pixels, the location MLP's fixed input.
    location_states / width_states: a state dict (shared by all seeds) or a list of them, to
        warm-start from a previous level; None draws fresh weights from the seed.
    optimizer_state: the Adam state of the previous level's chosen seed (a list of per-parameter
        states in the order of ``seed_parameters``), loaded into every seed; None starts fresh.
    keep_mask: [N] bool, strokes a previous level dropped stay dropped (``nested`` levels).
    gradnorm: re-weight the loss terms every step (simplicity levels, and object rows that
        combine two blocks); False uses the fixed coefficients alone.
    select: ``lowest`` (best eval loss, fidelity) or ``zscore`` (simplicity).
    """

    def __init__(
        self,
        target: Tensor,
        clip: nn.Module,
        loss: SceneClipLoss,
        augment: nn.Module,
        renderer,
        initial_points: Tensor,
        seeds: list[int],
        half_width: float = 1.5,
        lr: float = 1e-4,
        width_lr: float = 5e-5,
        eval_start: int = 0,
        eval_interval: int = 50,
        simplify: bool = False,
        ratio: float = 1.0,
        temperature: float = 0.2,
        keep_threshold: float = 0.7,
        keep_mask: Tensor | None = None,
        gradnorm: bool = True,
        sparsity_weight: float = 1.0,
        location_states: dict | list[dict] | None = None,
        width_states: dict | list[dict] | None = None,
        optimizer_state: list[dict] | None = None,
        hidden: int = 1000,
        offset_scale: float = 0.1,
        width_input: float = 1.5,
        width_init: bool = True,
        stream_offset: int = 0,
        select: str = "lowest",
    ):
        super().__init__(target, clip, renderer, seeds, int(eval_interval))
        S = len(self.seeds)
        self.candidates = CandidateStates(S, select)
        if initial_points.ndim == 3:
            initial_points = initial_points.expand(S, -1, -1, -1)
        if initial_points.shape[0] != S or initial_points.shape[-2:] != (4, 2):
            raise ValueError(f"initial_points must be [N, 4, 2] or [{S}, N, 4, 2], got {tuple(initial_points.shape)}")
        self.num_strokes = N = initial_points.shape[1]
        self.half_width = float(half_width)
        self.lr, self.width_lr = float(lr), float(width_lr)
        self.eval_start = int(eval_start)
        self.simplify = simplify
        self.ratio = float(ratio)
        self.temperature = float(temperature)
        self.keep_threshold = float(keep_threshold)
        self.gradnorm = bool(gradnorm)
        self.sparsity_weight = float(sparsity_weight)
        self.loss_fn = loss
        self.augment = augment
        side = torch.tensor([float(self.width), float(self.height)])
        self.register_buffer("side", side)
        self.register_buffer("initial", to_unit(initial_points.float(), side).reshape(S, N * 8).clone())
        self.register_buffer("width_input", torch.full((N,), float(width_input)))
        mask = torch.ones(N, dtype=torch.bool) if keep_mask is None else keep_mask.bool().clone()
        self.register_buffer("keep_mask", mask)
        self.locations = nn.ModuleList(seeded(lambda: LocationMLP(N, hidden, offset_scale), s) for s in self.seeds)
        load_states(self.locations, location_states)
        self.widths = None
        if simplify:
            self.widths = nn.ModuleList(seeded(lambda: WidthMLP(N, hidden, width_init), s) for s in self.seeds)
            load_states(self.widths, width_states)
        # Strokes that start off the canvas never count (the official out-of-canvas mask, set once).
        with torch.no_grad():
            self.register_buffer("inside", inside_canvas(self.current_points(), self.height, self.width))
        self.optimizer_state = optimizer_state
        self.generators = [torch.Generator().manual_seed(int(s) + int(stream_offset)) for s in self.seeds]
        self.weights: dict[str, Tensor] | None = None  # the gradnorm weights of the latest step
        self.records: list[SceneRecord] = []
        self._target_feats: dict[str, Tensor] | None = None
        self._optimizer = None

    # ------------------------------------------------------------- strokes
    def current_points(self) -> Tensor:
        """Control points [S, N, 4, 2] pixels (differentiable in the location MLPs): one batched forward."""
        out = LocationMLP.batched(self.locations, self.initial)
        return from_unit(out.view(len(self.seeds), self.num_strokes, 4, 2), self.side)

    @property
    def points(self) -> Tensor:
        """The current control points [S, N, 4, 2], detached (what the core callbacks read)."""
        with torch.no_grad():
            return self.current_points()

    def keep(self, noise: bool = True) -> Tensor:
        """Keep-probabilities [S, N]: Gumbel-softmax samples (noise) or the noiseless ones; 1 in fidelity.
        Off-canvas strokes (at the start of the level) and dropped ones (nested) are 0."""
        if not self.simplify:
            return self.keep_mask.float().expand(len(self.seeds), -1)
        q = WidthMLP.batched(self.widths, self.width_input)  # [S, N]
        u = gumbel_uniforms(tuple(q.shape[1:]), self.generators, q.device, q.dtype) if noise else None
        p = keep_probabilities(q, self.temperature, noise=noise, uniforms=u)
        return p * self.keep_mask * self.inside

    def strokes(self, points: Tensor | None = None, keep: Tensor | None = None) -> Strokes:
        """Strokes with half-width keep x half_width; ``keep`` defaults to the noiseless one
        (fidelity: all 1, so any batch of points works, as the core callbacks need)."""
        points = self.points if points is None else points
        if keep is None:
            with torch.no_grad():
                keep = self.keep(noise=False)
            if not self.simplify:
                keep = keep[:1].expand(points.shape[0], -1)
        return Strokes(points, keep * self.half_width, torch.ones_like(keep))

    def render(self, points: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
        """Sketch pixels [S, 3, H, W], in float32 even under a mixed-precision trainer (as SketchModule.render:
        a coverage rounded to 1 would make the log-sum compositing -inf)."""
        with self.full_precision():
            return self.renderer.render(self.strokes(points, keep), self.height, self.width)

    # ---------------------------------------------------------------- loss
    def seed_parameters(self, i: int, which: str = "all") -> list[Tensor]:
        """Seed i's parameters: ``location``, ``width`` or ``all`` (location then width)."""
        params = []
        if which in ("all", "location"):
            params += list(self.locations[i].parameters())
        if which in ("all", "width") and self.widths is not None:
            params += list(self.widths[i].parameters())
        return params

    @property
    def balanced(self) -> bool:
        """Whether the terms are gradnorm-weighted (simplicity levels; object rows with two blocks)."""
        return self.gradnorm and (self.simplify or self.loss_fn.balanced)

    def raw_terms(self, sketch_feats, target_feats, points: Tensor, keep: Tensor) -> dict[str, Tensor]:
        """The unweighted terms [S] that enter the gradnorm balance: CLIP blocks (+ sparsity)."""
        terms = self.loss_fn(sketch_feats, target_feats, len(self.seeds))
        if self.simplify:
            terms["sparsity"] = sparsity_loss(keep, self.inside)
        return terms

    def coefficients(self) -> dict[str, float]:
        coeffs = dict(self.loss_fn.coefficients)
        if self.simplify:
            coeffs["sparsity"] = self.sparsity_weight
        return coeffs

    def combine(self, raw: dict[str, Tensor], weights: dict[str, Tensor] | None) -> dict[str, Tensor]:
        """raw terms -> every logged term and the total ``loss`` (see :func:`combine_terms`)."""
        return combine_terms(raw, self.coefficients(), self.loss_fn.coefficients, weights,
                             self.ratio if self.simplify else None)

    def eval_due(self, step: int) -> bool:
        return self.eval_interval > 0 and step >= self.eval_start and (step - self.eval_start) % self.eval_interval == 0

    @torch.no_grad()
    def evaluate(self, step: int, points: Tensor | None = None, keep: Tensor | None = None) -> SceneRecord:
        """Loss on the plain (sketch, target) pair of every seed, with the latest gradnorm weights.
        points / keep default to the current points and a fresh keep sample."""
        S = len(self.seeds)
        if self._target_feats is None:
            self._target_feats = {k: v.expand(S, *v.shape[1:]) for k, v in self.clip(self.target).items()}
        points = self.current_points() if points is None else points
        keep = self.keep(noise=True) if keep is None else keep
        raw = self.raw_terms(self.clip(self.render(points, keep)), self._target_feats, points, keep)
        terms = self.combine(raw, self.weights if self.balanced else None)
        terms["kept"] = (keep > self.keep_threshold).sum(-1).float()
        record = SceneRecord(step, {k: v.detach().cpu() for k, v in terms.items()}, points.cpu(), keep.cpu())
        self.records.append(record)
        return record

    def seed_state(self, i: int) -> dict:
        """Seed i's MLP weights (and, in simplicity levels, its Adam state) as CPU copies."""
        return {
            "location": cpu_state(self.locations[i]),
            "width": cpu_state(self.widths[i]) if self.widths is not None else None,
            "optimizer": adam_state_on_cpu(self._optimizer, self.seed_parameters(i)) if self.simplify else None,
        }

    def selection_keys(self) -> list[str]:
        """The terms the z-score selection standardises: the unweighted CLIP blocks and the sparsity."""
        return list(self.loss_fn.coefficients) + (["sparsity"] if self.simplify else [])

    def best(self) -> tuple[int, SceneRecord, dict]:
        """(seed index, record, MLP weights) of the chosen evaluation."""
        return self.candidates.choose(self.records, self.selection_keys())

    # ------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        step = int(self.global_step)
        points = self.current_points()
        keep = self.keep(noise=True)
        sketches = self.render(points, keep)
        sketch_views, target_views = self.augment(sketches, self.target, self.generators)
        with torch.no_grad():
            target_feats = self.clip(target_views)
        raw = self.raw_terms(self.clip(sketch_views), target_feats, points, keep)
        if self.balanced:
            which = "width" if self.simplify else "location"
            self.weights = gradnorm_weights(raw, [self.seed_parameters(i, which) for i in range(len(self.seeds))])
        terms = self.combine(raw, self.weights if self.balanced else None)
        self.last_train = {k: v.detach() for k, v in terms.items()}
        # Evaluated on this step's sketch with this step's weights, as the official loop does.
        self.last_eval = self.evaluate(step, points.detach(), keep.detach()) if self.eval_due(step) else None
        total = terms["loss"].sum()  # summed: seed k's gradient does not depend on the other seeds
        # A non-finite step is skipped in optimizer_step on the device (no host read of ``total``).
        self.step_finite = torch.isfinite(total)
        # train/* and eval/* (and the progress bar's eval loss) are logged by LayerLossLogger.
        return total

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        optimizer_closure()  # training_step + backward
        ok = all_finite(self.step_finite, self.parameters())
        # No parameter and no Adam state changes on a non-finite step, as when the step was skipped.
        skip_nonfinite_step(optimizer, ok, ok.new_ones(len(self.seeds)), [])

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # The weights (and Adam state) after this step's update go with its evaluation.
        if self.last_eval is not None:
            self.candidates.keep(self.last_eval, self.seed_state)

    def on_train_end(self) -> None:
        if not self.records:  # no step was due for evaluation: the last state is the only candidate
            self.candidates.keep(self.evaluate(int(self.global_step)), self.seed_state)

    def configure_optimizers(self):
        groups = [{"params": [p for m in self.locations for p in m.parameters()], "lr": self.lr}]
        if self.widths is not None:
            groups.append({"params": [p for m in self.widths for p in m.parameters()], "lr": self.width_lr})
        self._optimizer = torch.optim.Adam(groups, fused=True)  # fused: skips a non-finite step on the device
        if self.optimizer_state is not None:
            # The previous level's chosen seed's Adam state, for every seed (the official carry-over).
            for i in range(len(self.seeds)):
                load_adam_state(self._optimizer, self.seed_parameters(i), self.optimizer_state, f"seed {i}")
        return self._optimizer

    def keep_vector(self, keep: Tensor) -> Tensor:
        """[N] bool: strokes written to the SVG (sampled keep-probability > threshold, never a dropped one)."""
        return (keep > self.keep_threshold) & self.keep_mask.cpu()
