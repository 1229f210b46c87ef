"""Poincaré distances against mpmath, geoopt and precision traps."""

from __future__ import annotations

import geoopt
import mpmath
import pytest
import torch

from hcl_lightning.hyperbolic.geometry import poincare_distance, poincare_pairwise_distance
from tests.helpers import ball_points


def mp_distance(x, y, c: float) -> float:
    """High-precision (50 digits) Poincaré distance from float64 inputs taken as exact."""
    with mpmath.workdps(50):
        return _mp_distance(x, y, c)


def _mp_distance(x, y, c: float) -> float:
    c = mpmath.mpf(c)
    xs = [mpmath.mpf(float(v)) for v in x]
    ys = [mpmath.mpf(float(v)) for v in y]
    sq = sum((a - b) ** 2 for a, b in zip(xs, ys, strict=True))
    nx = sum(a * a for a in xs)
    ny = sum(b * b for b in ys)
    t = 2 * c * sq / ((1 - c * nx) * (1 - c * ny))
    return float(mpmath.acosh(1 + t) / mpmath.sqrt(c))


def mp_matrix(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    return torch.tensor([[mp_distance(a, b, c) for b in y] for a in x], dtype=torch.float64)


def hard_points(c: float, n: int = 12, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Random points up to (1 - 1e-5) of the radius, plus near-duplicates of each."""
    x = ball_points(n, dim, c, max_fraction=1 - 1e-5)
    x[:3] = torch.nn.functional.normalize(x[:3], dim=1) * (1 - 1e-5) / c**0.5
    near = x + 1e-7 * torch.randn_like(x) / c**0.5
    near = torch.nn.functional.normalize(near, dim=1) * near.norm(dim=1, keepdim=True).clamp(
        max=(1 - 1e-5) / c**0.5
    )
    return x, torch.cat([ball_points(n, dim, c, max_fraction=1 - 1e-5), near])


@pytest.mark.parametrize("c", [0.05, 1.0, 3.0])
def test_pairwise_matches_mpmath_in_float64(c: float) -> None:
    x, y = hard_points(c)
    ours = poincare_pairwise_distance(x, y, c)
    reference = mp_matrix(x, y, c)
    relative = ((ours - reference).abs() / reference.clamp_min(1e-300)).max()
    assert relative < 1e-8


@pytest.mark.parametrize("c", [0.05, 1.0])
def test_rowwise_matches_mpmath_in_float64(c: float) -> None:
    x, y = hard_points(c)
    y = y[x.shape[0] :]  # the near-duplicate of each row
    ours = poincare_distance(x, y, c)
    reference = torch.tensor(
        [mp_distance(a, b, c) for a, b in zip(x, y, strict=True)], dtype=torch.float64
    )
    assert ((ours - reference).abs() / reference).max() < 1e-8


def test_pairwise_agrees_with_geoopt_away_from_boundary() -> None:
    c = 0.05
    ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))
    x, y = ball_points(20, 16, c, 0.9), ball_points(30, 16, c, 0.9)
    expected = ball.dist(x.unsqueeze(1), y.unsqueeze(0))
    torch.testing.assert_close(poincare_pairwise_distance(x, y, c), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("c", [0.05, 1.0])
def test_float32_at_least_as_accurate_as_geoopt(c: float) -> None:
    x64 = ball_points(64, 32, c, 0.99)
    y64 = torch.cat([ball_points(64, 32, c, 0.99), x64 + 1e-4 * torch.randn_like(x64)])
    truth = poincare_pairwise_distance(x64, y64, c)
    ball = geoopt.PoincareBall(c=c)
    x32, y32 = x64.float(), y64.float()
    geoopt_error = (ball.dist(x32.unsqueeze(1), y32.unsqueeze(0)).double() - truth).abs().max()
    our_error = (poincare_pairwise_distance(x32, y32, c).double() - truth).abs().max()
    assert our_error <= geoopt_error
    near_pairs = torch.arange(64)
    our_near = poincare_pairwise_distance(x32, y32, c)[near_pairs, near_pairs + 64].double()
    assert (our_near - truth[near_pairs, near_pairs + 64]).abs().max() < 5e-3


def test_near_duplicate_cancellation_is_repaired_in_float32() -> None:
    c = 0.05
    x = ball_points(16, 128, c, 0.95)
    y = x + 1e-3 * torch.randn_like(x)
    truth = poincare_distance(x, y, c)
    ours = poincare_pairwise_distance(x.float(), y.float(), c).diagonal().double()
    # Plain a + b - 2ab in float32 errs by ~5e-2 here; the repaired entries do not.
    assert ((ours - truth).abs() / truth).max() < 1e-3


def test_rows_at_boundary_are_finite_with_finite_gradients() -> None:
    c = 0.05
    for dtype in (torch.float32, torch.float64):
        x = torch.nn.functional.normalize(torch.randn(8, 16, dtype=dtype), dim=1)
        x = (x * (1 / c**0.5 - 1e-6)).requires_grad_()
        y = torch.cat([x.detach(), ball_points(8, 16, c, 0.5, dtype=dtype)])
        d = poincare_pairwise_distance(x, y, c)
        assert torch.isfinite(d).all()
        d.sum().backward()
        assert torch.isfinite(x.grad).all()


def test_identical_points_have_zero_distance_and_finite_gradient() -> None:
    x = ball_points(5, 8, 1.0, 0.8).float().requires_grad_()
    d = poincare_distance(x, x.detach().clone(), 1.0)
    assert d.max() < 1e-5
    d.sum().backward()
    assert torch.isfinite(x.grad).all()
    p = poincare_pairwise_distance(x, x, 1.0)
    assert p.diagonal().max() < 1e-3
    x.grad = None
    p.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_half_precision_inputs_are_computed_in_float32() -> None:
    c = 0.05
    x, y = ball_points(32, 64, c, 0.95).float(), ball_points(48, 64, c, 0.95).float()
    reference = poincare_pairwise_distance(x, y, c)
    for dtype in (torch.bfloat16, torch.float16):
        d = poincare_pairwise_distance(x.to(dtype), y.to(dtype), c)
        assert d.dtype == torch.float32 and torch.isfinite(d).all()
        truth = poincare_pairwise_distance(x.to(dtype).double(), y.to(dtype).double(), c)
        torch.testing.assert_close(d.double(), truth, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = poincare_pairwise_distance(x, y, c)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, reference)


def test_matmul_precision_setting_is_overridden_and_restored() -> None:
    c = 0.05
    x, y = ball_points(16, 32, c, 0.9).float(), ball_points(16, 32, c, 0.9).float()
    expected = poincare_pairwise_distance(x, y, c)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        got = poincare_pairwise_distance(x, y, c)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_never_builds_an_n_by_m_by_d_tensor() -> None:
    # 256 x 256 x 131072 float32 would be 34 GB; the GEMM form needs a few hundred MB.
    c = 0.05
    x = torch.randn(256, 131072) * 1e-3
    d = poincare_pairwise_distance(x, x[:200], c)
    assert d.shape == (256, 200) and torch.isfinite(d).all()


def test_learnable_curvature_gets_a_gradient() -> None:
    c = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    x, y = ball_points(4, 3, 1.0, 0.5), ball_points(5, 3, 1.0, 0.5)
    poincare_pairwise_distance(x, y, c).sum().backward()
    assert c.grad is not None and torch.isfinite(c.grad)
    numeric = (
        poincare_pairwise_distance(x, y, 0.5 + 1e-6).sum()
        - poincare_pairwise_distance(x, y, 0.5 - 1e-6).sum()
    ) / 2e-6
    torch.testing.assert_close(c.grad, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_curvature_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="curvature c"):
        poincare_pairwise_distance(torch.zeros(2, 3), torch.zeros(2, 3), bad)


def test_shape_errors_name_the_arguments() -> None:
    with pytest.raises(ValueError, match="same dimension"):
        poincare_pairwise_distance(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="x must be a 2-D"):
        poincare_pairwise_distance(torch.zeros(3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        poincare_distance(torch.zeros(2, 3), torch.zeros(4, 3))
