"""BatchNorm with its running statistics: keys that do not depend on their batch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["running_batchnorm"]


@contextlib.contextmanager
def running_batchnorm(*modules: nn.Module) -> Iterator[None]:
    """Within the block, every BatchNorm layer of ``modules`` normalises with its running
    statistics (eval mode) and leaves them unchanged; each layer's mode is restored on
    exit, also after an exception.

    A key computed this way depends on its own crop only. Keys normalised with the
    statistics of their batch carry a signature of that batch, which the queries of
    the same step can learn to match instead of the content (MoCo, He et al. 2020,
    Sec. 3.3; MoCo shuffles the key batch across devices to break it).

    Example:
        >>> with running_batchnorm(backbone_momentum, projection_head_momentum):
        ...     keys = projection_head_momentum(backbone_momentum(x).flatten(1))
    """
    layers = [
        layer
        for module in modules
        for layer in module.modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm)
    ]
    modes = [layer.training for layer in layers]
    try:
        for layer in layers:
            layer.eval()
        yield
    finally:
        for layer, mode in zip(layers, modes, strict=True):
            layer.train(mode)
