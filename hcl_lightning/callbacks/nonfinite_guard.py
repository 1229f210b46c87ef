"""Steps with a NaN/inf loss or gradient are skipped: :class:`NonFiniteGuard`."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from hcl_lightning.checks import check_number

__all__ = ["COMPONENT_METRICS", "NonFiniteGuard", "NonFiniteLossError"]

#: Loss components and the metric each is logged under (by the baseline / the mixin).
COMPONENT_METRICS = {"euclidean": "train/loss_euc", "hyperbolic": "train/loss_hyp"}
#: Parameters whose name starts with this belong to the hyperbolic branch.
HYPERBOLIC_PREFIX = "hcl_"
MAX_NAMED_PARAMETERS = 3


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many consecutive steps with a non-finite loss or gradient."""


def _is_finite(value: Any) -> bool:
    if isinstance(value, Tensor):
        return bool(torch.isfinite(value.detach()).all())
    try:
        return bool(torch.isfinite(torch.as_tensor(float(value))))
    except (TypeError, ValueError):
        return True


class NonFiniteGuard(pl.Callback):
    """Skips optimiser steps whose loss or gradients are not finite; stops after N in a row.

    When the loss handed to ``backward`` or a gradient is NaN or inf, the step is
    skipped (gradients set to ``None``: parameters and optimiser state are unchanged),
    the module's buffers (BatchNorm statistics, queues) are restored to their values
    before the step, and the offending component is named in a warning and counted:
    ``euclidean`` (``train/loss_euc``) and/or ``hyperbolic`` (``train/loss_hyp``), or
    for gradients the parameters (``hcl_*`` ones are hyperbolic); logged as
    ``train/nonfinite_steps``, ``train/nonfinite_euclidean`` and
    ``train/nonfinite_hyperbolic``. After ``max_consecutive`` bad steps in a row
    training stops with :class:`NonFiniteLossError`; the module then holds the last good
    state and no checkpoint with a poisoned state is written. With ``16-mixed`` an
    overflow of the scaled gradients alone is left to the gradient scaler; under DDP all
    ranks skip the same steps (the numerics page of the docs has the details).

    Args:
        max_consecutive: bad steps in a row that stop training (an integer >= 1).
        restore_buffers: restore the module's buffers after a bad step.
        check_gradients: also check gradients (costs one reduction per parameter).

    Raises:
        ArgumentError: (a ``ValueError``) for a ``max_consecutive`` out of range.

    Example:
        >>> trainer = pl.Trainer(callbacks=[NonFiniteGuard(max_consecutive=5)])
    """

    def __init__(
        self, max_consecutive: int = 5, restore_buffers: bool = True, check_gradients: bool = True
    ) -> None:
        super().__init__()
        check_number("max_consecutive", max_consecutive, ">= 1", lambda v: v >= 1, integer=True)
        self.max_consecutive = int(max_consecutive)
        self.restore_buffers = bool(restore_buffers)
        self.check_gradients = bool(check_gradients)
        self.consecutive = 0
        self.total = 0
        self.by_component: dict[str, int] = {"euclidean": 0, "hyperbolic": 0}
        self.last_good_step: int | None = None
        self._snapshot: dict[str, Tensor] | None = None
        self._bad_loss: list[float] = []

    # -- state of one optimiser step ------------------------------------------------
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.restore_buffers and self._snapshot is None:  # first micro-batch of a step
            self._snapshot = {
                name: buffer.detach().clone() for name, buffer in pl_module.named_buffers()
            }

    @override
    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        if not _is_finite(loss):
            self._bad_loss.append(float(loss.detach().float().sum()))

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        try:
            self._check_step(trainer, pl_module, optimizer)
        finally:
            self._snapshot = None
            self._bad_loss = []

    def _check_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        bad_params = self._nonfinite_gradients(pl_module) if self.check_gradients else []
        loss_bad = bool(self._bad_loss)
        if bad_params and not loss_bad and getattr(trainer.precision_plugin, "scaler", None):
            bad_params = []  # fp16 overflow: the gradient scaler skips this step itself
        bad = trainer.strategy.reduce_boolean_decision(loss_bad or bool(bad_params), all=False)
        if not bad:
            self.consecutive = 0
            self.last_good_step = trainer.global_step
            return

        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        if self._snapshot is not None:
            with torch.no_grad():
                for name, buffer in pl_module.named_buffers():
                    saved = self._snapshot.get(name)
                    if saved is not None and saved.shape == buffer.shape:
                        buffer.copy_(saved)
        components, detail = self._diagnose(trainer, loss_bad, bad_params)
        self.consecutive += 1
        self.total += 1
        for component in components:
            self.by_component[component] = self.by_component.get(component, 0) + 1
        step = trainer.global_step
        message = (
            f"non-finite {' and '.join(components) or 'loss'} at step {step}: {detail}; "
            f"step skipped ({self.consecutive} in a row, {self.total} in total)"
        )
        pl_module.log_dict(
            {
                "train/nonfinite_steps": float(self.total),
                **{f"train/nonfinite_{c}": float(n) for c, n in self.by_component.items()},
            },
            on_step=True,
            on_epoch=False,
        )
        if self.consecutive >= self.max_consecutive:
            last = (
                f"the last good step was {self.last_good_step}"
                if self.last_good_step is not None
                else "no step was good"
            )
            raise NonFiniteLossError(
                f"NonFiniteGuard: {self.consecutive} consecutive steps with a {message}. "
                f"Training stopped; {last} and the module holds its state (bad updates were "
                "skipped and buffers restored); checkpoints written so far are untouched. "
                "Lower the learning rate or hcl.lam, check the data, or raise "
                "max_consecutive."
            )
        rank_zero_warn(f"NonFiniteGuard: {message}")

    # -- diagnosis -------------------------------------------------------------------
    @staticmethod
    def _nonfinite_gradients(pl_module: pl.LightningModule) -> list[str]:
        grads = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        if not grads:
            return []
        flags = torch.stack([torch.isfinite(g).all() for _, g in grads])
        if bool(flags.all()):
            return []
        return [name for (name, _), ok in zip(grads, flags.tolist(), strict=True) if not ok]

    def _diagnose(
        self, trainer: pl.Trainer, loss_bad: bool, bad_params: list[str]
    ) -> tuple[list[str], str]:
        """The offending components and a description of the bad values."""
        if loss_bad:
            metrics = trainer.callback_metrics
            values = {
                component: metrics[key]
                for component, key in COMPONENT_METRICS.items()
                if key in metrics
            }
            components = [c for c, v in values.items() if not _is_finite(v)]
            shown = ", ".join(f"{COMPONENT_METRICS[c]}={float(v):g}" for c, v in values.items())
            detail = f"loss={self._bad_loss[0]:g}" + (f" ({shown})" if shown else "")
            if not values:  # a plain baseline: its loss is the Euclidean one
                components = ["euclidean"]
            return components, detail
        components = sorted(
            {
                "hyperbolic" if name.startswith(HYPERBOLIC_PREFIX) else "euclidean"
                for name in bad_params
            }
        )
        names = ", ".join(bad_params[:MAX_NAMED_PARAMETERS])
        more = len(bad_params) - MAX_NAMED_PARAMETERS
        detail = f"gradient of {names}" + (f" and {more} more parameters" if more > 0 else "")
        return components, detail

    # -- checkpointing -------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_component": dict(self.by_component)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total = int(state_dict.get("total", 0))
        self.by_component = dict(state_dict.get("by_component", self.by_component))
