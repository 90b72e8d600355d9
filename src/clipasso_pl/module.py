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
from .strokes import Strokes, points_per_stroke


def skip_nonfinite_step(optimizer, ok: Tensor, active: Tensor, per_seed: list[Tensor]) -> None:
    """One fused Adam step that changes nothing when ``ok`` [] is False and never moves a stopped seed.

    A fused Adam (``fused=True``) skips its update on the device when its ``found_inf`` is nonzero
    (the mechanism AMP's grad scaler uses): no parameter, moment or step count changes, and no host
    read. A seed with ``active[s]`` False gets a zero gradient from the masked loss; zeroing its first
    moment too makes Adam's update for it exactly 0 (its momentum would keep moving it).
    per_seed: the parameters whose dim 0 is the seed.
    """
    adam = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper holds the torch optimizer
    if not all(group.get("fused") for group in adam.param_groups):
        raise ValueError("skip_nonfinite_step needs a fused Adam (fused=True)")
    with torch.no_grad():
        for p in per_seed:
            state = adam.state.get(p)
            if state and "exp_avg" in state:
                state["exp_avg"].mul_(active.view(-1, *[1] * (p.dim() - 1)))
    adam.found_inf = (~ok).to(torch.float32).reshape(())
    try:
        optimizer.step()
    finally:
        del adam.found_inf


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


def from_rank0(terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rank 0's values of ``terms`` (each [S]) on every rank (one broadcast); themselves outside DDP.

    Every decision taken from an eval (the best step, early stopping) then is rank 0's, taken
    identically on all ranks: on a GPU the ranks' eval losses can differ in the last bits, and a
    rank that stopped alone would leave the others waiting in the next all-reduce.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return terms
    names = list(terms)
    stacked = torch.stack([terms[k] for k in names]).contiguous()  # [M, S]
    dist.broadcast(stacked, src=0)
    return dict(zip(names, stacked.unbind(0)))


def adam_capturable(device: torch.device) -> bool:
    """Adam's ``capturable`` on ``device``: on CUDA its step counts live on the GPU, so a skipped step
    is undone without a host sync; a CPU Adam refuses it."""
    return torch.device(device).type == "cuda"


def optimizer_follows_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make a loaded Adam state fit ``device``: ``capturable`` by the rule of :func:`adam_capturable`,
    and the ``step`` counts on ``device`` when capturable, else on the host (as Adam keeps them).

    ``load_state_dict`` keeps the checkpoint's ``capturable``: a GPU checkpoint resumed on a CPU
    would fail at the first step, a CPU checkpoint resumed on a GPU would read its CPU step counts
    every step.
    """
    capturable = adam_capturable(device)
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = capturable
    for state in optimizer.state.values():
        step = state.get("step")
        if isinstance(step, Tensor):
            state["step"] = step.to(device if capturable else "cpu")


@dataclass
class EvalRecord:
    """The eval loss at one step, taken before that step's update.

    terms: per-seed values [S] of every named loss term (``loss`` is the total).
    points: the control points that were evaluated [S, M, P, 2] (M = strokes x num_stages).
    opacities: the trained opacities [S, M] (force_sparse), else None (all 1).
    count: how many of the M strokes were drawn (the strokes of the stages reached).
    sketches: their renders [S, 3, H, W] (reused by the snapshots: no second render).
    """

    step: int
    terms: dict[str, Tensor]
    points: Tensor
    active: Tensor | None = None
    opacities: Tensor | None = None
    count: int | None = None
    sketches: Tensor | None = None


class SketchModule(pl.LightningModule):
    """Optimises ``points: [S, M, P, 2]`` (pixels) for S seeds of one target.

    target: [3, H, W] in [0, 1]; clip: a ``ClipFeatures``; loss: a ``ClipassoLoss``;
    augment: a ``JointAugment``; renderer: a ``Renderer``; init: a ``StrokeInit``
    (used when no ``initial_points`` are given).

    Options of the official code: a stroke is ``num_segments`` segments of
    ``control_points_per_seg`` points (P = K (c - 1) + 1; the default, one cubic, is P = 4).
    ``force_sparse`` trains each stroke's opacity ``opacities: [S, M]`` with its own Adam
    group (``color_lr``), clamped to [0, 1] after every step; ``color_vars_threshold`` > 0
    then sets each opacity to 1 at or above it and to 0 below (the official line, which is
    commented out there, so 0 = off). ``num_stages`` > 1 trains ``strokes`` strokes for
    ``stage_steps`` steps, then adds ``strokes`` more and trains only those (a fresh Adam),
    and so on: M = strokes x num_stages, all start points drawn at once as the official does.

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
        super().__init__()
        if strokes < 1:
            raise ValueError("strokes must be >= 1")
        self.seeds = list(seeds)
        self.num_strokes = strokes
        self.half_width = half_width
        self.lr = lr
        self.eval_interval = eval_interval
        self.max_nonfinite = max_nonfinite
        self.num_segments = int(num_segments)
        self.control_points_per_seg = int(control_points_per_seg)
        self.force_sparse = bool(force_sparse)
        self.color_lr = float(color_lr)
        self.color_vars_threshold = float(color_vars_threshold)
        self.num_stages = int(num_stages)
        self.stage_steps = int(stage_steps)
        if self.num_stages > 1 and self.stage_steps < 1:
            raise ValueError("num_stages > 1 needs stage_steps >= 1")
        # Options of the official code (README "Options from the official code"):
        # lr_schedule(step) -> the points' lr (``lr_scheduler=true``); the CLIP text term.
        self.lr_schedule = lr_schedule
        self.text_guide = text_guide.requires_grad_(False).eval() if text_guide is not None else None
        self.text_weight = float(text_weight)
        # compile=step: a torch.compile backend name for step_terms (None: eager); compiled on first use.
        self.compile_step = compile_step
        self._compiled_step = None
        self.clip = clip.requires_grad_(False).eval()
        self.loss_fn = loss
        self.augment = augment
        self.renderer = renderer
        self.init = init
        self.height, self.width = target.shape[-2:]
        S = len(self.seeds)
        self.register_buffer("target", target[None].float())
        total = strokes * self.num_stages
        self.points = nn.Parameter(torch.zeros(S, total, points_per_stroke(self.num_segments, self.control_points_per_seg), 2))
        # Only a parameter with force_sparse, so the default run's state and optimiser are unchanged.
        self.opacities = nn.Parameter(torch.ones(S, total)) if self.force_sparse else None
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
        if initial_opacities is not None and self.opacities is not None:
            self.opacities.data.copy_(initial_opacities.expand_as(self.opacities).clamp(0, 1))
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
        total, num_points = self.points.shape[1:3]
        # All stages' starts in one draw without replacement, as the official code samples them.
        extra = {} if num_points == 4 else {"num_points": num_points}
        results = [self.init(self.target[0].cpu(), total, g, **extra) for g in self.generators]
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
    def stage(self, step: int | None = None) -> int:
        """The stage (0-based) that ``step`` (default: the current step) belongs to."""
        if self.num_stages == 1:
            return 0
        step = int(self.global_step) if step is None else int(step)
        return min(step // self.stage_steps, self.num_stages - 1)

    def visible_strokes(self, step: int | None = None) -> int:
        """How many strokes are drawn at ``step``: those of the stages reached so far."""
        return self.num_strokes * (self.stage(step) + 1)

    def strokes(self, points: Tensor | None = None, opacities: Tensor | None = None, count: int | None = None) -> Strokes:
        """The first ``count`` strokes (default: those drawn now) of the current (or given) points [S, M, P, 2];
        ``opacities`` [S, M] default to the trained ones with force_sparse when ``points`` is None, else 1."""
        if points is None:
            points = self.points
            if opacities is None and self.opacities is not None:
                opacities = self.opacities
        count = self.visible_strokes() if count is None else int(count)
        if count != points.shape[1]:
            points = points[:, :count]
            opacities = None if opacities is None else opacities[:, :count]
        if opacities is None:
            return Strokes.constant(points, self.half_width, control_points_per_seg=self.control_points_per_seg)
        return Strokes(points, points.new_full(points.shape[:2], self.half_width), opacities.to(points),
                       self.control_points_per_seg)

    def full_precision(self):
        """A float32 region even under a mixed-precision trainer: the renderer's coverage and log-sum
        compositing, the augmentation and the loss stay float32; only the CLIP runs in bf16/fp16."""
        return torch.autocast(self.device.type, enabled=False)

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
        with self.full_precision():
            sketch_views, target_views = self.augment.apply(sketches, self.target, views)
        with torch.no_grad():
            target_feats = self.clip(target_views)
        sketch_feats = self.clip(sketch_views)
        with self.full_precision():
            terms = self.loss_fn(sketch_feats, target_feats, len(self.seeds))
        if self.text_guide is not None:
            terms = self.add_text_term(terms, sketch_views, int(getattr(self.augment, "num_augs", 0)))
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
        """``step_terms``, compiled once with ``fullgraph=True`` when ``compile_step`` names a backend: on
        CUDA with inductor as CUDA graphs (``mode="reduce-overhead"``), which the sync-free step allows."""
        if not self.compile_step:
            return self.step_terms
        cuda_graphs = self.device.type == "cuda" and self.compile_step == "inductor"
        if self._compiled_step is None:
            self._compiled_step = torch.compile(self.step_terms, backend=self.compile_step, fullgraph=True,
                                                dynamic=False, mode="reduce-overhead" if cuda_graphs else None)
        if cuda_graphs:  # the previous step's graph outputs (already consumed) may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        return self._compiled_step

    def visible(self) -> tuple[Tensor, Tensor | None]:
        """The trained points [S, M', P, 2] and opacities [S, M'] (or None) of the strokes drawn now."""
        count = self.visible_strokes()
        points, opacities = self.points, self.opacities
        if count != points.shape[1]:
            points = points[:, :count]
            opacities = None if opacities is None else opacities[:, :count]
        return points, opacities

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
        sketch_feats = self.clip(sketches)
        with self.full_precision():
            terms = self.loss_fn(sketch_feats, self._target_eval_feats, len(self.seeds))
        if self.text_guide is not None:
            terms = self.add_text_term(terms, sketches, 0)
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
        if self.lr_schedule is not None:  # the points' group only, set before the step as officially
            optimizer.param_groups[0]["lr"] = float(self.lr_schedule(int(self.global_step)))
        optimizer_closure()  # training_step + backward
        loss_ok = self.step_finite if self.step_finite is not None else torch.ones((), dtype=torch.bool, device=self.device)
        trained = [p for p in (self.points, self.opacities) if p is not None]
        ok = loss_ok
        for p in trained:
            if p.grad is not None:
                ok = ok & torch.isfinite(p.grad).all()
        self.count_nonfinite(int(self.global_step), loss_ok, ok)
        if self.num_stages > 1:
            self.freeze_earlier_stages(optimizer)
        skip_nonfinite_step(optimizer, ok, self.active, [p for p in (self.points, self.opacities) if p is not None])
        with torch.no_grad():
            if self.opacities is not None:  # the official code clamps the stroke colour before every render
                self.opacities.clamp_(0.0, 1.0)
                if self.color_vars_threshold > 0:
                    self.opacities.copy_((self.opacities >= self.color_vars_threshold).to(self.opacities))

    def freeze_earlier_stages(self, optimizer) -> None:
        """In stage k only the strokes added in stage k move; its first step starts a fresh Adam."""
        step = int(self.global_step)
        stage = self.stage(step)
        first = stage * self.num_strokes
        if stage > 0 and step == stage * self.stage_steps:
            getattr(optimizer, "optimizer", optimizer).state.clear()
        for p in (self.points, self.opacities):
            if p is not None and p.grad is not None:
                p.grad[:, :first].zero_()  # with a fresh Adam, a zero gradient moves nothing (zero_: no Python scalar copied in)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        step = int(self.global_step) - 1  # the step just taken
        interval = self.eval_interval if self.eval_interval > 0 else 10
        if step % interval == 0:
            self.check_nonfinite()

    def configure_optimizers(self):
        capturable = adam_capturable(self.device)
        if self.opacities is not None:  # one Adam, two groups: the same updates as the official two Adams
            groups = [{"params": [self.points]}, {"params": [self.opacities], "lr": self.color_lr}]
            return torch.optim.Adam(groups, lr=self.lr, capturable=capturable, fused=True)
        return torch.optim.Adam([self.points], lr=self.lr, capturable=capturable, fused=True)

    def on_train_start(self) -> None:
        self.clip.eval()
        # After the optimiser state of a checkpoint loaded (Lightning restores it before this hook): a checkpoint
        # from another device brings that device's `capturable` and `step` placement.
        for optimizer in self.trainer.optimizers:
            optimizer_follows_device(optimizer, self.device)

    def on_train_end(self) -> None:
        self.check_nonfinite()
        # Under DDP the strokes must stay identical on every rank; record how far apart they are.
        self.rank_divergence = 0.0
        self.rank_steps = [int(self.global_step)]
        if self.trainer.world_size > 1:
            gathered = self.all_gather(self.points.detach())  # [ranks, S, N, 4, 2]
            self.rank_divergence = float((gathered - gathered[0:1]).abs().max())
            # the step each rank ended at: the same everywhere when they stopped together
            self.rank_steps = self.all_gather(torch.tensor(int(self.global_step), device=self.device)).tolist()
