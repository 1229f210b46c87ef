"""Shared test fixtures: deterministic seeds and points inside a Poincaré ball."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def ball_points(n: int, dim: int, c: float, max_fraction: float = 0.9, dtype=torch.float64):
    """``n`` random points of the ball of curvature ``c``, norms uniform in [0, max_fraction*R)."""
    directions = torch.nn.functional.normalize(torch.randn(n, dim, dtype=torch.float64), dim=1)
    radii = torch.rand(n, 1, dtype=torch.float64) * max_fraction / c**0.5
    return (directions * radii).to(dtype)
