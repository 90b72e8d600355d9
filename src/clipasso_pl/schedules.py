"""The learning-rate schedule of the official code's ``--lr_scheduler`` option.

The official optimiser calls ``get_epoch_lr(step)`` before every step: a half-cosine
from ``lr`` at the end of the warm-up down to ``lr_end`` at ``steps``, preceded by a
linear warm-up from ``lr_warmup_start`` over ``lr_warmup_steps`` steps::

    cosine(t) = lr_end + (lr - lr_end) * (cos(pi * (t - w) / (steps - w)) + 1) / 2
    lr(t)     = lr_warmup_start + t * (cosine(w) - lr_warmup_start) / w   for t < w
              = cosine(t)                                                  otherwise

(The official ``config.py`` never defines the warm-up and end values it reads, so
there ``--lr_scheduler 1`` stops with an AttributeError; our defaults w = 0 and
lr_end = 0 give the plain cosine decay to zero.)
"""

from __future__ import annotations

import math


def official_lr(step: int, lr: float, steps: int, lr_end: float = 0.0,
                lr_warmup_steps: int = 0, lr_warmup_start: float = 0.0) -> float:
    """The learning rate at optimisation step ``step`` (0-based) of a run of ``steps`` steps."""
    w = int(lr_warmup_steps)

    def cosine(t: float) -> float:
        return lr_end + (lr - lr_end) * (math.cos(math.pi * (t - w) / max(steps - w, 1)) + 1.0) * 0.5

    if step < w:
        return lr_warmup_start + step * (cosine(w) - lr_warmup_start) / w
    return cosine(step)
