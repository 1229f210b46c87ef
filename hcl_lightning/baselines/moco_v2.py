"""MoCo-v2 (Chen et al. 2020) as a lightly-built LightningModule.

- [0] MoCo v1, He et al. 2020, https://arxiv.org/abs/1911.05722
- [1] MoCo v2, Chen et al. 2020, https://arxiv.org/abs/2003.04297
- [2] HCL, Ge et al. CVPR 2023, https://arxiv.org/abs/2212.00653
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from torch import Tensor

from hcl_lightning.baselines.backbones import build_resnet
from hcl_lightning.baselines.base import (
    MomentumBaseline,
    check_baseline_arguments,
    check_speed_options,
)
from hcl_lightning.distributed import shuffle_bn
from hcl_lightning.memory_bank import persistent_bank
from hcl_lightning.mixin import HCLMixin


class MoCoV2(MomentumBaseline):
    """MoCo-v2 with a symmetric loss and shuffle-BN, defaults as in the paper [1].

    ResNet encoder + 2-layer MLP head (2048-d hidden, 128-d output), a momentum
    encoder updated with ``m = 0.999`` (cosine-scheduled to 1 over the run), InfoNCE
    with temperature 0.2 against a queue of 65536 keys, SGD (momentum 0.9, weight
    decay 1e-4, lr 0.03 per 256 images, cosine decay).

    The loss is symmetrised as in the HCL code [2]:
    ``0.5 * (criterion_a(q0, k1) + criterion_b(q1, k0))``, with two
    :class:`lightly.loss.NTXentLoss` instances and hence two queues (the original's
    ``queue_p``/``queue_c``): ``criterion_a``'s queue receives ``k1`` and
    ``criterion_b``'s receives ``k0``. One shared queue would make ``k1`` a negative
    for ``q1``, a view of the same image. Keys are gathered across devices before
    they are enqueued, as in MoCo; the queues are persistent buffers, so a resumed
    run continues with its queues.

    Attribute names follow lightly (``backbone``, ``projection_head``,
    ``backbone_momentum``, ``projection_head_momentum``), which ``HCLMixin`` relies
    on. All constructor arguments are keyword arguments, so the class can be combined
    cooperatively, e.g. ``class HCLMoCoV2(HCLMixin, MoCoV2)``.

    Args:
        backbone: torchvision ResNet name (see :func:`build_resnet`).
        small_input: CIFAR-style stem for 32-96 px images.
        proj_hidden_dim: hidden width of the projection MLP.
        out_dim: output dimension of the projection MLP.
        temperature: InfoNCE temperature.
        queue_size: number of keys in each of the two queues.
        momentum: initial EMA momentum of the key encoder.
        lr: learning rate per 256 images (scaled linearly with the global batch).
        weight_decay: SGD weight decay.
        sgd_momentum: SGD momentum.
        batch_size: per-device batch size, used for the lr scaling.
        warmup_epochs: epochs of linear lr warm-up (0: none, as in MoCo-v2).
        warmup_steps: optimiser steps of linear lr warm-up; overrides
            ``warmup_epochs`` when > 0.
        channels_last: convert the model and the input images to
            ``torch.channels_last`` (see :meth:`MomentumBaseline.configure_model`).
        compile_backbone: compile the online and momentum backbones in place:
            ``False``, ``True`` (inductor) or a ``torch.compile`` backend name.
        compile_mode: ``torch.compile`` mode (inductor only), e.g. ``"max-autotune"``.

    Examples:
        >>> model = MoCoV2(backbone="resnet18", small_input=True, batch_size=256)
        >>> trainer = pl.Trainer(max_epochs=200, accelerator="gpu", devices=8,
        ...                      strategy="ddp", sync_batchnorm=False)
        >>> trainer.fit(model, train_dataloaders=loader)  # yields ((x0, x1), y, names)
    """

    def __init__(
        self,
        *,
        backbone: str = "resnet50",
        small_input: bool = False,
        proj_hidden_dim: int = 2048,
        out_dim: int = 128,
        temperature: float = 0.2,
        queue_size: int = 65536,
        momentum: float = 0.999,
        lr: float = 0.03,
        weight_decay: float = 1e-4,
        sgd_momentum: float = 0.9,
        batch_size: int = 256,
        warmup_epochs: int = 0,
        warmup_steps: int = 0,
        channels_last: bool = False,
        compile_backbone: bool | str = False,
        compile_mode: str | None = None,
    ) -> None:
        super().__init__()
        check_baseline_arguments(lr, momentum, weight_decay, temperature, queue_size)
        check_speed_options(channels_last, compile_backbone, compile_mode)
        self.save_hyperparameters()

        self.backbone, self.feat_dim = build_resnet(backbone, small_input=small_input)
        self.projection_head = MoCoProjectionHead(self.feat_dim, proj_hidden_dim, out_dim)
        self.add_momentum_copies("backbone", "projection_head")

        # Two losses, two queues: criterion_a contrasts q0 with k1, criterion_b q1 with k0.
        self.criterion_a = NTXentLoss(
            temperature=temperature,
            memory_bank_size=(queue_size, out_dim),
            gather_distributed=True,
        )
        self.criterion_b = NTXentLoss(
            temperature=temperature,
            memory_bank_size=(queue_size, out_dim),
            gather_distributed=True,
        )
        for criterion in (self.criterion_a, self.criterion_b):
            persistent_bank(criterion.memory_bank)  # MoCo checkpoints its queues

    # -- encoders -------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Query projection ``(B, out_dim)`` from the online encoder (not normalised)."""
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    @torch.no_grad()
    def forward_momentum(self, x: Tensor) -> Tensor:
        """Key projection ``(B, out_dim)`` from the momentum encoder, with shuffle-BN.

        The batch is shuffled (across devices under DDP) before the momentum encoder
        and unshuffled after it, so that BatchNorm statistics cannot leak which query
        and key belong together.
        """

        def encoder(x: Tensor) -> Tensor:
            return self.projection_head_momentum(self._momentum_features(x))

        return shuffle_bn(encoder, x).detach()

    def _momentum_features(self, x: Tensor) -> Tensor:
        return self.backbone_momentum(x).flatten(start_dim=1)

    # -- training ---------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        """One MoCo-v2 step on a lightly-style batch ``((x0, x1), labels, names)``."""
        return self._step(batch, batch_idx)[0]

    def hcl_batched_step(
        self, batch, batch_idx: int, query_extra: Tensor, key_extra: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`training_step` with extra crops in the same two encoder passes.

        The hook of :class:`~hcl_lightning.HCLMixin`'s ``hcl_batched_forward``: one
        online backbone pass on ``cat[x0, x1, query_extra]`` and one momentum backbone
        pass, with shuffle-BN, on ``cat[x0, x1, key_extra]`` replace the four view
        passes of :meth:`training_step` and the mixin's two extra passes. Loss, queue
        updates, EMA update and logging are those of :meth:`training_step`; the
        projection heads (MLPs without BatchNorm) run on the view rows only. In train
        mode BatchNorm normalises the views together with the extra crops, so the
        result differs from the separate passes; in eval mode it is the same.

        Args:
            batch: lightly-style batch ``((x0, x1), labels, names)``.
            batch_idx: index of the batch.
            query_extra: ``(M, 3, H, W)`` crops for the online encoder (HCL: scenes),
                of the views' shape.
            key_extra: ``(M', 3, H, W)`` crops for the momentum encoder (HCL: objects).

        Returns:
            ``(loss, query_features, key_features)``: the MoCo-v2 loss, the online
            backbone features ``(M, feat_dim)`` of ``query_extra`` (with gradient) and
            the momentum backbone features ``(M', feat_dim)`` of ``key_extra``
            (without).
        """
        return self._step(batch, batch_idx, (query_extra, key_extra))

    def _step(self, batch, batch_idx: int, extra: tuple[Tensor, Tensor] | None = None):
        """``(loss, *extra features)`` of a MoCo-v2 step; see :meth:`hcl_batched_step`."""
        views = batch[0]
        x0, x1 = views[0], views[1]
        n = x0.shape[0]
        self.check_batch_size(n, batch_idx)
        m = self.update_momentum_encoders()

        if extra is None:
            q0, q1 = self.forward(x0), self.forward(x1)
            k0, k1 = self.forward_momentum(x0), self.forward_momentum(x1)
            extra_features = ()
        else:
            query_features = self.backbone(torch.cat([x0, x1, extra[0]])).flatten(start_dim=1)
            key_features = shuffle_bn(self._momentum_features, torch.cat([x0, x1, extra[1]]))
            q0, q1 = self.projection_head(query_features[: 2 * n]).split(n)
            with torch.no_grad():
                k0, k1 = self.projection_head_momentum(key_features[: 2 * n]).split(n)
            extra_features = (query_features[2 * n :], key_features[2 * n :])
        loss = 0.5 * (self.criterion_a(q0, k1) + self.criterion_b(q1, k0))

        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=n)
        self.log_schedules(m, batch_size=n)
        return (loss, *extra_features)


class HCLMoCoV2(HCLMixin, MoCoV2):
    """MoCo-v2 with HCL's hyperbolic scene-object loss: ``L = L_moco + λ·L_hyp``.

    Takes the ``hcl_*`` arguments of :class:`~hcl_lightning.HCLMixin` and every
    :class:`MoCoV2` argument; trains on HCL batches (see
    :class:`~hcl_lightning.data.HCLDataModule`).

    Example:
        >>> model = HCLMoCoV2(hcl_lambda=0.1, hcl_tau=0.2, backbone="resnet18",
        ...                   small_input=True, batch_size=64)
    """
