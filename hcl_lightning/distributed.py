"""DDP for momentum-encoder SSL with queues: no buffer broadcast, SyncBatchNorm on GPU only.

MoCo-style queues (lightly's memory banks and :class:`~hcl_lightning.HyperbolicKeyQueue`)
are buffers, so that checkpoints hold them. ``torch.nn.parallel.DistributedDataParallel``
broadcasts every buffer from rank 0 before each forward by default
(``broadcast_buffers=True``): the queues would be copied to all ranks at every step
and rank-local buffers such as the momentum encoder's shuffle-BN statistics
overwritten. Our queues gather the keys
of all ranks (in rank order) before enqueueing, so every rank holds the same queue
without any broadcast; :class:`HCLDDPStrategy` therefore turns the broadcast off.

``hcl-train trainer=ddp`` uses it. When you build your own ``Trainer``, pass
``strategy=HCLDDPStrategy()`` (or ``DDPStrategy(broadcast_buffers=False)``, which lacks
only the CPU fallback of SyncBatchNorm and the log lines)::

    from hcl_lightning.distributed import HCLDDPStrategy
    trainer = pl.Trainer(accelerator="gpu", devices=8, strategy=HCLDDPStrategy(),
                         sync_batchnorm=False)

On CPU (gloo) the strategy works as on GPU (NCCL): keys are gathered and MoCo's
shuffle-BN shuffles the key batch across ranks. ``sync_batchnorm=True`` (an option;
MoCo uses shuffle-BN instead) needs GPUs: on CPU it is switched off with a log line
and every process keeps its own BatchNorm statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from lightly.models.utils import batch_shuffle, batch_unshuffle
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, distributed

__all__ = ["HCLDDPStrategy", "is_distributed", "shuffle_bn", "shuffle_bn_status"]

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return (
        distributed.is_available()
        and distributed.is_initialized()
        and distributed.get_world_size() > 1
    )


@torch.no_grad()
def shuffle_bn(encoder: Callable[[Tensor], Tensor | tuple[Tensor, ...]], x: Tensor):
    """Runs a (momentum) ``encoder`` on ``x`` with MoCo's shuffle-BN.

    The batch is shuffled (across devices under DDP) before ``encoder`` and every
    output is unshuffled after it, so that BatchNorm statistics cannot leak which query
    and key belong together. ``encoder`` returns a tensor or a tuple of tensors whose
    first dimension is the batch; the result has the same structure.
    """
    dist = is_distributed()
    x, shuffle = batch_shuffle(x, distributed=dist)
    out = encoder(x)
    if isinstance(out, Tensor):
        return batch_unshuffle(out, shuffle, distributed=dist)
    return tuple(batch_unshuffle(o, shuffle, distributed=dist) for o in out)


def shuffle_bn_status(world_size: int, device_type: str, backend: str | None) -> str:
    """The one line logged at start that says how the key encoder's BatchNorm runs."""
    if world_size <= 1:
        return "hcl: shuffle-BN within the batch (1 process); keys gathered from 1 rank"
    return (
        f"hcl: shuffle-BN across {world_size} ranks ({device_type}, {backend}); queues "
        f"gather the keys of all {world_size} ranks in rank order; DDP buffer broadcast off"
    )


class HCLDDPStrategy(DDPStrategy):
    """``DDPStrategy`` with ``broadcast_buffers=False`` and a CPU fallback for SyncBN.

    Args:
        broadcast_buffers: passed to ``DistributedDataParallel`` (default ``False``:
            the queues are kept equal by gathering, see the module docstring).
        **kwargs: any other ``DDPStrategy`` argument (``process_group_backend``,
            ``find_unused_parameters``, ``timeout``, ...).
    """

    strategy_name = "hcl_ddp"

    def __init__(self, *args: Any, broadcast_buffers: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, broadcast_buffers=broadcast_buffers, **kwargs)

    def setup(self, trainer: pl.Trainer) -> None:
        assert self.root_device is not None
        device_type = self.root_device.type
        if self._layer_sync is not None and device_type not in ("cuda", "xpu"):
            rank_zero_info(
                f"hcl: sync_batchnorm=True needs GPUs; on {device_type} "
                f"({self._get_process_group_backend()}) it is off and every process keeps "
                "its own BatchNorm statistics (the key encoder still uses shuffle-BN)"
            )
            self._layer_sync = None
        elif self._layer_sync is not None:
            rank_zero_info("hcl: SyncBatchNorm on; BatchNorm statistics span all ranks")
        super().setup(trainer)
        rank_zero_info(
            shuffle_bn_status(self.world_size, device_type, self._get_process_group_backend())
        )
