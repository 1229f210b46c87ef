"""The Poincaré embeddings of an HCL module during training: :class:`HyperbolicMonitor`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from lightly.utils import dist
from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from hcl_lightning.hyperbolic.geometry import ball_norm_fraction
from hcl_lightning.hyperbolic.pairing import class_level_ceiling, pairing_statistics

__all__ = ["HyperbolicMonitor", "ball_norm_fraction"]

#: Quantiles of the norm distribution that are logged, as (name, q).
QUANTILES = (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))


def _norm_stats(fractions: Tensor, name: str, prefix: str) -> dict[str, Tensor]:
    stats = {f"{prefix}/{name}_norm_mean": fractions.mean()}
    quantiles = torch.quantile(fractions, torch.tensor([q for _, q in QUANTILES]).to(fractions))
    for (label, _), value in zip(QUANTILES, quantiles, strict=True):
        stats[f"{prefix}/{name}_norm_{label}"] = value
    return stats


class HyperbolicMonitor(pl.Callback):
    """Logs the ball norms of an HCL module's scene and object embeddings; observes only.

    Every ``every_n_steps`` optimiser steps it writes, for the scene (query) and object
    (key) embeddings of the current batch, to every logger in ``trainer.loggers`` (at
    the row of Lightning's own step metrics):

    * ``{prefix}/scene_norm_{mean,p10,p50,p90}`` and ``{prefix}/object_norm_...``: the
      ball norm as a fraction of the radius ``1/sqrt(c)`` (scenes should end up farther
      out than objects), and ``{prefix}/norm_gap`` = scene mean - object mean;
    * ``{prefix}/boundary_fraction``: the fraction of embeddings within ``boundary_tol``
      (relative) of the radius; above ``boundary_warn`` a warning is issued once per fit;
    * ``{prefix}/clipped_fraction``: ``hcl_head.clipped_fraction`` (the outlier guard);
    * ``{prefix}/curvature``: ``c``, when it is learned;
    * with ``pairing=True``, under ``pairing_prefix``: what tells a learning scene-object
      objective from a stuck one (:func:`~hcl_lightning.hyperbolic.pairing.pairing_statistics`):
      the loss beside its chance value ``ln(K + 1)``, top-1 beside ``1/(K + 1)``, mean
      positive and negative distances, the share of negatives closer to a scene than
      its own object, the correlation of distance with key norm, the norm spread of the
      queue; and, when batches carry ``labels`` and ``scene_labels``, the class-level
      ceiling of the pairing on the current data (``class_ceiling_loss`` /
      ``class_ceiling_top1``, :func:`~hcl_lightning.hyperbolic.pairing.class_level_ceiling`).
      The negatives are the queue as the step's loss saw it (copied before the step);
      the classes of the queued keys are mirrored from every step's ``labels`` (rows
      not written since the fit began, such as the initial random rows, count as
      unknown: no class matches them). Not logged while ``hcl_lambda`` is 0;
    * with ``histograms``, ``{prefix}/scene_norm_hist`` and ``{prefix}/object_norm_hist``:
      the whole distributions of those norm fractions, to the loggers that draw
      histograms (Weights & Biases: a ``wandb.Histogram`` at the same row;
      TensorBoard: ``add_histogram``); other loggers (CSV) get none.

    The embeddings are ``pl_module.hcl_last_embeddings`` of this step when the module
    stores them, else ``pl_module.hcl_embed(batch)`` under ``no_grad`` with the BatchNorm
    running statistics restored afterwards: training is unchanged either way. The values
    go to the loggers directly, not through ``pl_module.log``, so they are not in
    ``trainer.callback_metrics`` (see the training page of the docs for why). Under DDP
    rank 0's values are written. Modules without ``hcl_head`` / ``hcl_embed`` are
    ignored. The λ warm-up is :class:`~hcl_lightning.callbacks.LambdaWarmup`.

    Args:
        every_n_steps: log every this many optimiser steps (>= 1).
        boundary_tol: relative distance to the radius that counts as "on the boundary".
        boundary_warn: boundary fraction above which a warning is issued.
        prefix: metric name prefix.
        pairing: also log the pairing statistics.
        pairing_prefix: metric name prefix of the pairing statistics.
        histograms: also log the norm histograms.

    Raises:
        ValueError: for an argument out of range.

    Example:
        >>> monitor = HyperbolicMonitor(every_n_steps=50)
        >>> trainer = pl.Trainer(callbacks=[monitor], log_every_n_steps=50)
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        boundary_tol: float = 1e-3,
        boundary_warn: float = 0.01,
        prefix: str = "train/ball",
        pairing: bool = True,
        pairing_prefix: str = "train/pairing",
        histograms: bool = True,
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if not 0 < boundary_tol < 1:
            raise ValueError(f"boundary_tol must lie in (0, 1), got {boundary_tol}")
        if not 0 <= boundary_warn <= 1:
            raise ValueError(f"boundary_warn must lie in [0, 1], got {boundary_warn}")
        self.every_n_steps = int(every_n_steps)
        self.boundary_tol = float(boundary_tol)
        self.boundary_warn = float(boundary_warn)
        self.prefix = prefix
        self.pairing = bool(pairing)
        self.pairing_prefix = pairing_prefix
        self.histograms = bool(histograms)
        self._last_step: int | None = None
        self._warned = False
        self._queue_labels: Tensor | None = None  # class of each queued key, -1 unknown
        self._queue_pointer = 0
        self._negatives: tuple[Tensor, Tensor | None] | None = None  # queue before the step
        #: The pairing statistics of the last logged step (names without prefix, and
        #: ``step``); empty before the first one.
        self.last_pairing: dict[str, float] = {}

    # -- helpers ------------------------------------------------------------------
    @staticmethod
    def _is_hcl(pl_module: pl.LightningModule) -> bool:
        return hasattr(pl_module, "hcl_head") and hasattr(pl_module, "hcl_embed")

    # -- hooks --------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not self._is_hcl(pl_module):
            return
        self._warned = False
        self._last_step = None
        self._queue_labels = None

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._is_hcl(pl_module):
            return
        if not self._due(trainer.global_step + 1):
            return
        if hasattr(pl_module, "hcl_last_embeddings"):
            pl_module.hcl_last_embeddings = None  # only this step's embeddings count
        queue = self._queue(pl_module)
        if self.pairing and queue is not None:
            labels = None if self._queue_labels is None else self._queue_labels.clone()
            self._negatives = (queue.bank.detach().clone(), labels)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pairing and self._is_hcl(pl_module):
            self._reset_queue_labels(pl_module)

    def _due(self, step: int) -> bool:
        return step % self.every_n_steps == 0 and step != self._last_step

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step  # already counts this batch's optimiser step
        if not self._is_hcl(pl_module) or not isinstance(batch, Mapping):
            return
        if self.pairing:
            self._track_queue(pl_module, batch)
        if not self._due(step):
            return
        self._last_step = step
        query, key = self._embeddings(pl_module, batch)
        metrics = self.compute_metrics(pl_module, query, key)
        if self.pairing:
            pairing = self.compute_pairing_metrics(pl_module, batch, query, key)
            metrics.update(pairing)
            if pairing:
                start = len(self.pairing_prefix) + 1
                self.last_pairing = {k[start:]: float(v) for k, v in pairing.items()}
                self.last_pairing["step"] = float(step)
        values = {name: float(value) for name, value in metrics.items()}
        row = trainer.fit_loop.epoch_loop._batches_that_stepped  # the row of Lightning's logs
        for logger in trainer.loggers:
            logger.log_metrics(values, step=row)
        if self.histograms and trainer.is_global_zero:
            self.log_histograms(trainer.loggers, pl_module, query, key, row)
        boundary = float(metrics[f"{self.prefix}/boundary_fraction"])
        if boundary > self.boundary_warn and not self._warned:
            self._warned = True
            rank_zero_warn(
                f"HyperbolicMonitor: at step {step}, {boundary:.1%} of the embeddings lie within "
                f"{self.boundary_tol:g} (relative) of the Poincaré ball's boundary, where "
                "gradients vanish; lower the curvature or the head's scale alpha "
                f"(watch {self.prefix}/boundary_fraction)."
            )

    # -- the queue's classes ---------------------------------------------------------
    @staticmethod
    def _queue(pl_module: pl.LightningModule) -> Any:
        return getattr(getattr(pl_module, "hcl_criterion", None), "queue", None)

    def _track_queue(self, pl_module: pl.LightningModule, batch: Mapping[str, Any]) -> None:
        """Mirrors the classes of the keys the queue took in at this step."""
        queue = self._queue(pl_module)
        if queue is None:
            return
        size, pointer = queue.size[0], int(queue.bank_ptr)
        if self._queue_labels is None or len(self._queue_labels) != size:
            self._reset_queue_labels(pl_module)
        written = (pointer - self._queue_pointer) % size
        self._queue_pointer = pointer
        if written == 0:
            return
        slots = (torch.arange(written, device=queue.bank.device) + pointer - written) % size
        labels = batch.get("labels")
        if labels is not None:
            if dist.world_size() > 1:  # the queue holds the keys of all ranks, in rank order
                labels = torch.cat(dist.gather(labels.contiguous()))
            labels = labels.reshape(-1)[-written:]
        if labels is None or len(labels) != written:
            self._queue_labels[slots] = -1
            return
        self._queue_labels[slots] = labels.to(self._queue_labels)

    def _reset_queue_labels(self, pl_module: pl.LightningModule) -> None:
        queue = self._queue(pl_module)
        if queue is not None:
            device = queue.bank.device
            self._queue_labels = torch.full((queue.size[0],), -1, dtype=torch.long, device=device)
            self._queue_pointer = int(queue.bank_ptr)

    # -- metrics ------------------------------------------------------------------
    def compute_pairing_metrics(
        self, pl_module: pl.LightningModule, batch: Mapping[str, Any], query: Tensor, key: Tensor
    ) -> dict[str, Tensor]:
        """Pairing statistics of this step's scenes and objects (see the class docstring)."""
        criterion = getattr(pl_module, "hcl_criterion", None)
        if criterion is None or getattr(pl_module, "hcl_lambda", None) == 0:
            return {}  # at λ = 0 no loss is computed and the queue stays as initialised
        queue = self._queue(pl_module)
        negatives = negative_labels = None
        if queue is not None:
            if self._negatives is None:  # the step began before this callback was attached
                return {}
            negatives, negative_labels = self._negatives
            self._negatives = None
        elif query.shape[0] < 2:
            return {}
        stats = pairing_statistics(
            query, key, negatives, pl_module.hcl_head.curvature.detach(), criterion.temperature
        )
        labels, scene_labels = batch.get("labels"), batch.get("scene_labels")
        if (
            labels is not None
            and scene_labels is not None
            and (queue is None or negative_labels is not None)
        ):
            ceiling = class_level_ceiling(scene_labels, labels, negative_labels)
            if ceiling["rows"] > 0:
                stats["class_ceiling_loss"] = ceiling["loss"]
                stats["class_ceiling_top1"] = ceiling["top1"]
        p = self.pairing_prefix
        return {
            f"{p}/{name}": value.detach().float().to(query.device) for name, value in stats.items()
        }

    def _embeddings(
        self, pl_module: pl.LightningModule, batch: Mapping[str, Any]
    ) -> tuple[Tensor, Tensor]:
        stored = getattr(pl_module, "hcl_last_embeddings", None)
        if stored is not None:
            query, key = stored
            return query.detach(), key.detach()
        norms = [m for m in pl_module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [{n: b.clone() for n, b in m.named_buffers(recurse=False)} for m in norms]
        try:
            with torch.no_grad():
                query, key = pl_module.hcl_embed(batch)
        finally:
            with torch.no_grad():
                for module, buffers in zip(norms, saved, strict=True):
                    for name, value in buffers.items():
                        getattr(module, name).copy_(value)
        return query.detach(), key.detach()

    def log_histograms(
        self,
        loggers: Sequence[Logger],
        pl_module: pl.LightningModule,
        query: Tensor,
        key: Tensor,
        step: int,
    ) -> None:
        """The scene (``query``) and object (``key``) norm fractions as histograms, to the
        ``loggers`` that draw them (W&B, TensorBoard), at ``step``."""
        curvature = pl_module.hcl_head.curvature.detach()
        hists = {
            f"{self.prefix}/{name}_norm_hist": ball_norm_fraction(x, curvature).float().cpu()
            for name, x in (("scene", query), ("object", key))
        }
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                logger.log_metrics(
                    {tag: wandb.Histogram(v.numpy()) for tag, v in hists.items()}, step=step
                )
            elif isinstance(logger, TensorBoardLogger):
                for tag, values in hists.items():
                    logger.experiment.add_histogram(tag, values, global_step=step)

    def compute_metrics(
        self, pl_module: pl.LightningModule, query: Tensor, key: Tensor
    ) -> dict[str, Tensor]:
        """The logged statistics of scene (``query``) and object (``key``) ball points."""
        head = pl_module.hcl_head
        curvature = head.curvature.detach()
        scene = ball_norm_fraction(query, curvature)
        objects = ball_norm_fraction(key, curvature)
        p = self.prefix
        metrics = {**_norm_stats(scene, "scene", p), **_norm_stats(objects, "object", p)}
        metrics[f"{p}/norm_gap"] = scene.mean() - objects.mean()
        both = torch.cat([scene, objects])
        metrics[f"{p}/boundary_fraction"] = (both >= 1 - self.boundary_tol).float().mean()
        clipped = getattr(head, "clipped_fraction", None)
        if clipped is not None:
            metrics[f"{p}/clipped_fraction"] = clipped.detach().float()
        if getattr(getattr(head, "ball", None), "isp_c", None) is not None and (
            head.ball.isp_c.requires_grad
        ):
            metrics[f"{p}/curvature"] = curvature.float()
        return {k: v.detach().to(query.device) for k, v in metrics.items()}
