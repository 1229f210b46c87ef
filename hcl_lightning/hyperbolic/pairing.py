"""What tells a learning scene-object objective from a stuck one: pairing statistics.

Pure functions of the ball points of one training step (scenes = queries, their
objects = positives) and the negatives they were scored against. A stuck objective
shows a loss near ``chance_loss = ln(K + 1)``, a positive distance no smaller than the
negative one, a ``closer_share`` near 1/2 and, when the norm spread of the negatives
dominates their directions, a distance-to-key-norm correlation far from 0. The
class-level ceiling says how far a matcher that knows only *which classes* a scene
holds can go on the current data: a loss below it means the pairing is learnt beyond
class.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hcl_lightning.hyperbolic.geometry import (
    ball_norm_fraction,
    poincare_distance,
    poincare_pairwise_distance,
)

__all__ = ["class_level_ceiling", "pairing_statistics"]


def _row_correlation(x: Tensor, y: Tensor, valid: Tensor) -> Tensor:
    """Mean over rows of the Pearson correlation of ``x[i]`` and ``y[i]`` on ``valid``."""
    weight = valid.to(x.dtype)
    count = weight.sum(dim=1, keepdim=True).clamp_min(1)
    x_centered = (x - (x * weight).sum(1, keepdim=True) / count) * weight
    y_centered = (y - (y * weight).sum(1, keepdim=True) / count) * weight
    covariance = (x_centered * y_centered).sum(1)
    scale = (x_centered.square().sum(1) * y_centered.square().sum(1)).sqrt()
    return (covariance / scale.clamp_min(torch.finfo(x.dtype).tiny)).mean()


def pairing_statistics(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None,
    curvature: float | Tensor,
    temperature: float,
) -> dict[str, Tensor]:
    """Statistics of the scene-object pairing of one step (HCL, Ge et al. 2023, Eq. 4).

    Args:
        query: (N, D) scene points in the ball of curvature ``c``.
        key: (N, D) their objects' points (row ``i`` is the positive of query ``i``).
        negatives: (K, D) the negatives of every row (a queue of past keys), or
            ``None`` for in-batch negatives (the other rows of ``key``, ``K = N - 1``).
        curvature: ``c``.
        temperature: τ of the logits ``-d/τ``.

    Returns:
        Scalars (float32 tensors): ``loss`` (the InfoNCE of these logits),
        ``chance_loss`` = ln(K + 1) and ``chance_top1`` = 1/(K + 1),
        ``top1`` (share of rows whose positive is nearer than every negative),
        ``positive_distance`` / ``negative_distance`` (means), ``closer_share`` (mean
        share of negatives nearer to a scene than its own object),
        ``distance_norm_corr`` (mean over rows of the correlation between the distance
        to a negative and that negative's ball norm), ``negative_norm_mean`` /
        ``negative_norm_std`` (ball norms of the negatives as fractions of the radius).
    """
    with torch.no_grad():
        query, key = query.float(), key.float()
        positive = poincare_distance(query, key, curvature)
        if negatives is None:
            n = key.shape[0]
            if n < 2:
                raise ValueError("in-batch pairing statistics need at least 2 rows")
            negatives = key
            valid = ~torch.eye(n, dtype=torch.bool, device=key.device)
        else:
            negatives = negatives.float()
            valid = torch.ones(
                query.shape[0], negatives.shape[0], dtype=torch.bool, device=key.device
            )
        distance = poincare_pairwise_distance(query, negatives, curvature)
        k = int(valid[0].sum())
        logits = torch.cat([-positive[:, None], (-distance).masked_fill(~valid, -math.inf)], 1)
        logits = logits / temperature
        loss = (logits.logsumexp(dim=1) - logits[:, 0]).mean()
        far = distance.masked_fill(~valid, math.inf)
        norms = ball_norm_fraction(negatives, curvature)
        return {
            "loss": loss,
            "chance_loss": torch.tensor(math.log(k + 1)),
            "chance_top1": torch.tensor(1.0 / (k + 1)),
            "top1": (positive < far.amin(dim=1)).float().mean(),
            "positive_distance": positive.mean(),
            "negative_distance": distance[valid].mean(),
            "closer_share": ((far < positive[:, None]).sum(1).float() / k).mean(),
            "distance_norm_corr": _row_correlation(distance, norms.expand_as(distance), valid),
            "negative_norm_mean": norms.mean(),
            "negative_norm_std": norms.std(unbiased=False),
        }


def class_level_ceiling(
    scene_labels: Tensor, key_labels: Tensor, negative_labels: Tensor | None
) -> dict[str, Tensor]:
    """The best InfoNCE a scene-object matcher that sees only classes can reach.

    Such a matcher gives one logit to every candidate object whose class occurs in
    the scene (the positive always does) and minus infinity to the rest; its loss on
    row ``i`` is ``ln(m_i)`` and its top-1 (ties broken at random) ``1/m_i``, with
    ``m_i`` the candidates (positive + negatives) of a class in the scene. Negatives
    of unknown class (-1, e.g. the queue's initial rows) count as no match.

    Args:
        scene_labels: (N, L) class ids of each scene's boxes, -1 padded.
        key_labels: (N,) class of each positive object; rows with -1 are left out.
        negative_labels: (K,) classes of the queue's keys, or ``None`` for in-batch
            negatives (the other rows of ``key_labels``).

    Returns:
        ``{"loss": mean ln(m_i), "top1": mean 1/m_i, "rows": rows used}`` (float32
        scalars); loss and top1 are NaN when no row has a known class.
    """
    known = key_labels >= 0
    candidates = key_labels if negative_labels is None else negative_labels
    n_classes = int(max(scene_labels.max(), candidates.max(), key_labels.max(), 0)) + 1
    counts = torch.bincount(candidates[candidates >= 0], minlength=n_classes).float()
    present = torch.zeros(len(key_labels), n_classes + 1, device=key_labels.device)
    present.scatter_(1, scene_labels.long().where(scene_labels >= 0, n_classes), 1.0)
    present = present[:, :n_classes]
    matches = 1 + present @ counts
    if negative_labels is None:  # a row's own key is its positive, not a negative
        own = present.gather(1, key_labels.clamp_min(0)[:, None]).squeeze(1)
        matches -= own * known
    matches = matches[known]
    return {
        "loss": matches.log().mean(),
        "top1": matches.reciprocal().mean(),
        "rows": torch.tensor(float(known.sum())),
    }
