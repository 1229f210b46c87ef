"""Per-step values of chosen metrics, for a run's summary: :class:`MetricHistory`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

__all__ = ["MetricHistory"]


class MetricHistory(pl.Callback):
    """Keeps the value of each of ``keys`` in ``trainer.callback_metrics`` after every batch.

    ``hcl-train`` uses it for the "first -> last" trend of its summary.

    Args:
        keys: metric names to keep (those not logged are skipped).
        trend_steps: steps averaged at each end by :meth:`trend`.

    Example:
        >>> history = MetricHistory(["train/loss_hyp"])
        >>> trainer = pl.Trainer(callbacks=[history]); trainer.fit(model, datamodule)
        >>> history.trend("train/loss_hyp")  # (mean of the first 5, mean of the last 5)
    """

    def __init__(self, keys: Sequence[str], trend_steps: int = 5) -> None:
        self.keys = tuple(keys)
        self.trend_steps = int(trend_steps)
        self.values: dict[str, list[float]] = {}

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        metrics = trainer.callback_metrics
        for key in self.keys:
            if key in metrics:
                self.values.setdefault(key, []).append(float(metrics[key]))

    def trend(self, key: str) -> tuple[float, float] | None:
        """Means of the first and of the last ``trend_steps`` values of ``key``, or None
        when fewer than ``2 * trend_steps`` values were kept."""
        values = self.values.get(key)
        n = self.trend_steps
        if not values or len(values) < 2 * n:
            return None
        head, tail = values[:n], values[-n:]
        return sum(head) / len(head), sum(tail) / len(tail)
