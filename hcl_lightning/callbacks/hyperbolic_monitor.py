"""The Poincaré embeddings of an HCL module during training: :class:`HyperbolicMonitor`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from hcl_lightning.hyperbolic.geometry import ball_norm_fraction

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
        self.histograms = bool(histograms)
        self._last_step: int | None = None
        self._warned = False

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

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._is_hcl(pl_module):
            return
        if self._due(trainer.global_step + 1) and hasattr(pl_module, "hcl_last_embeddings"):
            pl_module.hcl_last_embeddings = None  # only this step's embeddings count

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
        if not self._is_hcl(pl_module) or not isinstance(batch, Mapping) or not self._due(step):
            return
        self._last_step = step
        query, key = self._embeddings(pl_module, batch)
        metrics = self.compute_metrics(pl_module, query, key)
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

    # -- metrics ------------------------------------------------------------------
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
