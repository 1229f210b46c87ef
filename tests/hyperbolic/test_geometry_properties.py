"""Property-based tests of the Poincaré distance: a metric, rotation-invariant, finite."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hcl_lightning.hyperbolic.geometry import poincare_distance, poincare_pairwise_distance

CURVATURES = st.sampled_from([0.05, 0.5, 1.0, 2.0])
DIMS = st.integers(1, 8)
SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def ball_points(draw, n, dim, c, max_fraction=0.999):
    """``n`` points of the ball of curvature ``c`` (float64), norms up to max_fraction*R."""
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(
        torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=1
    )
    fractions = draw(
        st.lists(st.floats(0.0, max_fraction), min_size=n, max_size=n).map(
            lambda v: torch.tensor(v, dtype=torch.float64)
        )
    )
    return directions * (fractions / math.sqrt(c)).unsqueeze(1)


@st.composite
def triples(draw, max_fraction=0.99):
    c, dim = draw(CURVATURES), draw(DIMS)
    return c, draw(ball_points(3, dim, c, max_fraction))


def random_rotation(dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed orthogonal matrix


@SETTINGS
@given(triples())
def test_symmetric_zero_on_diagonal_and_nonnegative(case) -> None:
    c, x = case
    d = poincare_pairwise_distance(x, x, c)
    assert torch.allclose(d, d.T, rtol=1e-9, atol=1e-9)
    assert torch.all(d.diagonal().abs() <= 1e-6)
    assert torch.all(d >= 0)
    rowwise = poincare_distance(x, x.flip(0), c)
    assert torch.allclose(rowwise, d[torch.arange(3), torch.arange(3).flip(0)], atol=1e-7)


@SETTINGS
@given(triples())
def test_triangle_inequality(case) -> None:
    c, (x, y, z) = case
    d = poincare_pairwise_distance(torch.stack([x, y]), torch.stack([y, z]), c)
    d_xy, d_yz, d_xz = d[0, 0], d[1, 1], d[0, 1]
    assert d_xz <= d_xy + d_yz + 1e-6 * (1 + d_xz)


@SETTINGS
@given(triples(), st.integers(0, 2**31 - 1))
def test_invariant_under_rotations(case, seed) -> None:
    c, x = case
    rotation = random_rotation(x.shape[1], seed)
    d = poincare_pairwise_distance(x, x, c)
    d_rotated = poincare_pairwise_distance(x @ rotation, x @ rotation, c)
    assert torch.allclose(d, d_rotated, rtol=1e-7, atol=1e-6)


@SETTINGS
@given(
    CURVATURES,
    DIMS,
    st.integers(0, 2**31 - 1),
    st.sampled_from([torch.float32, torch.float64]),
    st.sampled_from([0.9, 0.999, 0.999999, 1.0]),
)
def test_finite_everywhere_in_the_ball_with_finite_gradients(c, dim, seed, dtype, fraction) -> None:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(
        torch.randn(6, dim, generator=generator, dtype=torch.float64), dim=1
    )
    radii = torch.rand(6, 1, generator=generator, dtype=torch.float64) * fraction / math.sqrt(c)
    radii[0] = fraction / math.sqrt(c)  # one point as far out as asked, even on the boundary
    points = (directions * radii).to(dtype).requires_grad_(True)
    d = poincare_pairwise_distance(points, points.detach().flip(0), c)
    assert torch.isfinite(d).all()
    d.sum().backward()
    assert torch.isfinite(points.grad).all()
