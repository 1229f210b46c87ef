"""Shared training logic for momentum-encoder baselines (MoCo-v2, DenseCL, ORL).

Modelled on solo-learn's ``methods/base.py`` split: this base owns the optimiser, the
linear learning-rate scaling, the cosine learning-rate and momentum schedules and the
momentum update; each method adds only its encoder, projector and loss. There is no
``__init__`` here, so the method's ``__init__`` (and ``save_hyperparameters``) stays the
single place that defines the hyperparameters, and cooperative ``super()`` chains work.

A subclass must define ``self.hparams`` entries ``lr``, ``weight_decay``,
``sgd_momentum``, ``batch_size``, ``momentum``, ``warmup_epochs`` (and optionally
``warmup_steps``) and make its momentum encoder with :meth:`add_momentum_copies` (or
extend :meth:`momentum_pairs`). Optional ``hparams`` entries ``channels_last``,
``compile_backbone`` and ``compile_mode`` (check them with :func:`check_speed_options`)
turn on the speed options applied in :meth:`MomentumBaseline.configure_model`.
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from hcl_lightning.checks import ArgumentError, check_number

#: Reference batch size of the linear scaling rule (Goyal et al. 2017; MoCo: 0.03 / 256).
REFERENCE_BATCH_SIZE = 256

#: ``compile_mode`` values (``torch.compile``'s ``mode``; inductor backend only).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Lightning warns that a module's ``on_after_batch_transfer`` (here: the channels_last
# layout) is used instead of a datamodule's; that is intended, and no user can act on it.
warnings.filterwarnings(
    "ignore", message="You have overridden `on_after_batch_transfer` in `LightningModule`"
)


def compile_backend(compile_backbone: bool | str) -> str | None:
    """The ``torch.compile`` backend ``compile_backbone`` asks for; ``None``: no compile.

    ``False``: none; ``True``: ``"inductor"`` (torch's default); a string: that backend.
    """
    if compile_backbone is True:
        return "inductor"
    return compile_backbone or None


def check_baseline_arguments(
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    temperature: float | None = None,
    queue_size: int | None = None,
) -> None:
    """Raises ``ArgumentError`` (a ``ValueError``) for a baseline argument out of range.

    Arguments left ``None`` are not checked (not every baseline has them).

    Args:
        lr: base learning rate per 256 images, > 0.
        momentum: EMA momentum of the key encoder, in [0, 1].
        weight_decay: >= 0.
        temperature: InfoNCE temperature, > 0.
        queue_size: keys in a MoCo queue, an integer >= 1.
    """
    checks = (
        ("lr", lr, "> 0", lambda v: v > 0, False),
        ("momentum", momentum, "in [0, 1]", lambda v: 0 <= v <= 1, False),
        ("weight_decay", weight_decay, ">= 0", lambda v: v >= 0, False),
        ("temperature", temperature, "> 0", lambda v: v > 0, False),
        ("queue_size", queue_size, ">= 1", lambda v: v >= 1, True),
    )
    for name, value, allowed, ok, integer in checks:
        if value is not None:
            check_number(name, value, allowed, ok, integer=integer)


def check_speed_options(
    channels_last: bool, compile_backbone: bool | str, compile_mode: str | None
) -> None:
    """Raises ``ArgumentError`` (a ``ValueError``), naming the argument, for a speed
    option that cannot work.

    Args:
        channels_last: ``True`` or ``False``.
        compile_backbone: ``False``, ``True`` or a backend of
            ``torch.compiler.list_backends(exclude_tags=())`` (``"inductor"``,
            ``"aot_eager"``, ``"eager"``, ``"cudagraphs"``, ...).
        compile_mode: ``None`` or one of :data:`COMPILE_MODES`; inductor only.
    """

    def error(name: str, value: Any, requirement: str) -> ArgumentError:
        return ArgumentError(name, value, requirement, message=f"{name}={value!r}{requirement}")

    if not isinstance(channels_last, bool):
        raise error("channels_last", channels_last, ": must be true or false")
    backends = torch.compiler.list_backends(exclude_tags=())
    if not isinstance(compile_backbone, bool) and compile_backbone not in backends:
        raise error(
            "compile_backbone",
            compile_backbone,
            f": must be false, true (inductor) or a torch.compile backend: {', '.join(backends)}",
        )
    if compile_mode is None:
        return
    if compile_mode not in COMPILE_MODES:
        raise error(
            "compile_mode", compile_mode, f": must be null or one of {', '.join(COMPILE_MODES)}"
        )
    if compile_backend(compile_backbone) != "inductor":
        raise error(
            "compile_mode",
            compile_mode,
            f" needs compile_backbone=true or 'inductor' (got {compile_backbone!r}): modes "
            "are options of the inductor backend",
        )


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


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

    # -- speed options ----------------------------------------------------------------
    def compile_targets(self) -> list[nn.Module]:
        """Modules compiled with ``compile_backbone``: ``backbone`` and ``backbone_momentum``.

        Subclasses whose steps call parts of the backbone rather than its ``forward``
        return those parts instead.
        """
        return [getattr(self, n) for n in ("backbone", "backbone_momentum") if hasattr(self, n)]

    def configure_model(self) -> None:
        """Applies the speed options of ``hparams`` once (Lightning calls this in every fit).

        * ``channels_last``: every 4-d parameter and buffer (convolution weights) is
          converted to ``torch.channels_last``; input images follow in
          :meth:`on_after_batch_transfer`. The values do not change, only their layout.
        * ``compile_backbone`` / ``compile_mode``: each module of
          :meth:`compile_targets` is compiled in place with
          :meth:`torch.nn.Module.compile`, so the module stays what it was and its
          ``state_dict`` keeps its keys (``torch.compile(module)`` would return a
          wrapper whose keys start with ``_orig_mod.``). Compilation happens on the
          first call; EMA updates and checkpoints see the same parameters.
        """
        super().configure_model()
        if getattr(self, "_speed_options_applied", False):
            return
        if self.hparams.get("channels_last", False):
            self.to(memory_format=torch.channels_last)
        backend = compile_backend(self.hparams.get("compile_backbone", False))
        if backend is not None:
            for module in self.compile_targets():
                module.compile(backend=backend, mode=self.hparams.get("compile_mode"))
        self._speed_options_applied = True

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``channels_last``, every 4-d tensor of the batch in ``channels_last``."""
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        if self.hparams.get("channels_last", False):
            batch = apply_to_collection(batch, Tensor, _channels_last)
        return batch

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
