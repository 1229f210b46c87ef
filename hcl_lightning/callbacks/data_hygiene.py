"""Unreadable images and dropped boxes of a run: :class:`DataHygieneMonitor`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from typing_extensions import override

from hcl_lightning.data.boxes import DROPPED_BOX_REASONS
from hcl_lightning.data.dataset import HCLDataset, describe_unreadable

__all__ = ["DataHygieneMonitor"]


def _box_line(stats: Mapping[str, int]) -> str | None:
    dropped = {r: int(stats.get(r, 0)) for r in DROPPED_BOX_REASONS if stats.get(r, 0)}
    extra = {r: int(n) for r, n in stats.items() if r not in DROPPED_BOX_REASONS and n}
    if not dropped and not extra:
        return None
    parts = [f"dropped {sum(dropped.values())} annotation boxes"]
    if dropped:
        parts[0] += ": " + ", ".join(f"{n} {r}" for r, n in dropped.items())
    parts += [f"{n} {r}" for r, n in extra.items()]
    return "; ".join(parts)


class DataHygieneMonitor(pl.Callback):
    """Counts the distinct unreadable training images and prints one summary line.

    The training set (the datamodule's ``train_dataset``, or the training loader's
    dataset) must be an :class:`~hcl_lightning.data.HCLDataset`, whose bad files are
    recorded once each in shared memory, so the counts are right with any number of
    DataLoader workers; under DDP the ranks' records are merged. This callback

    - logs ``data/unreadable`` (distinct bad files found so far) at the end of every
      training epoch;
    - prints, once, at the end of training, the line :attr:`summary`, e.g.
      ``data: 3 of 400 images unreadable (1 missing, 1 empty, 1 corrupt), skipped;
      first: ...``, followed, when the datamodule has a box source with ``stats``, by
      the dropped annotation boxes, e.g.
      ``dropped 5 annotation boxes: 3 crowd, 2 non_finite; 1 clipped``.

    With another dataset it does nothing.

    Args:
        prefix: metric name prefix.

    Example:
        >>> trainer = pl.Trainer(callbacks=[DataHygieneMonitor()])
        >>> trainer.fit(model, datamodule=datamodule)
        >>> trainer.callbacks[0].summary
        '3 of 400 images unreadable (1 missing, 1 empty, 1 corrupt), skipped; first: ...'
    """

    def __init__(self, prefix: str = "data") -> None:
        super().__init__()
        self.prefix = prefix
        self.unreadable: list[tuple[Path, str]] = []
        self.n_images = 0
        self.box_stats: dict[str, int] | None = None

    @property
    def summary(self) -> str:
        """The end-of-run line (without the ``data:`` prefix)."""
        line = describe_unreadable(self.unreadable, self.n_images)
        boxes = _box_line(self.box_stats) if self.box_stats else None
        return f"{line}; {boxes}" if boxes else line

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        source = getattr(datamodule, "_source", None) or getattr(datamodule, "source", None)
        stats = getattr(source, "stats", None)
        self.box_stats = dict(stats) if isinstance(stats, Mapping) else None

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._update(trainer, pl_module):
            metric = {f"{self.prefix}/unreadable": float(len(self.unreadable))}
            pl_module.log_dict(metric, on_step=False, on_epoch=True, sync_dist=False)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._update(trainer, pl_module):
            rank_zero_info(f"data: {self.summary}")

    def _update(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Reads the training set's bad files, merged over ranks; False without an
        :class:`~hcl_lightning.data.HCLDataset`."""
        dataset = getattr(getattr(trainer, "datamodule", None), "train_dataset", None)
        if dataset is None:
            dataset = getattr(trainer.train_dataloader, "dataset", None)
        if not isinstance(dataset, HCLDataset):
            return False
        codes = dataset.bad_codes
        if trainer.world_size > 1:
            gathered = trainer.strategy.all_gather(codes.to(pl_module.device, torch.int32))
            codes = gathered.reshape(-1, len(codes)).amax(dim=0).cpu()
        self.unreadable = dataset.unreadable(codes)
        self.n_images = len(dataset)
        return True
