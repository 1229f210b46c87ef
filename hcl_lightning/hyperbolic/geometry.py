"""Poincaré-ball distances that stay accurate and finite in training.

The Poincaré ball of curvature ``-c`` (``c > 0``) is the open ball of radius
``1/sqrt(c)``. The distance between two of its points is

.. math::

    d_c(x, y) = \\frac{1}{\\sqrt{c}} \\operatorname{arcosh}\\Big(1 + t\\Big),
    \\qquad t = \\frac{2c\\,\\lVert x - y\\rVert^2}{(1 - c\\lVert x\\rVert^2)(1 - c\\lVert y\\rVert^2)}.

geoopt's ``PoincareBall.dist`` evaluates the same quantity through Möbius addition,
which needs an ``N x M x D`` tensor for all pairs. Here all pairs come from one matrix
product, ``||x - y||^2 = ||x||^2 + ||y||^2 - 2 x.y``; the entries where that
subtraction cancels (near-duplicate pairs) are detected and recomputed from
differences.

All functions compute in float32 (float64 inputs stay float64), with autocast
disabled and the float32 matmul at full IEEE precision (TF32 and bf16 Gram matrices
are wrong on close pairs; see the numerics page of the docs). This module holds
formulas only; the modules that keep state (head, loss, queue) call them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from hcl_lightning.checks import ArgumentError

__all__ = [
    "CANCELLATION_TOLERANCE",
    "arcosh1p",
    "arcosh_floor",
    "ball_norm_at_distance",
    "ball_norm_fraction",
    "sinh_arcosh1p",
    "check_curvature",
    "exact_matmul",
    "poincare_distance",
    "poincare_pairwise_distance",
    "to_compute_dtype",
]

#: An entry of ``||x||^2 + ||y||^2 - 2 x.y`` smaller than this fraction of
#: ``||x||^2 + ||y||^2`` has lost digits to cancellation and is recomputed exactly.
CANCELLATION_TOLERANCE = 1e-2


def check_curvature(c: float | Tensor) -> None:
    """Raise ``ArgumentError`` (a ``ValueError``) unless the curvature magnitude ``c`` is
    a finite number > 0."""
    value = float(c.detach().max() if isinstance(c, Tensor) else c)
    if not math.isfinite(value) or value <= 0:
        raise ArgumentError(
            "curvature",
            c,
            "must be a finite number > 0",
            message=f"curvature c must be a finite number > 0, got c={value!r}",
        )


def to_compute_dtype(x: Tensor) -> Tensor:
    """Upcast half-precision (fp16/bf16) tensors to float32; keep float32/float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@contextlib.contextmanager
def exact_matmul(device_type: str) -> Iterator[None]:
    """Disable autocast and TF32 for the enclosed block, restoring both afterwards.

    ``torch.set_float32_matmul_precision("high")`` (which Lightning recommends on
    recent GPUs) lets float32 matmuls run in TF32; a Poincaré Gram matrix computed that
    way is wrong by whole units of distance for close pairs.
    """
    previous = torch.get_float32_matmul_precision()
    autocast_type = device_type if device_type in ("cuda", "cpu", "xpu", "mps") else "cpu"
    try:
        if previous != "highest":
            torch.set_float32_matmul_precision("highest")
        with torch.autocast(device_type=autocast_type, enabled=False):
            yield
    finally:
        if previous != "highest":
            torch.set_float32_matmul_precision(previous)


def arcosh_floor(dtype: torch.dtype) -> float:
    """Smallest ``t`` the arcosh sees: keeps ``d'(t) = 1/sqrt(t(t+2))`` finite at t=0."""
    return 1e-15 if dtype == torch.float64 else 1e-12


def _min_conformal(dtype: torch.dtype) -> float:
    """Floor for ``1 - c||x||^2``: a point on or beyond the boundary stays finite."""
    return 1e-15 if dtype == torch.float64 else 1e-7


def sinh_arcosh1p(t: Tensor) -> Tensor:
    """``sinh(arcosh(1 + t)) = sqrt(t (t + 2))``, as ``sqrt(t) * sqrt(t + 2)`` (no overflow)."""
    return t.sqrt() * (t + 2).sqrt()


def arcosh1p(t: Tensor, clamp: bool = True) -> Tensor:
    """``arcosh(1 + t)`` for ``t >= 0``, accurate for tiny ``t`` and finite for huge ``t``.

    Uses ``log1p(t + sqrt(t (t + 2)))``; with ``clamp`` (the default) ``t`` is first
    clamped away from 0 (:func:`arcosh_floor`) so the gradient is finite when two points
    coincide; pass ``clamp=False`` for a ``t`` that is clamped already.
    """
    if clamp:
        t = t.clamp_min(arcosh_floor(t.dtype))
    return torch.log1p(t + sinh_arcosh1p(t))


def conformal_denominator(sq_norm: Tensor, c: float | Tensor) -> Tensor:
    """``1 - c||x||^2`` floored at a dtype-dependent epsilon (the boundary guard)."""
    return (1 - c * sq_norm).clamp_min(_min_conformal(sq_norm.dtype))


def _to_common_precision(x: Tensor, y: Tensor, c: float | Tensor):
    """``x``, ``y`` in their common compute dtype (float32 at least) and ``c`` to match."""
    check_curvature(c)
    x, y = to_compute_dtype(x), to_compute_dtype(y)
    dtype = torch.promote_types(x.dtype, y.dtype)
    if isinstance(c, Tensor):
        c = c.to(device=x.device, dtype=dtype)
    return x.to(dtype), y.to(dtype), c if isinstance(c, Tensor) else float(c)


def sqrt_curvature(c: float | Tensor) -> float | Tensor:
    """``sqrt(c)`` for a float or tensor curvature."""
    return c.sqrt() if isinstance(c, Tensor) else math.sqrt(c)


def ball_norm_at_distance(distance: float, c: float | Tensor) -> Tensor:
    """Euclidean norm of the ball points at geodesic ``distance`` from the origin.

    ``tanh(sqrt(c) * distance / 2) / sqrt(c)``: ``expmap0`` of a tangent vector of norm
    ``r`` lies at distance ``2r`` from the origin.

    Returns:
        A scalar tensor.
    """
    sqrt_c = float(sqrt_curvature(c))
    return torch.tanh(torch.tensor(sqrt_c * distance / 2)) / sqrt_c


def ball_norm_fraction(points: Tensor, curvature: float | Tensor) -> Tensor:
    """Euclidean norms of ball points as a fraction of the radius ``1/sqrt(c)``, in [0, 1).

    Args:
        points: (..., D) points of the ball of curvature ``c``.
        curvature: ``c > 0``.

    Returns:
        (...,) float32 fractions, detached.
    """
    c = curvature.detach() if isinstance(curvature, Tensor) else torch.tensor(float(curvature))
    return points.detach().float().norm(dim=-1) * c.to(points.device).float().sqrt()


def _check_points(x: Tensor, y: Tensor, paired: bool) -> None:
    """Validate the shapes of two point sets; ``paired`` requires equal row counts."""
    for name, t in (("x", x), ("y", y)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D (rows, dim) tensor, got shape {tuple(t.shape)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same dimension, got x dim={x.shape[1]} and y dim={y.shape[1]}"
        )
    if paired and x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}"
        )


def pairwise_squared_distance(x: Tensor, y: Tensor, x_sq: Tensor, y_sq: Tensor) -> Tensor:
    """All-pairs ``||x_i - y_j||^2`` from one GEMM, with cancelled entries recomputed.

    Args:
        x: (N, D) points, in the compute dtype.
        y: (M, D) points, same dtype.
        x_sq: (N,) squared norms of ``x``.
        y_sq: (M,) squared norms of ``y``.

    Returns:
        (N, M) squared Euclidean distances, >= 0. Differentiable.
    """
    sq = torch.addmm(y_sq.unsqueeze(0), x, y.t(), beta=1, alpha=-2) + x_sq.unsqueeze(1)
    # Conservative per-row threshold: flags a superset of entries with
    # sq < tol * (x_sq[i] + y_sq[j]) without forming the (N, M) sum.
    threshold = CANCELLATION_TOLERANCE * (x_sq + y_sq.max())
    suspect = sq < threshold.unsqueeze(1)
    if bool(suspect.any()):
        rows, cols = suspect.nonzero(as_tuple=True)
        exact = (x[rows] - y[cols]).square().sum(dim=1)
        sq = sq.index_put((rows, cols), exact)
    return sq.clamp_min(0)


def poincare_pairwise_distance(x: Tensor, y: Tensor, c: float | Tensor = 0.05) -> Tensor:
    """Poincaré distances between every row of ``x`` and every row of ``y``.

    One matrix product for the Gram matrix; memory O(N*M), never an N x M x D tensor.
    bf16/fp16 inputs are computed in float32, float64 stays float64; autocast and TF32
    are disabled inside. Differentiable with respect to ``x``, ``y`` and ``c``.

    Args:
        x: (N, D) points in the ball of radius ``1/sqrt(c)``.
        y: (M, D) points in the same ball.
        c: curvature magnitude (> 0), float or scalar tensor.

    Returns:
        (N, M) tensor of distances, in float32 (float64 for float64 inputs).

    Raises:
        ValueError: if ``c <= 0`` or the shapes are not (N, D) and (M, D).

    Example:
        >>> x = torch.randn(4, 8) * 0.3
        >>> poincare_pairwise_distance(x, x, c=1.0).diagonal()  # ~0
    """
    _check_points(x, y, paired=False)
    with exact_matmul(x.device.type):
        x, y, c = _to_common_precision(x, y, c)
        x_sq, y_sq = x.square().sum(dim=1), y.square().sum(dim=1)
        sq = pairwise_squared_distance(x, y, x_sq, y_sq)
        coef_x = (2 * c) / conformal_denominator(x_sq, c)
        t = sq * coef_x.unsqueeze(1) / conformal_denominator(y_sq, c).unsqueeze(0)
        return arcosh1p(t) / sqrt_curvature(c)


def poincare_distance(x: Tensor, y: Tensor, c: float | Tensor = 0.05) -> Tensor:
    """Row-wise Poincaré distances ``d(x_i, y_i)``, computed from differences.

    Accurate for near-duplicate pairs (no Gram-matrix cancellation); use it for the
    positive pairs of a contrastive loss. Same precision rules as
    :func:`poincare_pairwise_distance`.

    Args:
        x: (N, D) points in the ball.
        y: (N, D) points in the ball.
        c: curvature magnitude (> 0).

    Returns:
        (N,) distances.
    """
    _check_points(x, y, paired=True)
    with exact_matmul(x.device.type):
        x, y, c = _to_common_precision(x, y, c)
        sq = (x - y).square().sum(dim=1)
        denominator = conformal_denominator(x.square().sum(dim=1), c) * conformal_denominator(
            y.square().sum(dim=1), c
        )
        t = 2 * c * sq / denominator
        return arcosh1p(t) / sqrt_curvature(c)
