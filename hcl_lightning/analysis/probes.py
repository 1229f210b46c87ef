"""Offline evaluation of frozen features: kNN, linear probes, mAP, permutation chance bands.

The reproduction benchmark (``benchmarks/reproduce.py``) judges a pretrained backbone
by what a small classifier can read from its frozen features, and judges a correlation
or an AUROC against the band it would fall in by chance. These functions work on
feature arrays, so they serve any encoder:

- :func:`knn_accuracy` (top-1/top-5) and :func:`knn_top1`: weighted kNN (lightly's
  :func:`~lightly.utils.benchmarking.knn_predict` on L2-normalised features, the
  protocol of InstDisc/MoCo);
- :func:`linear_probe_top1`: multinomial logistic regression (L-BFGS, L2 penalty) on
  standardised features;
- :func:`multilabel_map`: one-vs-rest logistic regression for multi-label targets
  (which classes an image shows), scored by mean average precision;
- :func:`permutation_band`: the central interval of a statistic under random
  permutations of the labels (what "chance" means for Spearman's ρ or an AUROC).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from lightly.utils.benchmarking import knn_predict
from scipy import optimize
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "average_precision",
    "knn_accuracy",
    "knn_top1",
    "linear_probe_top1",
    "multilabel_map",
    "permutation_band",
    "standardise",
    "topk_accuracy",
]


def _check_splits(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> None:
    """Each split has samples, and as many labels as feature rows."""
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if len(x) != len(y):
            raise ValueError(f"{name}: {len(x)} feature rows but {len(y)} labels")
        if len(x) == 0:
            raise ValueError(f"{name}: no samples")


def _class_count(train_labels: Tensor, test_y: np.ndarray) -> int:
    """Number of classes: one more than the largest label of either split."""
    return int(max(train_labels.max().item(), int(np.max(test_y))) + 1)


def topk_accuracy(
    ranked: Tensor, targets: Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}``: the fraction of rows whose target is among the
    first ``k`` classes of ``ranked`` (N, C), the classes of each row best first.

    ``k`` is capped at C: with fewer than 5 classes, top-5 is 1.
    """
    targets = torch.as_tensor(targets).to(ranked.device).view(-1, 1)
    return {
        f"top{k}": float((ranked[:, : min(k, ranked.shape[1])] == targets).any(1).float().mean())
        for k in ks
    }


def knn_accuracy(
    train_x: np.ndarray | Tensor,
    train_y: np.ndarray | Tensor,
    test_x: np.ndarray | Tensor,
    test_y: np.ndarray | Tensor,
    k: int = 20,
    temperature: float = 0.1,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of a weighted kNN classifier on cosine similarity.

    Each query's ``k`` most similar bank rows (cosine similarity ``s``) vote for their
    class with weight ``exp(s / temperature)``; classes are ranked by their summed
    votes (lightly's :func:`~lightly.utils.benchmarking.knn_predict`, as in InstDisc and
    MoCo's kNN monitor).

    Args:
        train_x: (N, F) features of the labelled bank.
        train_y: (N,) integer labels in ``[0, C)``.
        test_x: (M, F) features to classify.
        test_y: (M,) their labels.
        k: neighbours (capped at N).
        temperature: temperature of the ``exp(s / t)`` vote weights.

    Returns:
        ``{"top1", "top5"}`` as :func:`topk_accuracy` (top-5 is 1 with < 5 classes).
    """
    _check_splits(train_x, train_y, test_x, test_y)
    bank = F.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    queries = F.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(train_y, dtype=torch.long)
    num_classes = _class_count(labels, np.asarray(test_y))
    ranked = knn_predict(
        queries,
        bank.T.contiguous(),
        labels,
        num_classes,
        knn_k=min(k, len(bank)),
        knn_t=temperature,
    )
    return topk_accuracy(ranked, torch.as_tensor(test_y, dtype=torch.long))


def knn_top1(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    k: int = 20,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy of :func:`knn_accuracy`."""
    return knn_accuracy(train_x, train_y, test_x, test_y, k, temperature)["top1"]


def standardise(train_x: np.ndarray | Tensor, test_x: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
    """Both arrays as float64 tensors, standardised by ``train_x``'s per-feature mean and
    standard deviation (floored at 1e-6)."""
    train = torch.as_tensor(train_x, dtype=torch.float64)
    test = torch.as_tensor(test_x, dtype=torch.float64)
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def _fit_linear(
    x: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    n_out: int,
    weight_decay: float,
    max_iter: int,
) -> tuple[Tensor, Tensor]:
    """Weights and bias minimising ``loss_fn(x @ W + b) + wd/2 |W|^2`` (float64).

    SciPy's L-BFGS-B drives the search; torch gives the loss and its gradient.
    """
    n_weights = x.shape[1] * n_out

    def loss_and_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        params = torch.from_numpy(flat).requires_grad_(True)
        weight = params[:n_weights].view(x.shape[1], n_out)
        bias = params[n_weights:]
        loss = loss_fn(x @ weight + bias) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return float(loss), params.grad.numpy()

    start = np.zeros(n_weights + n_out)
    result = optimize.minimize(
        loss_and_grad, start, jac=True, method="L-BFGS-B", options={"maxiter": max_iter}
    )
    params = torch.from_numpy(result.x)
    return params[:n_weights].view(x.shape[1], n_out), params[n_weights:]


def linear_probe_top1(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> float:
    """Top-1 accuracy of a multinomial logistic regression on standardised features."""
    _check_splits(train_x, train_y, test_x, test_y)
    train, test = standardise(train_x, test_x)
    labels = torch.as_tensor(train_y, dtype=torch.long)
    n_classes = _class_count(labels, test_y)
    weight, bias = _fit_linear(
        train, lambda z: F.cross_entropy(z, labels), n_classes, weight_decay, max_iter
    )
    pred = (test @ weight + bias).argmax(1).numpy()
    return float((pred == np.asarray(test_y)).mean())


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of ``scores`` for the positives ``labels == 1`` (NaN if none).

    The non-interpolated form (scikit-learn's ``average_precision_score``): the mean of
    the precision at the rank of each positive, ties broken by position.
    """
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = labels[order]
    precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return float(precision_at_hit.mean())


def multilabel_map(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
) -> float:
    """Mean average precision of one-vs-rest logistic regressions (multi-label probe).

    Args:
        train_x: (N, F) training features.
        train_y: (N, C) 0/1 training targets (e.g. which object classes an image shows).
        test_x: (M, F) test features.
        test_y: (M, C) 0/1 test targets. Classes without a positive test sample are left
            out of the mean.
    """
    _check_splits(train_x, train_y, test_x, test_y)
    train, test = standardise(train_x, test_x)
    targets = torch.as_tensor(np.asarray(train_y), dtype=torch.float64)
    weight, bias = _fit_linear(
        train,
        lambda z: F.binary_cross_entropy_with_logits(z, targets),
        targets.shape[1],
        weight_decay,
        max_iter,
    )
    scores = (test @ weight + bias).numpy()
    test_y = np.asarray(test_y)
    aps = [average_precision(scores[:, j], test_y[:, j]) for j in range(test_y.shape[1])]
    aps = [ap for ap in aps if np.isfinite(ap)]
    return float(np.mean(aps)) if aps else float("nan")


def permutation_band(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    values: np.ndarray,
    labels: np.ndarray,
    n_permutations: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Central ``level`` interval of ``statistic(values, permuted labels)``.

    The band a statistic (Spearman's ρ, an AUROC...) falls in when ``labels`` carry no
    information about ``values``: a measured value outside it is unlikely by chance.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    null = np.array([statistic(values, rng.permutation(labels)) for _ in range(n_permutations)])
    null = null[np.isfinite(null)]
    if len(null) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(null, [tail, 100 - tail])
    return float(low), float(high)
