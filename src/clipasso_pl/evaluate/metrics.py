"""Recognition metrics as pure functions of embeddings and labels.

Tie rule (used by every accuracy here): a sample is a top-k hit only when its true
column is among the k best *after every tie has been resolved against it*. Its
rank is ``1 + #(scores > true) + #(scores == true, other columns)``; a sketch that is
exactly as close to two photos (or two class prompts) is therefore a miss at top-1.
This is deterministic, independent of column order, and never credits a constant
(collapsed) encoder with chance-level hits it did not earn.

The top-k counting itself is torchmetrics' ``multiclass_accuracy``: the scores are
first turned into strict ranks with the rule above, so its ``topk`` sees no ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor

from ..choices import CI_KINDS



def _check_scores(scores: Tensor, target: Tensor) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be [M, C], got {tuple(scores.shape)}")
    if target.shape != scores.shape[:1]:
        raise ValueError(f"target must be [M] = [{scores.shape[0]}], got {tuple(target.shape)}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= scores.shape[1]):
        raise ValueError(f"target holds a column outside [0, {scores.shape[1]})")


def strict_ranks(scores: Tensor, target: Tensor) -> Tensor:
    """Rank of each sample's true column, ties counted against it.

    scores: Tensor  # [M, C] higher = more similar; -inf excludes a column
    target: Tensor  # [M] int, the true column of each row
    returns: Tensor  # [M] int64, 1 = best
    """
    _check_scores(scores, target)
    true = scores.gather(1, target[:, None].long())  # [M, 1]
    others = torch.ones_like(scores, dtype=torch.bool).scatter_(1, target[:, None].long(), False)
    return 1 + ((scores > true) | ((scores == true) & others)).sum(1)


def tie_broken_scores(scores: Tensor, target: Tensor) -> Tensor:
    """Scores without ties, the true column losing every tie (see the module doc).

    returns: Tensor  # [M, C] float, -(position in the resolved order); argmax/topk are unambiguous
    """
    _check_scores(scores, target)
    M, C = scores.shape
    is_true = torch.zeros(M, C, dtype=torch.long, device=scores.device).scatter_(1, target[:, None].long(), 1)
    # Two stable sorts: true column after its equals, then by score (descending); the
    # remaining ties between non-true columns keep their column order.
    first = torch.sort(is_true, dim=1, stable=True).indices
    order = first.gather(1, torch.sort(-scores.gather(1, first).double(), dim=1, stable=True).indices)
    position = torch.empty_like(order).scatter_(1, order, torch.arange(C, device=scores.device).expand(M, C))
    return -position.float()


def topk_hits(scores: Tensor, target: Tensor, k: int) -> Tensor:
    """Per-sample top-k hits with the strict tie rule. returns: Tensor  # [M] bool"""
    return strict_ranks(scores, target) <= k


def topk_accuracy(scores: Tensor, target: Tensor, k: int = 1) -> float:
    """Fraction of rows whose true column is among the k best (ties against it), via torchmetrics.

    scores: Tensor  # [M, C]; target: Tensor  # [M]. k larger than C counts as C (every row a hit).
    """
    from torchmetrics.functional.classification import multiclass_accuracy

    _check_scores(scores, target)
    if scores.shape[0] == 0:
        return math.nan
    C = scores.shape[1]
    k = max(1, min(int(k), C))
    if C == 1:
        return 1.0
    value = multiclass_accuracy(tie_broken_scores(scores, target), target.long(), num_classes=C, top_k=k,
                                average="micro", validate_args=False)
    return float(value)


def cosine_scores(queries: Tensor, keys: Tensor) -> Tensor:
    """Cosine similarity. queries: [M, D], keys: [K, D] -> [M, K] float32."""
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    return q @ k.T


def instance_scores(sketch_emb: Tensor, photo_emb: Tensor, sketch_labels: Tensor, photo_labels: Tensor) -> Tensor:
    """Sketch-to-photo cosine with the photos of other classes excluded (-inf).

    sketch_emb: [M, D]; photo_emb: [P, D]; sketch_labels: [M]; photo_labels: [P] -> [M, P]
    """
    scores = cosine_scores(sketch_emb, photo_emb)
    same_class = sketch_labels[:, None].to(photo_labels.device) == photo_labels[None, :]
    return scores.masked_fill(~same_class.to(scores.device), -math.inf)


def instance_hits(sketch_emb: Tensor, photo_emb: Tensor, sketch_labels: Tensor, photo_labels: Tensor,
                  own_photo: Tensor) -> Tensor:
    """Per-sketch hit: its own photo ranks first among the photos of its class (ties against it).

    own_photo: Tensor  # [M] index into the P photos. returns: Tensor  # [M] bool
    """
    if bool((photo_labels[own_photo] != sketch_labels).any()):
        raise ValueError("own_photo points at a photo of another class")
    return strict_ranks(instance_scores(sketch_emb, photo_emb, sketch_labels, photo_labels), own_photo) == 1


def instance_top1(sketch_emb: Tensor, photo_emb: Tensor, sketch_labels: Tensor, photo_labels: Tensor,
                  own_photo: Tensor) -> float:
    """Instance-level top-1 (the automatic counterpart of the paper's instance user study), via torchmetrics."""
    if bool((photo_labels[own_photo] != sketch_labels).any()):
        raise ValueError("own_photo points at a photo of another class")
    return topk_accuracy(instance_scores(sketch_emb, photo_emb, sketch_labels, photo_labels), own_photo, k=1)


# --- confidence intervals of a proportion ------------------------------------------------------


def wilson_interval(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of hits/n (good coverage at small n and near 0 or 1)."""
    if n <= 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact bounds at 0 and n (the formula gives them only up to rounding)
    return (0.0 if hits == 0 else max(0.0, centre - half)), (1.0 if hits == n else min(1.0, centre + half))


def clopper_pearson_interval(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (conservative) binomial interval from beta quantiles."""
    from scipy.stats import beta

    if n <= 0:
        return math.nan, math.nan
    alpha = 1 - level
    lo = 0.0 if hits == 0 else float(beta.ppf(alpha / 2, hits, n - hits + 1))
    hi = 1.0 if hits == n else float(beta.ppf(1 - alpha / 2, hits + 1, n - hits))
    return lo, hi


def bootstrap_interval(hits: Tensor, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the mean of per-sample hits [M] (resampling samples with replacement)."""
    hits = torch.as_tensor(hits, dtype=torch.float64).flatten()
    n = hits.numel()
    if n == 0:
        return math.nan, math.nan
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, n, (int(resamples), n), generator=g)
    means = hits[idx].mean(1)
    alpha = 1 - level
    q = torch.quantile(means, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64))
    return float(q[0]), float(q[1])


def confidence_interval(hits: Tensor, kind: str = "wilson", level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Interval of the accuracy of per-sample hits [M] bool: ``wilson``, ``clopper_pearson`` or ``bootstrap``."""
    hits = torch.as_tensor(hits).flatten().bool()
    if kind == "wilson":
        return wilson_interval(int(hits.sum()), hits.numel(), level)
    if kind == "clopper_pearson":
        return clopper_pearson_interval(int(hits.sum()), hits.numel(), level)
    if kind == "bootstrap":
        return bootstrap_interval(hits, level, resamples, seed)
    raise ValueError(f"unknown confidence interval kind {kind!r}: use one of {', '.join(CI_KINDS)}")


# --- one row of the results table --------------------------------------------------------------


@dataclass
class RecognitionScores:
    """Per-sample hits of one set of sketches (one level, the photos, or a random baseline)."""

    top1: Tensor      # [M] bool
    top3: Tensor      # [M] bool
    instance: Tensor  # [M] bool
    predicted: Tensor  # [M] int, top-1 class (ties resolved against the true class)
    accuracy: dict[str, float]  # top1, top3, instance_top1 as torchmetrics computes them

    @property
    def n(self) -> int:
        return int(self.top1.numel())


def recognition(image_emb: Tensor, labels: Tensor, class_emb: Tensor, photo_emb: Tensor, photo_labels: Tensor,
                own_photo: Tensor, top_k: int = 3) -> RecognitionScores:
    """Zero-shot class hits (top-1, top-k) and instance hits of M images.

    image_emb: [M, D] (sketches, photos or random strokes); labels: [M]; class_emb: [C, D] text
    embeddings of the class prompts; photo_emb: [P, D]; photo_labels: [P]; own_photo: [M].
    """
    zs = cosine_scores(image_emb, class_emb)
    ranks = strict_ranks(zs, labels)
    inst = instance_scores(image_emb, photo_emb, labels, photo_labels)
    return RecognitionScores(
        top1=ranks <= 1,
        top3=ranks <= min(top_k, zs.shape[1]),
        instance=instance_hits(image_emb, photo_emb, labels, photo_labels, own_photo),
        predicted=tie_broken_scores(zs, labels).argmax(1),
        accuracy={
            "top1": topk_accuracy(zs, labels, 1),
            "top3": topk_accuracy(zs, labels, top_k),
            "instance_top1": topk_accuracy(inst, own_photo, 1),
        },
    )
