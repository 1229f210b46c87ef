"""Shared training logic for momentum-encoder baselines (MoCo-v2, DenseCL, ORL).

Modelled on solo-learn's ``methods/base.py`` split: this base owns the optimiser, the
linear learning-rate scaling, the cosine learning-rate and momentum schedules and the
momentum update; each method adds only its encoder, projector and loss. There is no
``__init__`` here, so the method's ``__init__`` (and ``save_hyperparameters``) stays the
single place that defines the hyperparameters, and cooperative ``super()`` chains work.

A subclass must define ``self.hparams`` entries ``lr``, ``weight_decay``,
``sgd_momentum``, ``batch_size``, ``momentum``, ``warmup_epochs`` (and optionally
``warmup_steps``) and make its momentum encoder with :meth:`add_momentum_copies` (or
extend :meth:`momentum_pairs`).
"""

from __future__ import annotations

import copy
import functools
import math

import pytorch_lightning as pl
import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

#: Reference batch size of the linear scaling rule (Goyal et al. 2017; MoCo: 0.03 / 256).
REFERENCE_BATCH_SIZE = 256


def scale_lr(base_lr: float, batch_size: int, world_size: int = 1, accumulate: int = 1) -> float:
    """Linear scaling rule: ``base_lr * batch_size * world_size * accumulate / 256``.

    ``base_lr`` is the learning rate for 256 images per optimiser step and
    ``batch_size`` the per-device batch size.
    """
    return base_lr * batch_size * world_size * accumulate / REFERENCE_BATCH_SIZE


def lr_factor(step: int, warmup_steps: int, total_steps: float) -> float:
    """Multiplier of the lr at optimiser step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps,
    then MoCo's cosine ``0.5 * (1 + cos(pi * t / T))`` with ``t`` the steps since the
    warm-up and ``T`` the steps after it (so the first step after warm-up uses the
    full lr and none uses 0); constant 1 after warm-up when ``total_steps`` is inf.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not math.isfinite(total_steps):
        return 1.0
    decay_steps = max(int(total_steps) - warmup_steps, 1)
    t = min(step - warmup_steps, decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * t / decay_steps))


class MomentumBaseline(pl.LightningModule):
    """Optimiser, schedules and momentum update shared by momentum-encoder baselines."""

    # -- momentum encoder ---------------------------------------------------------
    def add_momentum_copies(self, *names: str) -> None:
        """Adds ``<name>_momentum``, a frozen deep copy of the module ``<name>``, for each
        name in turn (e.g. ``"backbone", "projection_head"``).

        Each ``(<name>, <name>_momentum)`` pair is then one of :meth:`momentum_pairs`.
        """
        for name in names:
            momentum = copy.deepcopy(getattr(self, name))
            deactivate_requires_grad(momentum)
            setattr(self, f"{name}_momentum", momentum)
        self._momentum_names = (*getattr(self, "_momentum_names", ()), *names)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, momentum)`` module pairs updated by EMA each step.

        Those made by :meth:`add_momentum_copies`, in order; subclasses (and mixins)
        extend the list with ``super().momentum_pairs() + [...]``.
        """
        return [
            (getattr(self, name), getattr(self, f"{name}_momentum"))
            for name in getattr(self, "_momentum_names", ())
        ]

    def total_steps(self) -> float:
        """Number of optimiser steps of the run (``inf`` when the run is unbounded)."""
        return float(self.trainer.estimated_stepping_batches)

    def current_momentum(self) -> float:
        """EMA momentum at the current step: cosine from ``hparams.momentum`` to 1.

        As in BYOL/lightly; with ``momentum=0.999`` this stays within 0.001 of the
        constant MoCo-v2 value. Constant when the run length is unknown.
        """
        m = float(self.hparams.momentum)
        total = self.total_steps()
        if not math.isfinite(total):
            return m
        return cosine_schedule(min(self.global_step, int(total)), int(total), m, 1.0)

    @torch.no_grad()
    def update_momentum_encoders(self) -> float:
        """EMA-updates every pair of :meth:`momentum_pairs`; returns the momentum used."""
        m = self.current_momentum()
        for online, ema in self.momentum_pairs():
            update_momentum(online, ema, m=m)
        return m

    # -- logging --------------------------------------------------------------------
    def check_batch_size(self, batch_size: int, batch_idx: int) -> None:
        """Warns once if the batches do not hold ``hparams.batch_size`` images."""
        if self.global_step == 0 and batch_idx == 0 and batch_size != self.hparams.batch_size:
            rank_zero_warn(
                f"{type(self).__name__}: batch_size={self.hparams.batch_size} is used to "
                f"scale the lr, but the batches hold {batch_size} images per device."
            )

    def log_schedules(self, momentum: float, batch_size: int) -> None:
        """Logs the EMA momentum (``train/momentum``) and the lr (``train/lr``)."""
        self.log("train/momentum", momentum, on_step=True, batch_size=batch_size)
        self.log(
            "train/lr",
            self.trainer.optimizers[0].param_groups[0]["lr"],
            on_step=True,
            batch_size=batch_size,
        )

    # -- optimisation -------------------------------------------------------------
    def _world_size(self) -> int:
        return int(self.trainer.world_size)

    def scaled_lr(self) -> float:
        """The base ``lr`` scaled to the global batch size (see :func:`scale_lr`)."""
        return scale_lr(
            float(self.hparams.lr),
            int(self.hparams.batch_size),
            self._world_size(),
            int(self.trainer.accumulate_grad_batches),
        )

    def _warmup_steps(self, total: float) -> int:
        steps = int(self.hparams.get("warmup_steps", 0) or 0)
        epochs = int(self.hparams.get("warmup_epochs", 0) or 0)
        if steps <= 0 and epochs > 0:
            trainer = self.trainer
            if trainer.train_dataloader is None:
                trainer.fit_loop.setup_data()
            batches = trainer.num_training_batches
            if not math.isfinite(batches):
                raise ValueError(
                    "warmup_epochs needs a train dataloader with a length; use warmup_steps instead"
                )
            steps = epochs * math.ceil(batches / trainer.accumulate_grad_batches)
        if math.isfinite(total):
            steps = min(steps, int(total))
        return max(steps, 0)

    def configure_optimizers(self):
        """SGD with the linearly scaled lr and a per-step cosine schedule (MoCo-v2).

        * parameters: every parameter of the module with ``requires_grad`` (so
          parameters added by a subclass or mixin are trained too; the frozen momentum
          encoder is left out); weight decay on all of them, as in MoCo-v2;
        * ``lr = hparams.lr * batch_size * world_size * accumulate_grad_batches / 256``
          (``batch_size`` is the per-device batch size), printed once on rank 0 and
          stored in ``self.lr_scaled``; the current lr is logged as ``train/lr``;
        * schedule, stepped every optimiser step (:func:`lr_factor`): linear warm-up
          over ``warmup_steps`` (or ``warmup_epochs`` epochs), then MoCo's cosine decay
          towards 0 over the remaining ``trainer.estimated_stepping_batches``; constant
          after warm-up when the run length is unknown.
        """
        lr = self.scaled_lr()
        self.lr_scaled = lr
        self.print(
            f"{type(self).__name__}: lr = {self.hparams.lr} * {self.hparams.batch_size} "
            f"(batch) * {self._world_size()} (devices) * "
            f"{self.trainer.accumulate_grad_batches} (accumulation) / "
            f"{REFERENCE_BATCH_SIZE} = {lr:g}"
        )
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params,
            lr=lr,
            momentum=float(self.hparams.sgd_momentum),
            weight_decay=float(self.hparams.weight_decay),
        )
        total = self.total_steps()
        warmup = self._warmup_steps(total)
        if not math.isfinite(total):
            rank_zero_warn(
                "Run length unknown (max_steps=-1, max_epochs=-1): no cosine lr decay "
                "and constant EMA momentum."
            )
        factor = functools.partial(lr_factor, warmup_steps=warmup, total_steps=total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
