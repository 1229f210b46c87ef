"""Counts of skipped images and dropped boxes: :class:`DataHygieneMonitor`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from typing_extensions import override

from hcl_lightning.data.boxes import DROPPED_BOX_REASONS
from hcl_lightning.data.images import BAD_IMAGE_REASONS

__all__ = ["DataHygieneMonitor", "format_skip_summary"]


def format_skip_summary(counts: Mapping[str, int], read: int) -> str:
    """``"skipped 3 of 1200 images read: 2 corrupt, 1 missing"`` (reasons by count)."""
    total = sum(counts.values())
    line = f"skipped {total} of {read} images read"
    reasons = sorted(((n, r) for r, n in counts.items() if n), key=lambda x: (-x[0], x[1]))
    if reasons:
        line += ": " + ", ".join(f"{n} {r}" for n, r in reasons)
    return line


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
    """Sums the bad images skipped by the data pipeline, logs them, and summarises them.

    Every HCL batch carries ``skipped`` (``(B, R)`` int64: the bad images skipped to
    produce each sample, by reason ``BAD_IMAGE_REASONS[r]``, see
    :class:`~hcl_lightning.data.HCLDataset`). Because the counts travel with the batch,
    they are right with any number of DataLoader workers. This callback

    - sums them per epoch and logs ``data/skipped`` and ``data/skipped_<reason>`` (for
      each reason seen) at the end of every training epoch, summed over ranks;
    - prints one line per epoch in which images were skipped, and at the end of
      training the summary :attr:`summary`, e.g.
      ``data: skipped 3 of 1203 images read: 2 corrupt, 1 missing``, followed, when the
      datamodule has a box source with ``stats``, by the dropped annotation boxes,
      e.g. ``dropped 5 annotation boxes: 3 crowd, 2 non_finite; 1 clipped``.

    "Images read" counts the samples of the batches seen plus the skipped images.
    Batches without ``skipped`` (other datasets) are counted as read with no skip.

    Args:
        prefix: metric name prefix.

    Example:
        >>> trainer = pl.Trainer(callbacks=[DataHygieneMonitor()])
        >>> trainer.fit(model, datamodule=datamodule)
        >>> trainer.callbacks[0].summary
        'skipped 3 of 1203 images read: 2 corrupt, 1 missing'
    """

    def __init__(self, prefix: str = "data") -> None:
        super().__init__()
        self.prefix = prefix
        self.reasons = BAD_IMAGE_REASONS
        self.total = torch.zeros(len(self.reasons), dtype=torch.long)
        self.total_read = 0
        self._epoch = torch.zeros(len(self.reasons), dtype=torch.long)
        self._epoch_read = 0
        self.box_stats: dict[str, int] | None = None

    # -- counts -------------------------------------------------------------------
    @property
    def counts(self) -> dict[str, int]:
        """Skipped images of the whole run (all finished epochs), by reason."""
        return {r: int(n) for r, n in zip(self.reasons, self.total.tolist(), strict=True)}

    @property
    def summary(self) -> str:
        """The end-of-run line, e.g. ``skipped 3 of 1203 images read: 2 corrupt, 1 missing``."""
        line = format_skip_summary(self.counts, self.total_read)
        boxes = _box_line(self.box_stats) if self.box_stats else None
        return f"{line}; {boxes}" if boxes else line

    # -- hooks --------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        source = getattr(datamodule, "_source", None) or getattr(datamodule, "source", None)
        stats = getattr(source, "stats", None)
        self.box_stats = dict(stats) if isinstance(stats, Mapping) else None
        line = _box_line(self.box_stats) if self.box_stats else None
        if line:
            rank_zero_info(f"data: {line}")

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch.zero_()
        self._epoch_read = 0

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not isinstance(batch, Mapping):
            return
        skipped = batch.get("skipped")
        if isinstance(skipped, torch.Tensor) and skipped.ndim == 2:
            counts = skipped.detach().to("cpu", torch.long).sum(dim=0)
            self._epoch[: len(counts)] += counts[: len(self.reasons)]
            self._epoch_read += int(skipped.shape[0]) + int(counts.sum())
        elif "scene" in batch:
            self._epoch_read += int(batch["scene"].shape[0])

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch, read = self._flush(trainer, pl_module)
        metrics = {f"{self.prefix}/skipped": float(epoch.sum())}
        for reason, n in zip(self.reasons, epoch.tolist(), strict=True):
            if n or self.total[self.reasons.index(reason)]:
                metrics[f"{self.prefix}/skipped_{reason}"] = float(n)
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)
        if int(epoch.sum()):
            counts = dict(zip(self.reasons, epoch.tolist(), strict=True))
            rank_zero_info(
                f"data: epoch {trainer.current_epoch}: {format_skip_summary(counts, read)}"
            )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, pl_module)  # an epoch cut short by max_steps
        rank_zero_info(f"data: {self.summary}")

    def _flush(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[torch.Tensor, int]:
        """Adds this epoch's counts, summed over ranks, to the run's; resets them."""
        local = torch.cat([self._epoch, torch.tensor([self._epoch_read])])
        both = trainer.strategy.reduce(local.to(pl_module.device).float(), reduce_op="sum")
        both = both.round().long().cpu()
        epoch, read = both[:-1], int(both[-1])
        self.total += epoch
        self.total_read += read
        self._epoch.zero_()
        self._epoch_read = 0
        return epoch, read

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total.tolist(), "total_read": self.total_read}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total = torch.tensor(state_dict["total"], dtype=torch.long)
        self.total_read = int(state_dict["total_read"])
