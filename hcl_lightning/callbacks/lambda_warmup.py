"""Linear warm-up of HCL's loss weight λ: :class:`LambdaWarmup`."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

from hcl_lightning.checks import check_number

__all__ = ["LambdaWarmup"]


class LambdaWarmup(pl.Callback):
    """Raises ``pl_module.hcl_lambda`` linearly from 0 to its target over the first steps.

    Before every training batch it sets ``pl_module.hcl_lambda`` to
    ``target * min(1, global_step / warmup_steps)`` and logs it as ``train/hcl_lambda``.
    The target is ``target_lambda``, or the module's ``hcl_lambda`` when the fit starts.
    The value depends on ``trainer.global_step`` alone, so a resumed run continues the
    warm-up where it stopped. While λ is 0 the mixin skips the hyperbolic branch.
    With ``warmup_steps=0`` nothing is changed or logged. Modules without
    ``hcl_lambda`` are ignored.

    Args:
        warmup_steps: optimiser steps of the warm-up (>= 0; 0: none).
        target_lambda: final λ (>= 0); default: the module's ``hcl_lambda``.

    Raises:
        ArgumentError: (a ``ValueError``) for an argument out of range.

    Example:
        >>> trainer = pl.Trainer(callbacks=[LambdaWarmup(warmup_steps=1000)])
        >>> trainer.fit(HCLMoCoV2(hcl_lambda=0.1), datamodule=datamodule)  # λ: 0 -> 0.1
    """

    def __init__(self, warmup_steps: int = 0, target_lambda: float | None = None) -> None:
        super().__init__()
        check_number("warmup_steps", warmup_steps, ">= 0", lambda v: v >= 0, integer=True)
        check_number("target_lambda", target_lambda, ">= 0", lambda v: v >= 0, nullable=True)
        self.warmup_steps = int(warmup_steps)
        self.target_lambda = target_lambda

    def lambda_at(self, step: int) -> float:
        """λ of the warm-up at optimiser step ``step`` (needs ``target_lambda`` set).

        Raises:
            RuntimeError: if ``target_lambda`` is unknown (before the fit starts).
        """
        if self.target_lambda is None:
            raise RuntimeError("target_lambda is unknown before the fit starts")
        if self.warmup_steps == 0:
            return float(self.target_lambda)
        return float(self.target_lambda) * min(1.0, step / self.warmup_steps)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not hasattr(pl_module, "hcl_lambda"):
            return
        if self.warmup_steps and self.target_lambda is None:
            # Read once: the module's value is overwritten during the warm-up.
            self.target_lambda = float(pl_module.hcl_lambda)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.warmup_steps or not hasattr(pl_module, "hcl_lambda"):
            return
        lam = self.lambda_at(trainer.global_step)
        pl_module.hcl_lambda = lam
        pl_module.log("train/hcl_lambda", lam, on_step=True, on_epoch=False)
