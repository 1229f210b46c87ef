"""Shared test fixtures and references: deterministic seeds, points inside a Poincaré
ball, MoCo's InfoNCE against a queue."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def ball_points(n: int, dim: int, c: float, max_fraction: float = 0.9, dtype=torch.float64):
    """``n`` random points of the ball of curvature ``c``, norms uniform in [0, max_fraction*R)."""
    directions = torch.nn.functional.normalize(torch.randn(n, dim, dtype=torch.float64), dim=1)
    radii = torch.rand(n, 1, dtype=torch.float64) * max_fraction / c**0.5
    return (directions * radii).to(dtype)


def info_nce(q, k, bank, tau):
    """Hand-written InfoNCE of queries ``q`` with positives ``k`` and negatives ``bank``."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ bank.T], dim=1) / tau
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()
