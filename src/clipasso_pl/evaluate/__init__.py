"""Recognition-rate evaluation: sketch a photo set at several stroke counts, classify the sketches
zero-shot with CLIP (top-1/top-3), find their own photo among the photos of their class (instance
top-1), with confidence intervals, a photo ceiling and a random-stroke floor.

The metrics are pure functions of embeddings and labels (``metrics``); ``runner.run_evaluate`` is the
body of ``clipasso-pl evaluate``.
"""

from .metrics import (
    CI_KINDS,
    RecognitionScores,
    bootstrap_interval,
    clopper_pearson_interval,
    confidence_interval,
    cosine_scores,
    instance_hits,
    instance_scores,
    instance_top1,
    recognition,
    strict_ranks,
    tie_broken_scores,
    topk_accuracy,
    topk_hits,
    wilson_interval,
)

__all__ = [
    "CI_KINDS",
    "RecognitionScores",
    "bootstrap_interval",
    "clopper_pearson_interval",
    "confidence_interval",
    "cosine_scores",
    "instance_hits",
    "instance_scores",
    "instance_top1",
    "recognition",
    "strict_ranks",
    "tie_broken_scores",
    "topk_accuracy",
    "topk_hits",
    "wilson_interval",
]
