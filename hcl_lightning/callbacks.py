"""Lightning callbacks of hcl_lightning: :class:`HyperbolicMonitor`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

__all__ = ["HyperbolicMonitor", "ball_norm_fraction"]

#: Quantiles of the norm distribution that are logged, as (name, q).
QUANTILES = (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))


def ball_norm_fraction(points: Tensor, curvature: float | Tensor) -> Tensor:
    """Euclidean norms of ball points as a fraction of the radius ``1/sqrt(c)``, in [0, 1)."""
    c = curvature.detach() if isinstance(curvature, Tensor) else torch.tensor(float(curvature))
    return points.detach().float().norm(dim=-1) * c.to(points.device).float().sqrt()


def _norm_stats(fractions: Tensor, name: str, prefix: str) -> dict[str, Tensor]:
    stats = {f"{prefix}/{name}_norm_mean": fractions.mean()}
    quantiles = torch.quantile(fractions, torch.tensor([q for _, q in QUANTILES]).to(fractions))
    for (label, _), value in zip(QUANTILES, quantiles, strict=True):
        stats[f"{prefix}/{name}_norm_{label}"] = value
    return stats


class HyperbolicMonitor(pl.Callback):
    """Watches the Poincaré embeddings of an HCL module during training; warms λ up.

    Every ``every_n_steps`` optimiser steps (checked in ``on_train_batch_end``) it writes
    to every attached Lightning logger (``trainer.loggers``, at the step index of
    Lightning's own rows, as Lightning's ``LearningRateMonitor`` does), for the scene
    (query) and object (key) embeddings of the current batch:

    * ``{prefix}/scene_norm_{mean,p10,p50,p90}`` and ``{prefix}/object_norm_...``: the
      ball norm as a fraction of the radius ``1/sqrt(c)`` (HCL's signal: scenes should
      end up farther out than objects), and ``{prefix}/norm_gap`` = scene mean - object
      mean;
    * ``{prefix}/boundary_fraction``: the fraction of all embeddings whose norm is within
      ``boundary_tol`` (relative) of the radius, where gradients vanish; above
      ``boundary_warn`` a warning is issued (once per fit);
    * ``{prefix}/clipped_fraction``: ``hcl_head.clipped_fraction`` (the outlier guard);
    * ``{prefix}/curvature``: ``c``, when it is learned.

    The embeddings are those the module stored for this step in
    ``pl_module.hcl_last_embeddings`` (a detached ``(query, key)`` pair) when it stores
    them; otherwise they are recomputed with ``pl_module.hcl_embed(batch)`` under
    ``no_grad`` on the logging steps only, with BatchNorm running statistics restored
    afterwards so the extra forward pass does not change training.

    With ``lambda_warmup_steps > 0`` it also sets ``pl_module.hcl_lambda`` before every
    training batch to ``target * min(1, global_step / lambda_warmup_steps)``, linear
    from 0 to ``target`` (the module's ``hcl_lambda`` when the fit starts, or
    ``target_lambda``), and logs it as ``train/hcl_lambda``. As the value is a function
    of ``trainer.global_step`` alone, a resumed run continues the warm-up where it was.
    While λ is 0 the mixin skips the hyperbolic branch, exactly as the baseline.

    The statistics go to the loggers directly rather than through ``pl_module.log``:
    Lightning writes ``self.log`` step values only every ``log_every_n_steps`` steps, and
    re-writes a value logged once on every later row of the epoch, so a metric logged
    every ``n`` steps would be dropped or repeated. They are therefore not in
    ``trainer.callback_metrics``. ``train/hcl_lambda``, set every step, goes through
    ``pl_module.log``. Under DDP every rank computes its batch's statistics (the key
    encoder's shuffle-BN is a collective) and rank 0's are written.

    Args:
        every_n_steps: log every this many optimiser steps (>= 1).
        boundary_tol: relative distance to the radius that counts as "on the boundary".
        boundary_warn: boundary fraction above which a warning is issued.
        lambda_warmup_steps: steps of the linear λ warm-up (0: none).
        target_lambda: final λ of the warm-up (default: the module's ``hcl_lambda``).
        prefix: metric name prefix.

    Example:
        >>> trainer = pl.Trainer(callbacks=[HyperbolicMonitor(every_n_steps=50,
        ...                                                   lambda_warmup_steps=1000)],
        ...                      log_every_n_steps=50)
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        boundary_tol: float = 1e-3,
        boundary_warn: float = 0.01,
        lambda_warmup_steps: int = 0,
        target_lambda: float | None = None,
        prefix: str = "train/ball",
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if not 0 < boundary_tol < 1:
            raise ValueError(f"boundary_tol must lie in (0, 1), got {boundary_tol}")
        if not 0 <= boundary_warn <= 1:
            raise ValueError(f"boundary_warn must lie in [0, 1], got {boundary_warn}")
        if lambda_warmup_steps < 0:
            raise ValueError(f"lambda_warmup_steps must be >= 0, got {lambda_warmup_steps}")
        if target_lambda is not None and not (math.isfinite(target_lambda) and target_lambda >= 0):
            raise ValueError(f"target_lambda must be a finite number >= 0, got {target_lambda!r}")
        self.every_n_steps = int(every_n_steps)
        self.boundary_tol = float(boundary_tol)
        self.boundary_warn = float(boundary_warn)
        self.lambda_warmup_steps = int(lambda_warmup_steps)
        self.target_lambda = target_lambda
        self.prefix = prefix
        self._last_step: int | None = None
        self._warned = False

    # -- helpers ------------------------------------------------------------------
    @staticmethod
    def _is_hcl(pl_module: pl.LightningModule) -> bool:
        return hasattr(pl_module, "hcl_head") and hasattr(pl_module, "hcl_embed")

    def lambda_at(self, step: int) -> float:
        """λ of the warm-up at optimiser step ``step`` (needs ``target_lambda`` set)."""
        if self.target_lambda is None:
            raise RuntimeError("target_lambda is unknown before the fit starts")
        if self.lambda_warmup_steps == 0:
            return float(self.target_lambda)
        return float(self.target_lambda) * min(1.0, step / self.lambda_warmup_steps)

    # -- hooks --------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not self._is_hcl(pl_module):
            return
        self._warned = False
        self._last_step = None
        if self.lambda_warmup_steps and self.target_lambda is None:
            # Read once: the module's value is overwritten during the warm-up.
            self.target_lambda = float(pl_module.hcl_lambda)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._is_hcl(pl_module):
            return
        if self._due(trainer.global_step + 1) and hasattr(pl_module, "hcl_last_embeddings"):
            pl_module.hcl_last_embeddings = None  # only this step's embeddings count
        if self.lambda_warmup_steps:
            lam = self.lambda_at(trainer.global_step)
            pl_module.hcl_lambda = lam
            pl_module.log("train/hcl_lambda", lam, on_step=True, on_epoch=False)

    def _due(self, step: int) -> bool:
        return step % self.every_n_steps == 0 and step != self._last_step

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
