"""DenseCL (Wang et al., CVPR 2021) as a lightly-built LightningModule.

- [0] DenseCL, Wang et al. 2021, https://arxiv.org/abs/2011.09157,
  code: https://github.com/WXinlong/DenseCL (``openselfsup/models/densecl.py``)
- [1] MoCo v2, Chen et al. 2020, https://arxiv.org/abs/2003.04297
- [2] HCL, Ge et al. CVPR 2023, https://arxiv.org/abs/2212.00653
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules import DenseCLProjectionHead
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.models.utils import select_most_similar
from torch import Tensor, nn

from hcl_lightning.baselines.backbones import build_resnet
from hcl_lightning.baselines.base import (
    MomentumBaseline,
    check_baseline_arguments,
    check_speed_options,
)
from hcl_lightning.distributed import shuffle_bn
from hcl_lightning.memory_bank import persistent_bank
from hcl_lightning.mixin import HCLMixin

__all__ = ["DenseCL", "HCLDenseCL", "dense_info_nce", "resnet_feature_map"]


def resnet_feature_map(resnet: nn.Module, x: Tensor) -> Tensor:
    """The last feature map ``(B, C, H', W')`` of a torchvision ResNet, before pooling.

    Runs the ResNet's own stem and ``layer1`` .. ``layer4``, so the module (and its
    ``state_dict`` names) stays a plain torchvision ResNet; ``resnet(x)`` still returns
    the globally pooled features, which are ``resnet_feature_map(resnet, x).mean((2, 3))``.
    """
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
    return resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(x))))


def dense_info_nce(
    query: Tensor, positive: Tensor, negatives: Tensor, temperature: float
) -> Tensor:
    """InfoNCE of DenseCL's dense branch, averaged over all grid cells.

    Args:
        query: ``(N, D)`` query cells (any norm; L2-normalised here).
        positive: ``(N, D)`` the matched key cell of each query cell.
        negatives: ``(K, D)`` the dense queue (L2-normalised pooled dense keys).
        temperature: softmax temperature.

    Returns:
        ``mean_n -log softmax([q_n·k_n, q_n·Q_1, ..., q_n·Q_K] / τ)[0]``, the same
        cross-entropy as :class:`lightly.loss.NTXentLoss` with a memory bank.
    """
    query = F.normalize(query, dim=1)
    positive = F.normalize(positive, dim=1)
    logits = torch.cat([(query * positive).sum(1, keepdim=True), query @ negatives.T], dim=1)
    labels = torch.zeros(len(query), dtype=torch.long, device=query.device)
    return F.cross_entropy(logits / temperature, labels)


class DenseCL(MomentumBaseline):
    """Dense Contrastive Learning [0]: MoCo-v2 plus a dense, cell-level InfoNCE.

    Per step, with ``x0`` the query view and ``x1`` the key view (not symmetrised, as in
    [0]):

    * **Encoders.** The backbone is a torchvision ResNet (:func:`build_resnet`) kept
      whole, so checkpoints export like MoCo-v2's; :func:`resnet_feature_map` runs its
      layers to get the ``S x S`` feature grid, and global features are that grid
      average-pooled (what ``backbone(x)`` returns). A global head (``projection_head``,
      :class:`~lightly.models.modules.DenseCLProjectionHead`) maps pooled features;
      a dense head (``dense_head``, same MLP applied to every cell, i.e. DenseCL's 1x1
      convolutions) maps every cell. Keys come from the momentum copies
      (``backbone_momentum``, ``projection_head_momentum``, ``dense_head_momentum``)
      with shuffle-BN.
    * **Global loss.** MoCo's InfoNCE of ``q`` (``x0``, online) against ``k``
      (``x1``, momentum) and a queue of past ``k`` (:class:`~lightly.loss.NTXentLoss`
      with a memory bank, ``criterion``).
    * **Dense loss.** Each query cell is matched to the key cell whose *backbone*
      feature (query grid vs. momentum key grid) has the highest cosine similarity
      (``select_most_similar``); the positive is that key cell's dense projection, the
      negatives are a separate queue (``dense_bank``) that receives *one* key per image,
      the average-pooled dense projection of the key view (``k2`` in [0]).
    * **Total.** ``(1 - λ_dense)·L_global + λ_dense·L_dense``, ``λ_dense = 0.5``. With
      ``dense_warmup_steps > 0``, ``λ_dense = 0`` for the first optimiser steps (the
      reference code's ``start_iters``, 1000 iterations in its COCO configs); during
      warm-up the dense branch still runs and its queue is still filled.

    Optimiser, lr scaling, cosine schedule and EMA momentum (0.999, cosine to 1)
    come from :class:`MomentumBaseline`. Queues are persistent buffers and receive keys
    gathered across devices.

    Args:
        backbone: torchvision ResNet name (see :func:`build_resnet`).
        small_input: CIFAR-style stem for 32-96 px images.
        proj_hidden_dim: hidden width of the global and dense MLPs.
        out_dim: output dimension of the global and dense MLPs.
        temperature: InfoNCE temperature of both losses.
        queue_size: number of keys in each of the two queues.
        dense_lambda: weight ``λ_dense`` of the dense loss.
        dense_warmup_steps: optimiser steps with ``λ_dense = 0``.
        momentum: initial EMA momentum of the key encoder.
        lr: learning rate per 256 images (scaled linearly with the global batch).
        weight_decay: SGD weight decay.
        sgd_momentum: SGD momentum.
        batch_size: per-device batch size, used for the lr scaling.
        warmup_epochs: epochs of linear lr warm-up.
        warmup_steps: optimiser steps of linear lr warm-up (overrides ``warmup_epochs``).
        channels_last: convert the model and the input images to
            ``torch.channels_last`` (see :meth:`MomentumBaseline.configure_model`).
        compile_backbone: compile the layers of the online and momentum ResNets in
            place: ``False``, ``True`` (inductor) or a ``torch.compile`` backend name.
        compile_mode: ``torch.compile`` mode (inductor only), e.g. ``"max-autotune"``.

    Examples:
        >>> model = DenseCL(backbone="resnet50", batch_size=32)
        >>> trainer = pl.Trainer(max_epochs=200, accelerator="gpu", devices=8, strategy="ddp")
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
        dense_lambda: float = 0.5,
        dense_warmup_steps: int = 0,
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
        if not 0.0 <= dense_lambda <= 1.0:
            raise ValueError(f"dense_lambda must be in [0, 1], got {dense_lambda}")
        check_baseline_arguments(lr, momentum, weight_decay, temperature, queue_size)
        check_speed_options(channels_last, compile_backbone, compile_mode)
        self.save_hyperparameters()

        self.backbone, self.feat_dim = build_resnet(backbone, small_input=small_input)
        self.projection_head = DenseCLProjectionHead(self.feat_dim, proj_hidden_dim, out_dim)
        self.dense_head = DenseCLProjectionHead(self.feat_dim, proj_hidden_dim, out_dim)
        self.add_momentum_copies("backbone", "projection_head", "dense_head")

        self.criterion = NTXentLoss(
            temperature=temperature,
            memory_bank_size=(queue_size, out_dim),
            gather_distributed=True,
        )
        persistent_bank(self.criterion.memory_bank)
        self.dense_bank = persistent_bank(
            MemoryBankModule(
                size=(queue_size, out_dim), gather_distributed=True, feature_dim_first=False
            )
        )

    # -- encoders -------------------------------------------------------------------
    def compile_targets(self) -> list[nn.Module]:
        """The layers with parameters of both ResNets (stem convolution and BatchNorm,
        ``layer1`` .. ``layer4``): :func:`resnet_feature_map` calls them, not the ResNet's
        ``forward``."""
        return [
            layer
            for resnet in super().compile_targets()
            for layer in resnet.children()
            if next(layer.parameters(), None) is not None
        ]

    @staticmethod
    def _grid(backbone: nn.Module, x: Tensor) -> Tensor:
        """The backbone's last feature map of ``x`` as a grid of cells ``(B, S², C)``."""
        return resnet_feature_map(backbone, x).flatten(start_dim=2).transpose(1, 2)

    def _heads(self, grid: Tensor, momentum: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``(global (B, D), dense (B, S², D), grid)`` of a backbone ``grid``, by the
        online or the momentum heads."""
        if momentum:
            head, dense_head = self.projection_head_momentum, self.dense_head_momentum
        else:
            head, dense_head = self.projection_head, self.dense_head
        return head(grid.mean(dim=1)), dense_head(grid), grid

    def forward(self, x: Tensor) -> Tensor:
        """Global query projection ``(B, out_dim)`` of the online encoder."""
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def forward_dense(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Online ``(global (B, D), dense (B, S², D), backbone grid (B, S², C))``."""
        return self._heads(self._grid(self.backbone, x), momentum=False)

    @torch.no_grad()
    def forward_momentum(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Momentum ``(global, dense, backbone grid)`` of ``x``, with shuffle-BN."""

        def encoder(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return self._heads(self._grid(self.backbone_momentum, x), momentum=True)

        return tuple(out.detach() for out in shuffle_bn(encoder, x))

    def current_dense_lambda(self) -> float:
        """``λ_dense`` at the current step: 0 during ``dense_warmup_steps``."""
        if self.global_step < int(self.hparams.dense_warmup_steps):
            return 0.0
        return float(self.hparams.dense_lambda)

    # -- training ---------------------------------------------------------------------
    def densecl_losses(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        """``(L_global, L_dense)`` of query view ``x0`` and key view ``x1``; enqueues keys.

        Both losses use the queues as they were before this call; then the global queue
        receives ``k`` and the dense queue the pooled dense keys (one per image).
        """
        return self._losses(self.forward_dense(x0), self.forward_momentum(x1))

    def _losses(
        self, query: tuple[Tensor, Tensor, Tensor], key: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """:meth:`densecl_losses` of the encoders' ``(global, dense, grid)`` outputs."""
        (q, q_dense, q_grid), (k, k_dense, k_grid) = query, key
        loss_global = self.criterion(q, k)

        # Correspondence by the backbone grids; positives from the dense key projection.
        k_matched = select_most_similar(q_grid, k_grid, k_dense)
        k_pooled = F.normalize(k_dense.mean(dim=1), dim=1)
        _, negatives = self.dense_bank(k_pooled, update=q_dense.requires_grad)
        loss_dense = dense_info_nce(
            q_dense.flatten(0, 1),
            k_matched.flatten(0, 1),
            negatives.to(q_dense.device),
            float(self.hparams.temperature),
        )
        return loss_global, loss_dense

    def training_step(self, batch, batch_idx: int) -> Tensor:
        """One DenseCL step on a lightly-style batch ``((x0, x1), labels, names)``."""
        return self._step(batch, batch_idx)[0]

    def hcl_batched_step(
        self, batch, batch_idx: int, query_extra: Tensor, key_extra: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`training_step` with extra crops in the same two encoder passes.

        The hook of :class:`~hcl_lightning.HCLMixin`'s ``hcl_batched_forward``: one
        online ResNet pass on ``cat[x0, query_extra]`` and one momentum pass, with
        shuffle-BN, on ``cat[x1, key_extra]`` replace the query and key passes of
        :meth:`training_step` and the mixin's two extra passes; the heads (global and
        dense) run on the view rows only. As for :meth:`MoCoV2.hcl_batched_step
        <hcl_lightning.baselines.MoCoV2.hcl_batched_step>`: the same loss and gradients
        as the separate passes with eval-mode BatchNorm, batch statistics of the mixed
        crops in train mode.

        Args:
            batch: lightly-style batch ``((x0, x1), labels, names)``.
            batch_idx: index of the batch.
            query_extra: ``(M, 3, H, W)`` crops for the online encoder (HCL: scenes).
            key_extra: ``(M', 3, H, W)`` crops for the momentum encoder (HCL: objects).

        Returns:
            ``(loss, query_features, key_features)``: the DenseCL loss and the pooled
            backbone features of the extra crops, online (with gradient) and momentum
            (without).
        """
        return self._step(batch, batch_idx, (query_extra, key_extra))

    def _step(self, batch, batch_idx: int, extra: tuple[Tensor, Tensor] | None = None):
        """``(loss, *extra features)`` of a DenseCL step; see :meth:`hcl_batched_step`."""
        x0, x1 = batch[0][0], batch[0][1]
        n = x0.shape[0]
        self.check_batch_size(n, batch_idx)
        m = self.update_momentum_encoders()

        if extra is None:
            loss_global, loss_dense = self.densecl_losses(x0, x1)
            extra_features = ()
        else:
            query_grid = self._grid(self.backbone, torch.cat([x0, extra[0]]))
            with torch.no_grad():
                key_grid = shuffle_bn(
                    lambda x: self._grid(self.backbone_momentum, x), torch.cat([x1, extra[1]])
                )
                key = self._heads(key_grid[:n], momentum=True)
            query = self._heads(query_grid[:n], momentum=False)
            loss_global, loss_dense = self._losses(query, key)
            extra_features = (query_grid[n:].mean(dim=1), key_grid[n:].mean(dim=1))
        lam = self.current_dense_lambda()
        loss = (1.0 - lam) * loss_global + lam * loss_dense

        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=n)
        self.log_dict(
            {
                "train/loss_global": loss_global.detach(),
                "train/loss_dense": loss_dense.detach(),
                "train/dense_lambda": lam,
            },
            on_step=True,
            batch_size=n,
        )
        self.log_schedules(m, batch_size=n)
        return (loss, *extra_features)


class HCLDenseCL(HCLMixin, DenseCL):
    """DenseCL with HCL's hyperbolic scene-object loss: ``L = L_densecl + λ·L_hyp``.

    The hyperbolic branch uses the global path (mixin defaults): queries are
    ``projection_head(backbone(scene))`` of the online encoder, keys the same of the
    momentum encoder on the object crops (``backbone(x)`` of the ResNet is the pooled
    feature grid).

    Example:
        >>> model = HCLDenseCL(hcl_lambda=0.1, backbone="resnet18", small_input=True,
        ...                    batch_size=64)
    """
