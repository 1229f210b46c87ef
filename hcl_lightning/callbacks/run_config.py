"""The resolved ``hcl-train`` config in every checkpoint: :class:`RunConfigCheckpoint`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

__all__ = ["CONFIG_KEY", "RunConfigCheckpoint"]

#: Checkpoint key of the run's config.
CONFIG_KEY = "hcl_config"


class RunConfigCheckpoint(pl.Callback):
    """Writes a run's resolved config into every checkpoint, as ``checkpoint["hcl_config"]``.

    ``hcl-train`` passes the ``model``, ``data`` and ``hcl`` groups (plain values, so
    ``torch.load(weights_only=True)`` reads them; ``data`` with the generated scenes'
    paths filled in), so that ``hcl-analyze`` analyses the data a model was trained
    on without being told.

    Args:
        config: plain values (e.g. ``OmegaConf.to_container(cfg, resolve=True)``).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_KEY] = self.config
