"""Pairing statistics and the class-level ceiling against brute-force float64 references."""

from __future__ import annotations

import math

import geoopt
import numpy as np
import pytest
import torch

from hcl_lightning.hyperbolic.pairing import class_level_ceiling, pairing_statistics
from tests.helpers import ball_points

C, TAU = 0.05, 0.2


def reference(query, key, negatives, in_batch: bool) -> dict[str, float]:
    """Row-by-row float64 statistics from geoopt's distance."""
    ball = geoopt.PoincareBall(c=torch.tensor(C, dtype=torch.float64))
    q, k = query.double(), key.double()
    rows = {"loss": [], "top1": [], "closer": [], "corr": [], "pos": [], "neg": []}
    for i in range(len(q)):
        negs = torch.cat([k[:i], k[i + 1 :]]) if in_batch else negatives.double()
        d_pos = float(ball.dist(q[i], k[i]))
        d_neg = ball.dist(q[i][None], negs).numpy()
        logits = np.concatenate([[-d_pos], -d_neg]) / TAU
        rows["loss"].append(np.logaddexp.reduce(logits) - logits[0])
        rows["top1"].append(float(d_pos < d_neg.min()))
        rows["closer"].append(float((d_neg < d_pos).mean()))
        norms = (negs.norm(dim=1) * math.sqrt(C)).numpy()
        rows["corr"].append(np.corrcoef(d_neg, norms)[0, 1])
        rows["pos"].append(d_pos)
        rows["neg"].extend(d_neg.tolist())
    return {name: float(np.mean(values)) for name, values in rows.items()}


@pytest.mark.parametrize("in_batch", [False, True])
def test_pairing_statistics_match_a_float64_reference(in_batch: bool) -> None:
    torch.manual_seed(0)
    query, key = ball_points(12, 8, C, 0.9).float(), ball_points(12, 8, C, 0.6).float()
    key[:4] = query[:4] * 0.9  # some rows easy, so top-1 and closer share are not trivial
    negatives = None if in_batch else ball_points(50, 8, C, 0.95).float()
    stats = pairing_statistics(query, key, negatives, C, TAU)
    ref = reference(query, key, negatives, in_batch)
    k = 11 if in_batch else 50
    assert stats["chance_loss"] == pytest.approx(math.log(k + 1))
    assert stats["chance_top1"] == pytest.approx(1 / (k + 1))
    pairs = {
        "loss": "loss",
        "top1": "top1",
        "closer_share": "closer",
        "distance_norm_corr": "corr",
        "positive_distance": "pos",
        "negative_distance": "neg",
    }
    for name, ref_name in pairs.items():
        assert float(stats[name]) == pytest.approx(ref[ref_name], rel=1e-4, abs=1e-5), name
    assert 0 < float(stats["top1"]) < 1


def test_negative_norm_statistics_are_fractions_of_the_radius() -> None:
    negatives = torch.zeros(4, 3)
    negatives[:, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4]) / math.sqrt(C)
    stats = pairing_statistics(
        ball_points(2, 3, C, 0.5), ball_points(2, 3, C, 0.5), negatives, C, TAU
    )
    assert float(stats["negative_norm_mean"]) == pytest.approx(0.25, rel=1e-5)
    assert float(stats["negative_norm_std"]) == pytest.approx(
        np.std([0.1, 0.2, 0.3, 0.4]), rel=1e-4
    )


def brute_force_ceiling(scene_labels, key_labels, negative_labels):
    losses = []
    for i, label in enumerate(key_labels):
        if label < 0:
            continue
        scene = {v for v in scene_labels[i] if v >= 0}
        if negative_labels is None:
            negs = key_labels[:i] + key_labels[i + 1 :]
        else:
            negs = negative_labels
        losses.append(1 + sum(1 for v in negs if v >= 0 and v in scene))
    return np.mean(np.log(losses)), np.mean(1 / np.array(losses))


@pytest.mark.parametrize("in_batch", [False, True])
def test_class_level_ceiling_matches_counting_by_hand(in_batch: bool) -> None:
    rng = np.random.default_rng(0)
    key_labels = rng.integers(-1, 6, 10).tolist()
    scene_labels = []
    for label in key_labels:
        others = rng.integers(0, 6, rng.integers(0, 4)).tolist()  # repeats allowed
        row = ([label] if label >= 0 else []) + others
        scene_labels.append(row + [-1] * (6 - len(row)))
    negative_labels = None if in_batch else rng.integers(-1, 8, 40).tolist()
    ceiling = class_level_ceiling(
        torch.tensor(scene_labels),
        torch.tensor(key_labels),
        None if in_batch else torch.tensor(negative_labels),
    )
    loss, top1 = brute_force_ceiling(scene_labels, key_labels, negative_labels)
    assert float(ceiling["loss"]) == pytest.approx(loss, rel=1e-6)
    assert float(ceiling["top1"]) == pytest.approx(top1, rel=1e-6)
    assert float(ceiling["rows"]) == sum(v >= 0 for v in key_labels)


def test_class_level_ceiling_of_one_class_data_is_chance() -> None:
    """All objects of one class: a class-level matcher cannot beat ln(K + 1)."""
    ceiling = class_level_ceiling(
        torch.zeros(4, 3, dtype=torch.long),
        torch.zeros(4, dtype=torch.long),
        torch.zeros(63, dtype=torch.long),
    )
    assert float(ceiling["loss"]) == pytest.approx(math.log(64))
