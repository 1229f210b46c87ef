"""Projection of Euclidean features into a geoopt Poincaré ball."""

from __future__ import annotations

import math
import warnings

import torch

with warnings.catch_warnings():  # geoopt's module-level torch.jit.script (torch >= 2.10)
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    import geoopt
from lightly.models.modules.heads import ProjectionHead
from torch import Tensor, nn

from hcl_lightning.checks import ArgumentError
from hcl_lightning.hyperbolic.geometry import check_curvature, exact_matmul, sqrt_curvature

__all__ = ["PoincareProjectionHead"]

#: Default outlier guard: tangent vectors are clipped so no embedding lies beyond this
#: fraction of the ball's radius (tanh(sqrt(c) r) = 0.995).
DEFAULT_MAX_RADIUS_FRACTION = 0.995


class PoincareProjectionHead(nn.Module):
    """Maps Euclidean features into a Poincaré ball while keeping their norm informative.

    ``z = projx(expmap0(clip_r(alpha * mlp(x))))`` on a :class:`geoopt.PoincareBall`.

    The norm of ``z`` is HCL's signal (scenes far from the origin, objects near it), so
    the head must not saturate it: raw projection-head outputs mapped directly would
    sit on the boundary, where gradients vanish (numbers: the numerics page of the
    docs). Following MERU (Desai et al., ICML 2023) a learnable scale
    ``alpha`` (stored as a log, initialised at ``1/sqrt(dim)``, at most 1, excluded from
    weight decay by :meth:`no_weight_decay_parameters`) brings them into the ball's
    interior. Feature clipping (Guo et al., CVPR 2022) is kept only as an outlier guard:
    the tangent norm is capped at ``clip_r``, by default where the ball norm reaches 99.5%
    of the radius, well above the bulk; :attr:`clipped_fraction` reports how many
    embeddings of the last call were clipped.

    Computations run in float32 (autocast disabled); outputs are float32.

    Args:
        input_dim: dimension of the input features.
        hidden_dim: hidden width of an own MLP; ``None`` with ``output_dim=None`` means
            identity (the head sits on the baseline's projection head, as in the paper).
        output_dim: output dimension of an own MLP (``None``: identity).
        curvature: initial ``c > 0`` of the ball (paper: 0.05).
        learn_curvature: make ``c`` a parameter (geoopt's softplus parametrisation).
        alpha: initial scale; ``None`` means ``1/sqrt(dim)``.
        learn_alpha: make ``alpha`` a parameter.
        clip_r: tangent-norm guard; ``None`` picks 99.5% of the radius, ``0`` disables.

    Attributes:
        ball: the :class:`geoopt.PoincareBall` manifold.

    Example:
        >>> head = PoincareProjectionHead(input_dim=128)
        >>> z = head(projection_head(backbone(x)))  # (B, 128) points in head.ball
        >>> norms = head.ball.dist0(z)               # hyperbolic distance to the origin
    """

    def __init__(
        self,
        input_dim: int = 128,
        hidden_dim: int | None = None,
        output_dim: int | None = None,
        curvature: float = 0.05,
        learn_curvature: bool = False,
        alpha: float | None = None,
        learn_alpha: bool = True,
        clip_r: float | None = None,
    ) -> None:
        super().__init__()
        self.check_arguments(curvature, alpha, clip_r)
        if input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {input_dim}")
        self.mlp = _build_mlp(input_dim, hidden_dim, output_dim)
        self.output_dim = output_dim or input_dim
        alpha = 1.0 / math.sqrt(self.output_dim) if alpha is None else alpha
        self.ball = geoopt.PoincareBall(c=curvature, learnable=learn_curvature)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha)), requires_grad=learn_alpha)
        self.clip_r = clip_r
        self.clipped_fraction: Tensor
        self.register_buffer("clipped_fraction", torch.zeros(()), persistent=False)

    @staticmethod
    def check_arguments(
        curvature: float, alpha: float | None = None, clip_r: float | None = None
    ) -> None:
        """The checks of ``curvature``, ``alpha`` and ``clip_r``, without building a head.

        Raises:
            ArgumentError: (a ``ValueError``) naming the first argument out of range.
        """
        check_curvature(curvature)
        if clip_r is not None and not (clip_r >= 0 and math.isfinite(clip_r)):
            raise ArgumentError("clip_r", clip_r, "must be None, 0 (off) or a finite number > 0")
        if alpha is not None and not 0 < alpha <= 1:
            raise ArgumentError("alpha", alpha, "must lie in (0, 1]")

    @property
    def curvature(self) -> Tensor:
        """Current curvature magnitude ``c`` (a tensor; differentiable when learnable)."""
        return self.ball.c

    @property
    def alpha(self) -> Tensor:
        """Current scale applied before ``expmap0``, clamped to at most 1."""
        return self.log_alpha.clamp(max=0.0).exp()

    def guard_radius(self) -> float:
        """Tangent norm beyond which features are clipped (``inf`` when disabled)."""
        if self.clip_r == 0:
            return math.inf
        if self.clip_r is not None:
            return float(self.clip_r)
        sqrt_c = float(sqrt_curvature(self.curvature.detach()))
        return math.atanh(DEFAULT_MAX_RADIUS_FRACTION) / sqrt_c

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        """Scale and curvature: optimise them without weight decay (as MERU does)."""
        return [p for p in (self.log_alpha, self.ball.isp_c) if p.requires_grad]

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, input_dim) features to (B, output_dim) float32 points in :attr:`ball`."""
        with exact_matmul(x.device.type):
            tangent = self.mlp(x.float()) * self.alpha
            tangent = self._guard(tangent)
            return self.ball.projx(self.ball.expmap0(tangent))

    def _guard(self, tangent: Tensor) -> Tensor:
        """Clip tangent norms at :meth:`guard_radius` and record the clipped fraction."""
        radius = self.guard_radius()
        if math.isinf(radius):
            self.clipped_fraction.zero_()
            return tangent
        norm = tangent.norm(dim=-1, keepdim=True).clamp_min(1e-15)
        self.clipped_fraction.copy_((norm > radius).float().mean().detach())
        return tangent * (radius / norm).clamp(max=1.0)


def _build_mlp(input_dim: int, hidden_dim: int | None, output_dim: int | None) -> nn.Module:
    """Identity, or a lightly ``ProjectionHead`` (Linear, or Linear-BN-ReLU-Linear)."""
    if output_dim is None and hidden_dim is None:
        return nn.Identity()
    output_dim = output_dim or input_dim
    if hidden_dim is None:
        return ProjectionHead([(input_dim, output_dim, None, None)])
    return ProjectionHead(
        [
            (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)),
            (hidden_dim, output_dim, None, None),
        ]
    )
