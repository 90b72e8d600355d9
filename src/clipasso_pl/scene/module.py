"""SceneSketchModule: one part (background or foreground) at one (fidelity, simplicity) level.

The trainable parameters are MLPs, one set per seed: the location MLP (always) and the
width MLP (simplicity levels). The control points are the location MLP's output on the
fixed initial points; the stroke half-widths are keep-probability x ``half_width``. The
renderer, CLIP taps and joint augmentation are the core's, batched over seeds as in
:class:`clipasso_pl.module.SketchModule`, and each seed keeps its own generator (its
augmentation and Gumbel draws), so seeds never mix.

Evaluation (plain pair, no augmentation, noiseless keep-probabilities) runs before the
update of every step ``t >= eval_start`` with ``(t - eval_start) % eval_interval == 0``,
and once more after the last step; each evaluation is a :class:`SceneRecord`. The MLP
weights of candidate records are kept (on the CPU) so the chosen step can warm-start
the next level: only each seed's best one when selecting by loss (fidelity), all of
them when selecting by z-scores (simplicity), since that choice needs the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ..strokes import Strokes
from .losses import SceneClipLoss, grad_norm, inside_canvas, ratio_loss, sparsity_loss
from .mlp import LocationMLP, WidthMLP, keep_probabilities, seeded


@dataclass
class SceneRecord:
    """One evaluation, before the update of ``step``.

    terms: per-seed [S] values: ``loss`` (the stage's total), ``clip``, ``conv/block<i>``,
        and in simplicity levels ``sparsity``, ``ratio``, ``kept`` (strokes kept).
    points: [S, N, 4, 2] pixels; keep: [S, N] noiseless keep-probabilities (all 1 in fidelity).
    """

    step: int
    terms: dict[str, Tensor]
    points: Tensor
    keep: Tensor


def select_lowest(records: list[SceneRecord], key: str = "loss") -> tuple[int, int]:
    """(seed index, record index) of the lowest ``key`` over every seed and evaluation."""
    values = torch.stack([r.terms[key] for r in records])  # [R, S]
    flat = int(torch.argmin(values))
    return flat % values.shape[1], flat // values.shape[1]


def select_zscore(records: list[SceneRecord], keys: tuple[str, ...] = ("clip", "ratio")) -> tuple[int, int]:
    """(seed index, record index) with the lowest sum of z-normalised ``keys``.

    Each key is standardised over all (evaluation, seed) values, so losses of different
    scales weigh the same; a key that never varies contributes 0.
    """
    total = None
    for key in keys:
        v = torch.stack([r.terms[key] for r in records]).double()  # [R, S]
        std = v.std(unbiased=False)
        z = (v - v.mean()) / std if std > 0 else torch.zeros_like(v)
        total = z if total is None else total + z
    flat = int(torch.argmin(total))
    return flat % total.shape[1], flat // total.shape[1]


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class SceneSketchModule(pl.LightningModule):
    """Optimises per-seed MLPs that place (and, with ``simplify``, thin out) N strokes.

    target: [3, H, W] in [0, 1]; clip: a ``ClipFeatures`` (ViT); loss: a :class:`SceneClipLoss`;
    augment: a ``JointAugment``; renderer: a ``Renderer``.
    initial_points: [N, 4, 2] or [S, N, 4, 2] pixels, the location MLP's fixed input.
    location_states / width_states: a state dict (shared by all seeds) or a list of them, to
        warm-start from a previous level; None draws fresh weights from the seed.
    keep_mask: [N] bool, strokes a previous level dropped stay dropped (nested levels).
    balance: the factor of the layer term (objects), None to measure it at the first step.
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
        eval_start: int = 0,
        eval_interval: int = 50,
        simplify: bool = False,
        ratio: float = 1.0,
        temperature: float = 0.2,
        keep_threshold: float = 0.5,
        keep_mask: Tensor | None = None,
        balance: float | None = None,
        location_states: dict | list[dict] | None = None,
        width_states: dict | list[dict] | None = None,
        hidden: int = 1000,
        offset_scale: float = 0.1,
        stream_offset: int = 0,
        select: str = "lowest",
    ):
        super().__init__()
        if select not in ("lowest", "zscore"):
            raise ValueError(f"select must be 'lowest' or 'zscore', got {select!r}")
        self.seeds = list(seeds)
        S = len(self.seeds)
        if initial_points.ndim == 3:
            initial_points = initial_points.expand(S, -1, -1, -1)
        if initial_points.shape[0] != S or initial_points.shape[-2:] != (4, 2):
            raise ValueError(f"initial_points must be [N, 4, 2] or [{S}, N, 4, 2], got {tuple(initial_points.shape)}")
        self.num_strokes = N = initial_points.shape[1]
        self.height, self.width = target.shape[-2:]
        self.half_width = float(half_width)
        self.lr = lr
        self.eval_start, self.eval_interval = int(eval_start), int(eval_interval)
        self.simplify = simplify
        self.ratio = float(ratio)
        self.temperature = float(temperature)
        self.keep_threshold = float(keep_threshold)
        self.select = select
        self.clip = clip.requires_grad_(False).eval()
        self.loss_fn = loss
        self.augment = augment
        self.renderer = renderer
        self.register_buffer("target", target[None].float())
        side = torch.tensor([float(self.width), float(self.height)])
        self.register_buffer("side", side)
        self.register_buffer("initial", (initial_points.float() / side).reshape(S, N * 8).clone())
        self.register_buffer("width_input", torch.ones(N))
        mask = torch.ones(N, dtype=torch.bool) if keep_mask is None else keep_mask.bool().clone()
        self.register_buffer("keep_mask", mask)
        self.register_buffer("balance", torch.tensor(float("nan") if balance is None else float(balance)))
        self.locations = nn.ModuleList(seeded(lambda: LocationMLP(N, hidden, offset_scale), s) for s in self.seeds)
        self._load(self.locations, location_states)
        self.widths = None
        if simplify:
            self.widths = nn.ModuleList(seeded(lambda: WidthMLP(N, hidden), s + 1) for s in self.seeds)
            self._load(self.widths, width_states)
        self.generators = [torch.Generator().manual_seed(int(s) + int(stream_offset)) for s in self.seeds]
        self.records: list[SceneRecord] = []
        self.states: dict[tuple[int, int], dict] = {}  # (seed index, step) -> MLP weights
        self._best_lowest: list[float] = [float("inf")] * S
        self.last_train: dict[str, Tensor] | None = None
        self.last_eval: SceneRecord | None = None
        self._target_feats: dict[str, Tensor] | None = None
        self.strict_loading = False

    @staticmethod
    def _load(mlps: nn.ModuleList, states) -> None:
        if states is None:
            return
        states = states if isinstance(states, (list, tuple)) else [states] * len(mlps)
        for mlp, state in zip(mlps, states):
            mlp.load_state_dict(state)

    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        return {k: v for k, v in sd.items() if not k.startswith("clip.")}

    # ------------------------------------------------------------- strokes
    def current_points(self) -> Tensor:
        """Control points [S, N, 4, 2] pixels (differentiable in the location MLPs)."""
        out = torch.stack([mlp(x) for mlp, x in zip(self.locations, self.initial)])
        return out.view(len(self.seeds), self.num_strokes, 4, 2) * self.side

    @property
    def points(self) -> Tensor:
        """The current control points [S, N, 4, 2], detached (what the core callbacks read)."""
        with torch.no_grad():
            return self.current_points()

    def keep(self, noise: bool = False) -> Tensor:
        """Keep-probabilities [S, N]: Gumbel-softmax samples (noise) or the noiseless ones; 1 in fidelity."""
        if not self.simplify:
            return self.keep_mask.float().expand(len(self.seeds), -1)
        q = torch.stack([mlp(self.width_input) for mlp in self.widths])
        p = torch.stack([keep_probabilities(qi, self.temperature, g, noise) for qi, g in zip(q, self.generators)])
        return p * self.keep_mask

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
        """Sketch pixels [S, 3, H, W]."""
        return self.renderer.render(self.strokes(points, keep), self.height, self.width)

    # ---------------------------------------------------------------- loss
    def _terms(self, sketch_feats, target_feats, points: Tensor, keep: Tensor) -> dict[str, Tensor]:
        terms = self.loss_fn(sketch_feats, target_feats, len(self.seeds), self.balance)
        if self.simplify:
            terms["sparsity"] = sparsity_loss(keep, inside_canvas(points, self.height, self.width))
            terms["ratio"] = ratio_loss(terms["sparsity"], terms["clip"], self.ratio)
            terms["loss"] = terms["clip"] + terms["ratio"]
        else:
            terms["loss"] = terms["clip"]
        return terms

    def _measure_balance(self, sketch_feats, target_feats) -> None:
        """GradNorm-style: scale the layer term so its gradient on the MLPs matches the anchor's."""
        raw = self.loss_fn(sketch_feats, target_feats, len(self.seeds), 1.0)
        params = [p for p in self.parameters() if p.requires_grad]
        anchor = grad_norm(raw[f"conv/{self.loss_fn.anchor_key}"].sum(), params)
        layer = grad_norm(raw[f"conv/{self.loss_fn.layer_key}"].sum(), params)
        b = anchor / layer
        self.balance.fill_(float(b) if torch.isfinite(b) and b > 0 else 1.0)

    def eval_due(self, step: int) -> bool:
        return self.eval_interval > 0 and step >= self.eval_start and (step - self.eval_start) % self.eval_interval == 0

    @torch.no_grad()
    def evaluate(self, step: int) -> SceneRecord:
        """Loss on the plain (sketch, target) pair of every seed, noiseless keep-probabilities."""
        S = len(self.seeds)
        if self._target_feats is None:
            self._target_feats = {k: v.expand(S, *v.shape[1:]) for k, v in self.clip(self.target).items()}
        points, keep = self.current_points(), self.keep(noise=False)
        if torch.isnan(self.balance) and self.loss_fn.balanced:
            self.balance.fill_(1.0)  # only reached when evaluating before any training step
        terms = self._terms(self.clip(self.render(points, keep)), self._target_feats, points, keep)
        terms["kept"] = (keep >= self.keep_threshold).sum(-1).float()
        record = SceneRecord(step, {k: v.detach().cpu() for k, v in terms.items()}, points.cpu(), keep.cpu())
        self.records.append(record)
        self._keep_states(record)
        return record

    def _keep_states(self, record: SceneRecord) -> None:
        for i in range(len(self.seeds)):
            if self.select == "lowest":
                value = float(record.terms["loss"][i])
                if not value < self._best_lowest[i]:
                    continue
                self._best_lowest[i] = value
                for key in [k for k in self.states if k[0] == i]:
                    del self.states[key]
            self.states[(i, record.step)] = {
                "location": _cpu_state(self.locations[i]),
                "width": _cpu_state(self.widths[i]) if self.widths is not None else None,
            }

    def best(self) -> tuple[int, SceneRecord, dict]:
        """(seed index, record, MLP weights) of the chosen evaluation."""
        pick = select_lowest if self.select == "lowest" else select_zscore
        seed_index, record_index = pick(self.records)
        record = self.records[record_index]
        return seed_index, record, self.states[(seed_index, record.step)]

    # ------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        step = int(self.global_step)
        self.last_eval = self.evaluate(step) if self.eval_due(step) else None
        points = self.current_points()
        keep = self.keep(noise=True)
        sketches = self.render(points, keep)
        sketch_views, target_views = self.augment(sketches, self.target, self.generators)
        with torch.no_grad():
            target_feats = self.clip(target_views)
        sketch_feats = self.clip(sketch_views)
        if self.loss_fn.balanced and torch.isnan(self.balance):
            self._measure_balance(sketch_feats, target_feats)
        terms = self._terms(sketch_feats, target_feats, points, keep)
        self.last_train = {k: v.detach() for k, v in terms.items()}
        total = terms["loss"].sum()  # summed: seed k's gradient does not depend on the other seeds
        if not torch.isfinite(total):
            return None
        # train/* and eval/* (and the progress bar's eval loss) are logged by LayerLossLogger.
        return total

    def on_train_end(self) -> None:
        # The state after the last update is a candidate too.
        if not self.records or self.records[-1].step != int(self.global_step):
            self.evaluate(int(self.global_step))

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)

    def on_train_start(self) -> None:
        self.clip.eval()

    def keep_vector(self, keep: Tensor) -> Tensor:
        """[N] bool: strokes kept in the output (keep-probability >= threshold, never a dropped one)."""
        return (keep >= self.keep_threshold) & self.keep_mask.cpu()

