"""A queue of past object keys in the Poincaré ball, built on lightly's memory bank."""

from __future__ import annotations

import torch
from lightly.models import utils as lightly_utils
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.utils import dist
from torch import Tensor

from hcl_lightning.hyperbolic.geometry import ball_norm_at_distance, check_curvature
from hcl_lightning.memory_bank import persistent_bank

__all__ = ["HyperbolicKeyQueue"]


class HyperbolicKeyQueue(MemoryBankModule):
    """First-in-first-out queue of keys that live in a Poincaré ball.

    Differs from lightly's :class:`~lightly.models.modules.memory_bank.MemoryBankModule`
    (which it extends and whose ``forward``/gathering it reuses) in three ways that
    matter for hyperbolic keys:

    - rows are initialised *inside* the ball, at geodesic distance ``init_distance``
      from the origin in random directions (lightly's unit-norm rows lie on the boundary
      of a ball with ``c = 1``, where distances and gradients degenerate);
    - the bank and its pointer are persistent buffers, so a checkpoint restores them
      and a resumed run sees the same negatives;
    - a batch that does not divide the queue size wraps around instead of being cut:
      no key is dropped (a batch larger than the queue keeps its newest ``size`` keys).

    With ``gather_distributed=True`` the keys of all ranks are gathered (in rank order)
    before enqueueing, so every rank holds the same queue, as in MoCo.

    Args:
        size: number of keys held.
        dim: key dimension.
        curvature: curvature magnitude ``c`` of the ball the keys live in.
        gather_distributed: gather keys from all ranks before enqueueing.
        init_distance: geodesic distance from the origin of the initial rows.

    Example:
        >>> queue = HyperbolicKeyQueue(size=4096, dim=128, curvature=0.05)
        >>> keys, negatives = queue(keys, update=True)  # negatives: (4096, 128), pre-update
    """

    def __init__(
        self,
        size: int,
        dim: int,
        curvature: float = 0.05,
        gather_distributed: bool = True,
        init_distance: float = 1.0,
    ) -> None:
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got size={size}, dim={dim}")
        check_curvature(curvature)
        self.curvature = float(curvature)
        self.init_distance = float(init_distance)
        super().__init__(
            size=(size, dim), gather_distributed=gather_distributed, feature_dim_first=False
        )
        persistent_bank(self)

    @torch.no_grad()
    def _init_memory_bank(self, size: tuple[int, ...]) -> None:
        """Random directions at geodesic distance ``init_distance`` from the origin."""
        directions = torch.nn.functional.normalize(torch.randn(size), dim=-1)
        norm = ball_norm_at_distance(self.init_distance, self.curvature)
        self.bank = (directions * norm).type_as(self.bank)
        self.bank_ptr = torch.zeros(1).type_as(self.bank_ptr)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, batch: Tensor) -> None:
        """Write ``batch`` at the pointer, wrapping around the end of the queue."""
        if self.gather_distributed and dist.world_size() > 1:
            batch = lightly_utils.concat_all_gather(batch.contiguous())
        size = self.size[0]
        batch = batch.detach()[-size:]
        ptr = int(self.bank_ptr)
        slots = (torch.arange(batch.shape[0], device=self.bank.device) + ptr) % size
        self.bank[slots] = batch.to(self.bank.dtype)
        self.bank_ptr[0] = (ptr + batch.shape[0]) % size
