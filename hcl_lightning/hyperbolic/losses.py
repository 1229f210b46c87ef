"""Hyperbolic InfoNCE: the scene-object loss of HCL (Ge et al., CVPR 2023, Eq. 4)."""

from __future__ import annotations

import torch
from lightly.utils import dist
from torch import Tensor, nn

from hcl_lightning.checks import check_number
from hcl_lightning.hyperbolic.geometry import (
    check_curvature,
    poincare_distance,
    poincare_pairwise_distance,
    to_compute_dtype,
)
from hcl_lightning.hyperbolic.queue_logsumexp import hyperbolic_negative_logsumexp
from hcl_lightning.hyperbolic.queues import HyperbolicKeyQueue

__all__ = ["HyperbolicInfoNCELoss"]


class HyperbolicInfoNCELoss(nn.Module):
    """InfoNCE whose logits are negative Poincaré distances over a temperature.

    For ball points ``query`` (scenes, online encoder) and ``key`` (their objects,
    key encoder), the loss of row ``i`` is

    .. math::

        -\\log \\frac{\\exp(-d_c(q_i, k_i)/\\tau)}
        {\\exp(-d_c(q_i, k_i)/\\tau) + \\sum_n \\exp(-d_c(q_i, k_n)/\\tau)}

    with negatives ``k_n`` from a queue of past keys (``queue_size > 0``, MoCo-style,
    filled with the keys after each training call) or, with ``queue_size=0``, the other
    keys of the (globally gathered) batch. Positive distances are computed row-wise
    from differences (exact for close pairs); queue negatives go through a fused,
    chunked kernel (:func:`~hcl_lightning.hyperbolic.queue_logsumexp.hyperbolic_negative_logsumexp`) whose
    cost is close to a Euclidean InfoNCE over the same queue. Everything runs in
    float32 with autocast and TF32 disabled.

    - HCL: Ge et al., "Hyperbolic Contrastive Learning for Visual Representations
      beyond Objects", CVPR 2023, https://arxiv.org/abs/2212.00653

    Args:
        temperature: τ (paper: 0.2).
        curvature: ``c`` of the ball (paper: 0.05); a learnable curvature may instead be
            passed to :meth:`forward`.
        queue_size: negatives kept in the queue (paper: 65536); 0 uses in-batch keys.
        dim: key dimension (paper: 128).
        gather_distributed: gather keys from all ranks (queue update or in-batch
            negatives) so the result does not depend on the number of processes.
        chunk_size: queue entries per block of the fused kernel.

    Raises:
        ValueError: for ``temperature <= 0``, ``curvature <= 0``, negative sizes.

    Example:
        >>> criterion = HyperbolicInfoNCELoss(temperature=0.2, curvature=0.05,
        ...                                   queue_size=4096, dim=128)
        >>> loss, top1 = criterion(scene_points, object_points, return_accuracy=True)
    """

    def __init__(
        self,
        temperature: float = 0.2,
        curvature: float = 0.05,
        queue_size: int = 65536,
        dim: int = 128,
        gather_distributed: bool = True,
        chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        self.check_arguments(temperature, curvature, queue_size)
        if dim < 1 or chunk_size < 1:
            raise ValueError(
                f"dim and chunk_size must be >= 1, got dim={dim}, chunk_size={chunk_size}"
            )
        self.temperature = float(temperature)
        self.curvature = float(curvature)
        self.dim = int(dim)
        self.gather_distributed = gather_distributed
        self.chunk_size = int(chunk_size)
        self.queue = (
            HyperbolicKeyQueue(queue_size, dim, curvature, gather_distributed)
            if queue_size > 0
            else None
        )

    @staticmethod
    def check_arguments(temperature: float, curvature: float, queue_size: int) -> None:
        """The checks of ``temperature``, ``curvature`` and ``queue_size``, without
        building a loss (or its queue).

        Raises:
            ArgumentError: (a ``ValueError``) naming the first argument out of range.
        """
        check_number("temperature", temperature, "> 0", lambda v: v > 0)
        check_curvature(curvature)
        check_number(
            "queue_size",
            queue_size,
            ">= 0 (0 = in-batch negatives)",
            lambda v: v >= 0,
            integer=True,
        )

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        curvature: float | Tensor | None = None,
        return_accuracy: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Loss of ``query[i]`` against its positive ``key[i]`` and the negatives.

        Args:
            query: (N, D) ball points (gradients flow into them).
            key: (N, D) ball points of the positives (typically without gradient).
            curvature: overrides the constructor's ``c`` (e.g. a learnable curvature).
            return_accuracy: also return the top-1 accuracy of the positive.

        Returns:
            The mean loss, or ``(loss, top1)`` where ``top1`` is the detached fraction of
            rows whose positive logit beats every negative.

        The queue is updated with ``key`` only when ``query`` requires a gradient
        (training), as in lightly's losses.
        """
        self._check_inputs(query, key)
        c = self.curvature if curvature is None else curvature
        check_curvature(c)
        if self.queue is None:
            loss, top1 = self._in_batch(query, key, c)
        else:
            loss, top1 = self._with_queue(query, key, c)
        return (loss, top1) if return_accuracy else loss

    def _check_inputs(self, query: Tensor, key: Tensor) -> None:
        if query.dim() != 2 or query.shape != key.shape:
            raise ValueError(
                f"query and key must both be (N, D) with equal shapes, got query "
                f"{tuple(query.shape)} and key {tuple(key.shape)}"
            )
        if query.shape[1] != self.dim:
            raise ValueError(f"query/key dimension must equal dim={self.dim}, got {query.shape[1]}")

    def _with_queue(self, query: Tensor, key: Tensor, c: float | Tensor) -> tuple[Tensor, Tensor]:
        key, negatives = self.queue(key, update=query.requires_grad)
        positive = -poincare_distance(query, key, c) / self.temperature
        if isinstance(c, Tensor) and c.requires_grad:
            # A learnable curvature needs autograd through the distances to the queue.
            negative = -poincare_pairwise_distance(query, negatives, c) / self.temperature
            negative_lse, max_negative = negative.logsumexp(dim=1), negative.amax(dim=1)
        else:
            negative_lse, max_negative = hyperbolic_negative_logsumexp(
                to_compute_dtype(query), negatives, float(c), self.temperature, self.chunk_size
            )
        loss = (torch.logaddexp(positive, negative_lse) - positive).mean()
        top1 = (positive.detach() > max_negative).float().mean()
        return loss, top1

    def _in_batch(self, query: Tensor, key: Tensor, c: float | Tensor) -> tuple[Tensor, Tensor]:
        offset = 0
        if self.gather_distributed and dist.world_size() > 1:
            key_all = torch.cat(dist.gather(key), dim=0)
            offset = dist.rank() * query.shape[0]
        else:
            key_all = key
        logits = -poincare_pairwise_distance(query, key_all, c) / self.temperature
        labels = torch.arange(query.shape[0], device=query.device) + offset
        loss = nn.functional.cross_entropy(logits, labels)
        top1 = (logits.detach().argmax(dim=1) == labels).float().mean()
        return loss, top1
