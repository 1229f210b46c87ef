"""Offline probes (kNN, linear, multi-label mAP) and permutation chance bands."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from hcl_lightning.analysis.out_of_context import auroc
from hcl_lightning.analysis.probes import (
    average_precision,
    knn_accuracy,
    knn_top1,
    linear_probe_top1,
    multilabel_map,
    permutation_band,
)


def _blobs(rng: np.random.Generator, n: int, n_classes: int, dim: int, spread: float):
    centres = rng.normal(size=(n_classes, dim)) * 3
    y = rng.integers(n_classes, size=n)
    return centres[y] + spread * rng.normal(size=(n, dim)), y


def _knn_reference(train_x, train_y, test_x, k, t, n_classes):
    """Brute-force float64 weighted kNN (the InstDisc vote) on cosine similarity."""
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sim = b @ a.T
    preds = []
    for row in sim:
        idx = np.argsort(-row, kind="stable")[:k]
        votes = np.zeros(n_classes)
        np.add.at(votes, train_y[idx], np.exp(row[idx] / t))
        preds.append(votes.argmax())
    return np.array(preds)


def test_knn_matches_brute_force_reference() -> None:
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 300, 5, 16, spread=4.0)
    train_x, train_y, test_x, test_y = x[:200], y[:200], x[200:], y[200:]
    expected = (_knn_reference(train_x, train_y, test_x, 10, 0.1, 5) == test_y).mean()
    assert knn_top1(train_x, train_y, test_x, test_y, k=10, temperature=0.1) == pytest.approx(
        expected
    )
    assert 0.3 < expected < 1.0  # the data is neither trivial nor hopeless


# Bank of 7 points on the unit circle (b0 scaled by 5: the vote uses cosines) and their
# classes; the query q = (0.8, 0.6) has cosines 0.8, 1, 0.96, 0.6, -0.8, -0.96, 0 to them.
KNN_BANK = np.array(
    [[5.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0], [-0.6, -0.8], [0.6, -0.8]]
)
KNN_CLASSES = np.array([0, 1, 0, 2, 3, 4, 5])
KNN_QUERY = np.array([[0.8, 0.6]])


def test_knn_accuracy_by_hand() -> None:
    def acc(targets, k, t):
        queries = np.repeat(KNN_QUERY, len(targets), axis=0)
        return knn_accuracy(KNN_BANK, KNN_CLASSES, queries, np.array(targets), k, t)

    # k=3: neighbours b1 (cos 1, class 1), b2 (0.96, class 0), b0 (0.8, class 0).
    # t=0.1: class 1 gets e^10 = 22026, class 0 e^9.6 + e^8 = 17746: class 1 first.
    assert acc([0], k=3, t=0.1)["top1"] == 0.0
    # t=1: class 1 gets e^1 = 2.72, class 0 e^0.96 + e^0.8 = 4.84: class 0 first.
    assert acc([0], k=3, t=1.0)["top1"] == 1.0
    # k=7, t=1: every class votes; ranked 0 (4.84), 1 (2.72), 2 (e^0.6 = 1.82),
    # 5 (e^0 = 1), 3 (e^-0.8 = 0.45), 4 (e^-0.96 = 0.38): class 3 is 5th, class 4 6th.
    result = acc([0, 3, 4], k=7, t=1.0)
    assert result["top1"] == pytest.approx(1 / 3)
    assert result["top5"] == pytest.approx(2 / 3)
    assert knn_top1(KNN_BANK, KNN_CLASSES, KNN_QUERY, np.array([1]), 3, 0.1) == 1.0


def test_linear_probe_separates_and_fails_on_noise() -> None:
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 400, 4, 8, spread=0.5)
    assert linear_probe_top1(x[:300], y[:300], x[300:], y[300:]) > 0.97
    noise = rng.normal(size=(400, 8))
    assert linear_probe_top1(noise[:300], y[:300], noise[300:], y[300:]) < 0.45  # chance 0.25


def test_average_precision_matches_pr_curve_area() -> None:
    rng = np.random.default_rng(2)
    scores, labels = rng.normal(size=50), rng.integers(0, 2, size=50)
    order = np.argsort(-scores)
    tp = np.cumsum(labels[order])
    precision, recall = tp / np.arange(1, 51), tp / labels.sum()
    expected = np.sum(np.diff(np.concatenate([[0], recall])) * precision)
    assert average_precision(scores, labels) == pytest.approx(expected)
    assert average_precision(np.arange(4.0), np.array([0, 0, 1, 1])) == 1.0
    assert np.isnan(average_precision(np.arange(3.0), np.zeros(3)))


def test_multilabel_map_reads_present_classes() -> None:
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 2, size=(300, 5))
    x = np.concatenate(
        [targets * 2.0 + 0.3 * rng.normal(size=targets.shape), rng.normal(size=(300, 3))], axis=1
    )
    assert multilabel_map(x[:200], targets[:200], x[200:], targets[200:]) > 0.95
    noise = rng.normal(size=x.shape)
    chance = targets[200:].mean()
    assert multilabel_map(noise[:200], targets[:200], noise[200:], targets[200:]) < chance + 0.15


def test_permutation_band_brackets_chance_only() -> None:
    rng = np.random.default_rng(4)
    counts = rng.integers(1, 7, size=300)

    def rho(values, labels):
        return stats.spearmanr(labels, values).statistic

    low, high = permutation_band(rho, rng.normal(size=300), counts, n_permutations=300)
    assert low < 0 < high and high - low < 0.3
    correlated = counts + rng.normal(size=300)
    assert rho(correlated, counts) > high
    flags = rng.integers(0, 2, size=300)
    low, high = permutation_band(auroc, rng.normal(size=300), flags, n_permutations=300)
    assert low < 0.5 < high


def test_bad_input_names_the_problem() -> None:
    with pytest.raises(ValueError, match="train: 3 feature rows but 2 labels"):
        knn_top1(np.zeros((3, 2)), np.zeros(2, int), np.zeros((1, 2)), np.zeros(1, int))
    with pytest.raises(ValueError, match="test: 2 feature rows but 1 labels"):
        linear_probe_top1(np.zeros((3, 2)), np.zeros(3, int), np.zeros((2, 2)), np.zeros(1, int))
    with pytest.raises(ValueError, match="test: no samples"):
        multilabel_map(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="level"):
        permutation_band(auroc, np.zeros(3), np.zeros(3), level=1.5)
