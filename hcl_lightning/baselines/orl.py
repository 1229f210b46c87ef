"""ORL-style object-level BYOL (Xie et al., NeurIPS 2021) as a lightly-built LightningModule.

- [0] ORL, Xie et al. 2021, https://arxiv.org/abs/2106.11952,
  code: https://github.com/Jiahao000/ORL (``openselfsup/models/orl.py``,
  ``configs/selfsup/orl/coco/stage3/r50_bs512_ep800.py``)
- [1] BYOL, Grill et al. 2020, https://arxiv.org/abs/2006.07733
- [2] HCL, Ge et al. CVPR 2023, https://arxiv.org/abs/2212.00653

The original is a three-stage pipeline: (1) BYOL pre-training on the scene images;
(2) offline, for every image, retrieval of its 10 nearest images by that model's
embedding, selective-search RoIs in each, and the top 10% most similar RoI pairs across
an image and its neighbours; (3) training with an image-level, an intra-RoI and an
inter-RoI BYOL loss. :class:`ORL` is a compact single-stage version of stage 3 for
datasets whose boxes are given or proposed (the HCL data pipeline); see the class
docstring for exactly where it departs from the original.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from torch import Tensor, nn
from torchvision.transforms import RandomResizedCrop

from hcl_lightning.baselines.backbones import build_resnet
from hcl_lightning.baselines.base import (
    MomentumBaseline,
    check_baseline_arguments,
    check_speed_options,
)
from hcl_lightning.mixin import HCLMixin

__all__ = ["HCLORL", "ORL", "select_inter_pairs"]


@torch.no_grad()
def select_inter_pairs(
    image_embedding: Tensor, roi_embedding: Tensor, top_fraction: float = 0.1
) -> tuple[Tensor, Tensor, Tensor]:
    """In-batch inter-RoI correspondence: ORL's stage 2 restricted to one batch.

    For each image ``i`` the nearest *other* image ``j(i)`` of the batch is found by
    cosine similarity of ``image_embedding``; the ``R x R`` RoI pairs
    ``(i, r), (j(i), s)`` are scored by the cosine similarity of ``roi_embedding``, and
    the ``max(1, ceil(top_fraction · R²))`` best pairs of each image are kept (ORL keeps
    the top 10% of the RoI pairs of each image and neighbour). Every image thus
    contributes the same number of pairs; with ``R = 1`` it is its single pair.

    Args:
        image_embedding: ``(B, E)`` image-level embeddings, ``B >= 2``.
        roi_embedding: ``(B, R, E)`` embeddings of ``R`` RoIs per image.
        top_fraction: fraction of each image's ``R²`` candidate pairs that is kept.

    Returns:
        ``(first, second, score)``, each ``(B·keep,)``: indices into the flattened
        ``(B·R)`` RoIs (``first`` in image ``i``, ``second`` in its neighbour), image by
        image and best first, and the pairs' cosine scores.
    """
    b, r, _ = roi_embedding.shape
    if b < 2:
        raise ValueError("inter-RoI pairs need at least 2 images in the batch")
    images = F.normalize(image_embedding, dim=1)
    similarity = images @ images.T
    similarity.fill_diagonal_(-math.inf)
    neighbour = similarity.argmax(dim=1)  # (B,)
    rois = F.normalize(roi_embedding, dim=2)
    scores = torch.einsum("bre,bse->brs", rois, rois[neighbour])  # (B, R, R)
    keep = max(1, math.ceil(top_fraction * r * r))
    score, flat = scores.flatten(start_dim=1).topk(keep, dim=1)  # (B, keep)
    image = torch.arange(b, device=flat.device).unsqueeze(1)
    first = image * r + flat // r
    second = neighbour[image] * r + flat % r
    return first.flatten(), second.flatten(), score.flatten()


class ORL(MomentumBaseline):
    """Object-level representation learning [0], stage 3, as a single-stage BYOL.

    An online encoder (ResNet ``backbone`` + :class:`~lightly.models.modules.
    BYOLProjectionHead` ``projection_head``) and its EMA target
    (``backbone_momentum``, ``projection_head_momentum``; momentum 0.99, cosine to 1)
    with three BYOL losses, each symmetrised, weight 1 by default, and each with its own
    :class:`~lightly.models.modules.BYOLPredictionHead` (``predictor_global``,
    ``predictor_intra``, ``predictor_inter``), as in [0]:

    ``L_branch = Σ_{(a, b) ∈ {(0, 1), (1, 0)}} 2·(1 + NegCos(pred(z_a), t_b))``, i.e. the
    original's ``2 - 2·cos`` per direction (``NegCos`` = lightly's
    :class:`~lightly.loss.NegativeCosineSimilarity`, ``z`` online and ``t`` target
    projections).

    **Inputs: mapping to the HCL crops.** A training batch is a mapping (the HCL data
    contract, see :class:`~hcl_lightning.data.HCLDataset`):

    * intra-RoI pair = ``views``: two augmentations of the same object box. The
      original pairs a RoI with a randomly jittered copy of it (IoU > 0.5) at 96 px;
      here the jitter is the views' random resized crop inside the box (plus the
      sampler's context jitter).
    * global pair = ``image_views`` if the batch has them (two image-level views),
      otherwise two views made from the ``scene`` crop by :meth:`global_views` (random
      resized crop + horizontal flip on the tensor). The original uses two random
      resized crops of the *whole image* with full colour augmentation; the HCL
      pipeline yields one scene crop per sample (a region holding several boxes), so
      the second view is geometric only (colour augmentation was applied once to the
      scene by the data pipeline).
    * RoIs for the inter-RoI branch = ``rois`` ``(B, R, 3, h, w)`` if present, otherwise
      the ``object`` crop (``R = 1``: the sampled box). The inter-RoI pairs are
      :func:`select_inter_pairs` of the target embeddings of the global views (mean of
      the two, per image) and of the RoIs: nearest image *in the batch* (on this
      device), top 10% of each image's candidate RoI pairs (all of them when ``R = 1``).

    **Departures from the original** (in the data, not in the losses): no stages 1
    and 2 (no offline kNN retrieval over the dataset: the neighbour is searched in the
    current batch with the current target encoder, and all kept pairs are used instead
    of one sampled per image and iteration); boxes come from the box source
    (annotations, proposal files or random boxes) instead of selective search (a
    selective-search box source is not provided); RoIs are crops made by the sampler
    and resized by the transform, not RoIAlign; with ``R = 1`` the top-10% filter keeps
    every image's single pair, so the inter-RoI pairs are decided by the nearest-image
    search alone. SGD with linear lr scaling and a cosine schedule as in ORL's config
    (lr 0.4 for 512 images, i.e. 0.2 per 256; weight decay 1e-4; 4 warm-up epochs), via
    :class:`MomentumBaseline`; BatchNorm is not synchronised unless the trainer does it.

    Args:
        backbone: torchvision ResNet name (see :func:`build_resnet`).
        small_input: CIFAR-style stem for 32-96 px images.
        proj_hidden_dim: hidden width of the projection MLP.
        out_dim: output dimension of the projection and prediction MLPs.
        pred_hidden_dim: hidden width of the prediction MLPs.
        global_weight: weight of the image-level loss.
        intra_weight: weight of the intra-RoI loss.
        inter_weight: weight of the inter-RoI loss.
        inter_top_fraction: fraction of candidate inter-RoI pairs kept.
        global_min_scale: smallest area fraction of the scene in :meth:`global_views`.
        momentum: initial EMA momentum of the target encoder.
        lr: learning rate per 256 images (scaled linearly with the global batch).
        weight_decay: SGD weight decay.
        sgd_momentum: SGD momentum.
        batch_size: per-device batch size, used for the lr scaling.
        warmup_epochs: epochs of linear lr warm-up.
        warmup_steps: optimiser steps of linear lr warm-up (overrides ``warmup_epochs``).
        channels_last: convert the model and the input images to
            ``torch.channels_last`` (see :meth:`MomentumBaseline.configure_model`).
        compile_backbone: compile the online and target ResNets in place: ``False``,
            ``True`` (inductor) or a ``torch.compile`` backend name.
        compile_mode: ``torch.compile`` mode (inductor only), e.g. ``"max-autotune"``.

    Examples:
        >>> model = ORL(backbone="resnet50", batch_size=64)
        >>> trainer = pl.Trainer(max_epochs=800, accelerator="gpu", devices=8, strategy="ddp")
        >>> trainer.fit(model, datamodule=HCLDataModule(...))
    """

    def __init__(
        self,
        *,
        backbone: str = "resnet50",
        small_input: bool = False,
        proj_hidden_dim: int = 4096,
        out_dim: int = 256,
        pred_hidden_dim: int = 4096,
        global_weight: float = 1.0,
        intra_weight: float = 1.0,
        inter_weight: float = 1.0,
        inter_top_fraction: float = 0.1,
        global_min_scale: float = 0.2,
        momentum: float = 0.99,
        lr: float = 0.2,
        weight_decay: float = 1e-4,
        sgd_momentum: float = 0.9,
        batch_size: int = 256,
        warmup_epochs: int = 4,
        warmup_steps: int = 0,
        channels_last: bool = False,
        compile_backbone: bool | str = False,
        compile_mode: str | None = None,
    ) -> None:
        super().__init__()
        check_baseline_arguments(lr=lr, momentum=momentum, weight_decay=weight_decay)
        check_speed_options(channels_last, compile_backbone, compile_mode)
        if not 0.0 < inter_top_fraction <= 1.0:
            raise ValueError(f"inter_top_fraction must be in (0, 1], got {inter_top_fraction}")
        if not 0.0 < global_min_scale <= 1.0:
            raise ValueError(f"global_min_scale must be in (0, 1], got {global_min_scale}")
        self.save_hyperparameters()

        self.backbone, self.feat_dim = build_resnet(backbone, small_input=small_input)
        self.projection_head = BYOLProjectionHead(self.feat_dim, proj_hidden_dim, out_dim)
        self.add_momentum_copies("backbone", "projection_head")
        self.predictor_global = BYOLPredictionHead(out_dim, pred_hidden_dim, out_dim)
        self.predictor_intra = BYOLPredictionHead(out_dim, pred_hidden_dim, out_dim)
        self.predictor_inter = BYOLPredictionHead(out_dim, pred_hidden_dim, out_dim)
        self.criterion = NegativeCosineSimilarity()

    # -- encoders -------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Online projection ``(B, out_dim)``."""
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    @torch.no_grad()
    def forward_momentum(self, x: Tensor) -> Tensor:
        """Target projection ``(B, out_dim)``, without gradient."""
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1))

    # -- data -------------------------------------------------------------------------
    def hcl_baseline_batch(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """ORL trains on the whole HCL batch (views, scene, object), not on the views."""
        return batch

    def global_views(self, scene: Tensor) -> tuple[Tensor, Tensor]:
        """Two image-level views of each scene: random resized crop + horizontal flip.

        Per sample, area fraction in ``[global_min_scale, 1]``, aspect ratio in
        ``[3/4, 4/3]``, resized back to the scene's size; uses torch's random state.
        """
        size = list(scene.shape[-2:])
        scale = (float(self.hparams.global_min_scale), 1.0)
        views = []
        for _ in range(2):
            out = []
            for image in scene:
                top, left, h, w = RandomResizedCrop.get_params(image, scale, (3 / 4, 4 / 3))
                crop = TF.resized_crop(image, top, left, h, w, size, antialias=True)
                out.append(crop.flip(-1) if torch.rand(()) < 0.5 else crop)
            views.append(torch.stack(out))
        return views[0], views[1]

    # -- losses -----------------------------------------------------------------------
    def branch_loss(
        self, predictor: nn.Module, z0: Tensor, z1: Tensor, t0: Tensor, t1: Tensor
    ) -> Tensor:
        """Symmetrised BYOL loss of one branch: ``Σ 2·(1 + NegCos(pred(z_a), t_b))``."""
        return 2 * (2 + self.criterion(predictor(z0), t1) + self.criterion(predictor(z1), t0))

    def orl_losses(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """``{"global", "intra", "inter", "inter_pairs"}`` losses of one batch."""
        r0, r1 = batch["views"][0], batch["views"][1]
        if "image_views" in batch:
            g0, g1 = batch["image_views"][0], batch["image_views"][1]
        else:
            g0, g1 = self.global_views(batch["scene"])
        rois = batch["rois"] if "rois" in batch else batch["object"].unsqueeze(1)
        b, r = rois.shape[:2]
        rois = rois.flatten(0, 1)

        z = {
            name: self.forward(x)
            for name, x in (("g0", g0), ("g1", g1), ("r0", r0), ("r1", r1), ("rois", rois))
        }
        t = {
            name: self.forward_momentum(x)
            for name, x in (("g0", g0), ("g1", g1), ("r0", r0), ("r1", r1), ("rois", rois))
        }
        losses = {
            "global": self.branch_loss(self.predictor_global, z["g0"], z["g1"], t["g0"], t["g1"]),
            "intra": self.branch_loss(self.predictor_intra, z["r0"], z["r1"], t["r0"], t["r1"]),
        }
        if b < 2:  # no other image to pair with
            losses["inter"] = z["rois"].sum() * 0.0
            losses["inter_pairs"] = torch.tensor(0.0, device=rois.device)
            return losses
        image_embedding = F.normalize(t["g0"], dim=1) + F.normalize(t["g1"], dim=1)
        first, second, _ = select_inter_pairs(
            image_embedding, t["rois"].view(b, r, -1), float(self.hparams.inter_top_fraction)
        )
        losses["inter"] = self.branch_loss(
            self.predictor_inter,
            z["rois"][first],
            z["rois"][second],
            t["rois"][first],
            t["rois"][second],
        )
        losses["inter_pairs"] = torch.tensor(float(len(first)), device=rois.device)
        return losses

    # -- training ---------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        """One ORL step on an HCL batch (a mapping with ``views``, ``scene``, ``object``)."""
        if not isinstance(batch, Mapping):
            raise TypeError(
                "ORL trains on HCL batches: a mapping with 'views' (2 RoI views), 'scene' "
                "(or 'image_views') and 'object' (or 'rois'); got a "
                f"{type(batch).__name__}. Use hcl_lightning.data.HCLDataModule."
            )
        n = batch["views"][0].shape[0]
        self.check_batch_size(n, batch_idx)
        m = self.update_momentum_encoders()

        losses = self.orl_losses(batch)
        hp = self.hparams
        loss = (
            hp.global_weight * losses["global"]
            + hp.intra_weight * losses["intra"]
            + hp.inter_weight * losses["inter"]
        )
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=n)
        self.log_dict(
            {f"train/loss_{k}": v.detach() for k, v in losses.items() if k != "inter_pairs"}
            | {"train/inter_pairs": losses["inter_pairs"]},
            on_step=True,
            batch_size=n,
        )
        self.log_schedules(m, batch_size=n)
        return loss


class HCLORL(HCLMixin, ORL):
    """ORL with HCL's hyperbolic scene-object loss: ``L = L_orl + λ·L_hyp``.

    BYOL has no negative queue; the hyperbolic branch keeps its own queue of object
    keys (``hcl_queue_size``), computed by the target encoder (``backbone_momentum`` +
    ``projection_head_momentum``, the mixin's defaults) and mapped inside the ball.

    Example:
        >>> model = HCLORL(hcl_lambda=0.1, backbone="resnet18", small_input=True,
        ...                batch_size=64)
    """
