"""What DDP ranks share and what each keeps of its own: rank 0's eval decisions, per-rank
augmentation draws, and how far the ranks' strokes ended apart.

Outside DDP (one process) every helper is the identity or reports one rank.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


def rank_generators(seeds: list[int], rank: int) -> list[torch.Generator]:
    """Rank ``rank``'s (> 0) own augmentation generator per seed.

    Under DDP every rank starts from the same strokes (same init draws) but draws its own
    augmentations, so N ranks act like one run with N times the augmentations.
    """
    return [torch.Generator().manual_seed(int(s) * 7919 + rank) for s in seeds]


def rank_agreement(module, points: Tensor) -> tuple[float, list[int]]:
    """(largest distance between any rank's ``points`` [S, N, P, 2] and rank 0's, the step each rank
    ended at) for a LightningModule ``module`` after its fit: (0.0, [its step]) on one rank.

    Under DDP the strokes must stay identical on every rank; this records how far apart they are.
    """
    if module.trainer.world_size <= 1:
        return 0.0, [int(module.global_step)]
    gathered = module.all_gather(points)  # [ranks, S, N, P, 2]
    divergence = float((gathered - gathered[0:1]).abs().max())
    # the step each rank ended at: the same everywhere when they stopped together
    steps = module.all_gather(torch.tensor(int(module.global_step), device=module.device)).tolist()
    return divergence, steps
