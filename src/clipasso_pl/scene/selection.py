"""Which evaluation of a scene stage is kept: the records, the selection rules, the candidates' weights.

Fidelity levels select by the lowest eval loss over every seed and evaluation; simplicity levels
by z-scores (:func:`select_zscore`), which needs the whole run. After each evaluated step the
MLP weights (and, in simplicity levels, the Adam state) of the records that may still be chosen
are kept on the CPU (:class:`CandidateStates`), so the chosen step can warm-start the next level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

SELECTIONS = ("lowest", "zscore")


@dataclass
class SceneRecord:
    """One evaluation, of the sketch of training step ``step``.

    terms: per-seed [S] values: ``loss`` (the stage's weighted total), ``clip`` (the unweighted
        sum of the CLIP block terms), ``conv/block<i>`` (unweighted), ``weight/<term>`` (the
        gradnorm weights used), and in simplicity levels ``sparsity``, ``ratio``, ``kept``.
    points: [S, N, 4, 2] pixels; keep: [S, N] the step's sampled keep-probabilities (1 in fidelity).
    The scene trains no opacities, draws every stroke and keeps no renders: ``opacities``,
    ``count`` and ``sketches`` are None (the members of :class:`clipasso_pl.training.contract.Evaluation`).
    """

    step: int
    terms: dict[str, Tensor]
    points: Tensor
    keep: Tensor
    opacities: Tensor | None = None
    count: int | None = None
    sketches: Tensor | None = None


def select_lowest(records: list[SceneRecord], key: str = "loss") -> tuple[int, int]:
    """(seed index, record index) of the lowest ``key`` over every seed and evaluation."""
    values = torch.stack([r.terms[key] for r in records])  # [R, S]
    flat = int(torch.argmin(values))
    return flat % values.shape[1], flat // values.shape[1]


def zscore_table(records: list[SceneRecord], keys: tuple[str, ...] | list[str]) -> Tensor:
    """[R, S] the summed z-scores of ``keys``, each standardised over one seed's evaluations.

    As the official code does per run (one run = one seed): a key whose values never vary
    within a seed contributes 0 there (the official code would divide by zero).
    """
    total = None
    for key in keys:
        v = torch.stack([r.terms[key] for r in records]).double()  # [R, S]
        mean, std = v.mean(0, keepdim=True), v.std(0, unbiased=False, keepdim=True)
        z = torch.where(std > 0, (v - mean) / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(v))
        total = z if total is None else total + z
    return total


def select_zscore(records: list[SceneRecord], keys: tuple[str, ...] | list[str]) -> tuple[int, int]:
    """(seed index, record index): each seed's best evaluation is its lowest summed z-score of
    ``keys`` (the unweighted CLIP block terms and the sparsity); the winning seed is the one
    whose best summed z-score is lowest."""
    table = zscore_table(records, keys)  # [R, S]
    best_value, best_index = table.min(0)  # [S]
    seed = int(torch.argmin(best_value))
    return seed, int(best_index[seed])


def cpu_state(module: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of ``module``'s state dict."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class CandidateStates:
    """The per-seed states (MLP weights, Adam state) after the evaluated steps that may be chosen.

    ``select="lowest"`` keeps only each seed's best so far (by eval loss); ``"zscore"`` keeps every
    evaluated step, since the choice needs the whole run.
    """

    def __init__(self, num_seeds: int, select: str):
        if select not in SELECTIONS:
            raise ValueError(f"select must be 'lowest' or 'zscore', got {select!r}")
        self.select = select
        self.states: dict[tuple[int, int], dict] = {}  # (seed index, step) -> MLP weights (+ Adam state)
        self._best_lowest: list[float] = [float("inf")] * num_seeds

    def keep(self, record: SceneRecord, seed_state: Callable[[int], dict]) -> None:
        """Keep ``seed_state(i)`` (called only when kept) for each seed i of ``record`` that may be chosen."""
        for i in range(len(self._best_lowest)):
            if self.select == "lowest":
                value = float(record.terms["loss"][i])
                if not value < self._best_lowest[i]:
                    continue
                self._best_lowest[i] = value
                for key in [k for k in self.states if k[0] == i]:
                    del self.states[key]
            self.states[(i, record.step)] = seed_state(i)

    def choose(self, records: list[SceneRecord], keys: list[str]) -> tuple[int, SceneRecord, dict]:
        """(seed index, record, its kept state) of the chosen evaluation; ``keys``: the terms the
        z-score selection standardises."""
        if self.select == "lowest":
            seed_index, record_index = select_lowest(records)
        else:
            seed_index, record_index = select_zscore(records, keys)
        record = records[record_index]
        return seed_index, record, self.states[(seed_index, record.step)]
