"""Online linear probe and kNN monitor on frozen backbone features: :class:`OnlineProbes`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from lightly.utils.benchmarking import OnlineLinearClassifier, knn_predict
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from torch.nn import functional as F
from typing_extensions import override

__all__ = ["OnlineProbes"]


class OnlineProbes(pl.Callback):
    """Linear-probe and kNN top-1 of the frozen backbone features, during training.

    **Training.** Every ``every_n_steps`` optimiser steps (in ``on_train_batch_end``) it
    takes the batch's object crops ``batch["object"]`` and their classes
    ``batch["labels"]`` (boxes of class -1 are ignored) and computes their features
    with ``pl_module.<backbone>`` under ``torch.no_grad`` in eval mode (each submodule's
    mode is restored afterwards). So BatchNorm normalises with its running statistics
    and does not update them, and nothing of the model changes: with or without this
    callback, training gives the same losses and weights. The online ``backbone`` is
    the default because it is the encoder that is exported and transferred (see
    :mod:`hcl_lightning.export`); ``backbone="backbone_momentum"`` probes the key
    encoder instead. With these detached features it

    - trains lightly's :class:`~lightly.utils.benchmarking.OnlineLinearClassifier` one
      step with its own Adam optimiser (learning rate ``lr``), owned by this callback:
      the model's optimiser, parameters and ``state_dict`` never see it;
    - pushes the L2-normalised features and their labels into a first-in-first-out
      bank of the last ``bank_size`` features;

    and logs the classifier's epoch mean ``train/linear_loss`` and ``train/linear_top1``.
    Under DDP the features and labels of all ranks are gathered first, so every rank
    trains the same classifier and holds the same bank.

    **Validation.** On each validation batch ``(crops, labels)`` (e.g. of
    :meth:`HCLDataModule.val_dataloader <hcl_lightning.data.HCLDataModule.val_dataloader>`)
    it classifies the features of the crops with the linear classifier and with
    lightly's :func:`~lightly.utils.benchmarking.knn_predict` (``knn_k`` neighbours in
    the bank, temperature ``knn_t``, cosine similarity), and at the end of the
    validation epoch logs the top-1 accuracies over all validation crops (counts summed
    over ranks) as ``val/linear_top1`` and ``val/knn_top1``. Nothing is logged before
    the first training step of the probe (e.g. in Lightning's sanity check).

    **Disabled**, with one info line, when there are no class labels (the datamodule's
    ``num_classes`` is None, e.g. random boxes or proposals, and ``num_classes`` is not
    given), no validation data (an empty ``val_dataloader()``), no validation step in
    the model (Lightning then skips validation), or no ``backbone`` module.

    **Random state.** The classifier is initialised from its own generator (seeded
    with ``seed``) and nothing else here draws random numbers, so the probes do not
    change the random state that training uses.

    **Checkpoints.** The classifier, its optimiser and the bank are this callback's
    :meth:`state_dict` (tensors and numbers only: loadable with
    ``torch.load(weights_only=True)``) and are restored on resume.

    Args:
        every_n_steps: Train the probe and fill the bank every this many optimiser steps.
        lr: Learning rate of the classifier's Adam optimiser.
        bank_size: Number of features kept for the kNN classifier.
        knn_k: Neighbours of the kNN vote (at most the features in the bank).
        knn_t: Temperature of the kNN vote weights ``exp(similarity / knn_t)``.
        backbone: Name of the module of the model whose (flattened) output is probed.
        num_classes: Number of classes; default: the datamodule's ``num_classes``.
        seed: Seed of the classifier's initialisation.

    Example:
        >>> datamodule = HCLDataModule(..., ann_file=..., validation={"fraction": 0.05})
        >>> trainer = pl.Trainer(callbacks=[OnlineProbes(every_n_steps=2)])
        >>> trainer.fit(model, datamodule=datamodule)  # logs val/linear_top1, val/knn_top1
    """

    def __init__(
        self,
        every_n_steps: int = 1,
        lr: float = 1e-3,
        bank_size: int = 4096,
        knn_k: int = 20,
        knn_t: float = 0.1,
        backbone: str = "backbone",
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("every_n_steps", every_n_steps), ("bank_size", bank_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {knn_k}")
        for name, value in (("lr", lr), ("knn_t", knn_t)):
            if not value > 0:  # also NaN
                raise ValueError(f"{name} must be > 0, got {value}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        self.every_n_steps = int(every_n_steps)
        self.lr = float(lr)
        self.bank_size = int(bank_size)
        self.knn_k = int(knn_k)
        self.knn_t = float(knn_t)
        self.backbone = backbone
        self.num_classes = num_classes
        self.seed = int(seed)
        self.enabled = False
        self.classifier: OnlineLinearClassifier | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.bank: Tensor | None = None  # (bank_size, D) L2-normalised features
        self.bank_labels: Tensor | None = None  # (bank_size,), -1 for empty slots
        self.bank_next = 0  # slot the next feature goes into
        self._classes = int(num_classes or 0)  # set from the datamodule in setup
        self._loaded: dict[str, Any] | None = None
        self._last_step: int | None = None
        self._counts: Tensor | None = None  # linear correct, kNN correct, crops

    # -- set-up -------------------------------------------------------------------
    def _disabled_reason(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        if not isinstance(getattr(pl_module, self.backbone, None), nn.Module):
            return f"{type(pl_module).__name__} has no module `{self.backbone}`"
        if self._classes < 1:
            return "no class labels (the datamodule's num_classes is None)"
        if not is_overridden("validation_step", pl_module):
            return f"{type(pl_module).__name__} has no validation_step"
        datamodule = trainer.datamodule
        if (
            datamodule is None
            or not is_overridden("val_dataloader", datamodule)
            or len(datamodule.val_dataloader()) == 0
        ):
            return "no validation data (e.g. data.validation.fraction=0 and no data.validation.image_dir)"
        return None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        self._last_step = None
        classes = self.num_classes
        if classes is None:
            classes = getattr(trainer.datamodule, "num_classes", None)
        self._classes = int(classes or 0)
        reason = self._disabled_reason(trainer, pl_module)
        self.enabled = reason is None
        if reason is not None:
            rank_zero_info(f"OnlineProbes: disabled: {reason}")

    def _build(self, feature_dim: int, device: torch.device) -> None:
        """The classifier (initialised from its own seeded generator), Adam and the bank."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            classifier = OnlineLinearClassifier(feature_dim, self._classes, topk=(1,))
        self.classifier = classifier.to(device)
        self.optimizer = torch.optim.Adam(self.classifier.parameters(), lr=self.lr)
        self.bank = torch.zeros(self.bank_size, feature_dim, device=device)
        self.bank_labels = torch.full((self.bank_size,), -1, dtype=torch.long, device=device)
        self.bank_next = 0

    def _restore(self, device: torch.device) -> None:
        """Builds the probe from a loaded :meth:`state_dict`, on ``device``."""
        state, self._loaded = self._loaded, None
        if not state:
            return
        if int(state["num_classes"]) != self._classes:
            raise ValueError(
                f"OnlineProbes: the checkpoint's probe has {state['num_classes']} classes, "
                f"the data {self._classes}"
            )
        self._build(int(state["feature_dim"]), device)
        self.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.bank = state["bank"].to(device=device, dtype=torch.float32)  # its size wins
        self.bank_labels = state["bank_labels"].to(device=device, dtype=torch.long)
        self.bank_next = int(state["bank_next"]) % len(self.bank)

    # -- features -----------------------------------------------------------------
    def features(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, images: Tensor
    ) -> Tensor:
        """Float32 (B, D) features of ``images``: the backbone in eval mode, no grad."""
        backbone: nn.Module = getattr(pl_module, self.backbone)
        modes = [(module, module.training) for module in backbone.modules()]
        backbone.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                features = backbone(images).flatten(start_dim=1)
        finally:
            for module, training in modes:
                module.training = training
        return features.float()

    # -- training -----------------------------------------------------------------
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
        if (
            not self.enabled
            or not isinstance(batch, Mapping)
            or step % self.every_n_steps
            or step == self._last_step
        ):
            return
        self._last_step = step
        features = self.features(trainer, pl_module, batch["object"])
        labels = batch["labels"]
        if trainer.world_size > 1:
            features = pl_module.all_gather(features).flatten(end_dim=1)
            labels = pl_module.all_gather(labels).flatten()
        keep = labels >= 0
        if not keep.any():
            return
        self.train_step(features[keep], labels[keep], pl_module)

    def train_step(
        self, features: Tensor, labels: Tensor, pl_module: pl.LightningModule | None = None
    ) -> None:
        """One step of the classifier and a bank update on ``(features, labels)``."""
        if self._loaded is not None:
            self._restore(features.device)
        if self.classifier is None:
            self._build(features.shape[1], features.device)
        with torch.enable_grad():
            loss, log = self.classifier.training_step((features, labels), 0)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self._push(F.normalize(features, dim=1), labels)
        if pl_module is not None:  # the same on every rank: trained on gathered features
            values = {
                "train/linear_loss": loss.detach(),
                "train/linear_top1": log["train_online_cls_top1"],
            }
            pl_module.log_dict(
                values, on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True
            )

    def _push(self, features: Tensor, labels: Tensor) -> None:
        """Writes the newest ``bank_size`` rows at the ring position, oldest overwritten."""
        size = len(self.bank)
        features, labels = features[-size:], labels[-size:]
        slots = (self.bank_next + torch.arange(len(labels), device=labels.device)) % size
        self.bank[slots] = features.to(self.bank)
        self.bank_labels[slots] = labels
        self.bank_next = int((self.bank_next + len(labels)) % size)

    # -- validation ---------------------------------------------------------------
    def predict(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(linear, kNN)`` top-1 classes of float (B, D) features."""
        linear = self.classifier(features).argmax(dim=1)
        filled = self.bank_labels >= 0
        bank = self.bank[filled]
        knn = knn_predict(
            F.normalize(features, dim=1),
            bank.T,
            self.bank_labels[filled],
            self._classes,
            knn_k=min(self.knn_k, len(bank)),
            knn_t=self.knn_t,
        )[:, 0]
        return linear, knn

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._counts = torch.zeros(3, dtype=torch.float64, device=pl_module.device)

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        if self._loaded is not None:
            self._restore(pl_module.device)
        if self.classifier is None:  # not trained yet
            return
        images, labels = batch[0], batch[1]
        keep = labels >= 0
        if not keep.any():
            return
        labels = labels[keep]
        linear, knn = self.predict(self.features(trainer, pl_module, images[keep]))
        self._counts += torch.stack(
            [(linear == labels).sum(), (knn == labels).sum(), labels.new_tensor(len(labels))]
        ).to(self._counts)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled or self._counts is None or trainer.sanity_checking:
            return
        counts = trainer.strategy.reduce(self._counts, reduce_op="sum")
        if counts[2] == 0:
            return
        top1 = (counts[:2] / counts[2]).float()  # the same on every rank
        pl_module.log("val/linear_top1", top1[0], on_epoch=True, sync_dist=True)
        pl_module.log("val/knn_top1", top1[1], on_epoch=True, sync_dist=True)

    # -- checkpoints --------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        if self._loaded is not None:  # loaded, not used yet: keep it as it was
            return self._loaded
        if self.classifier is None:
            return {}
        return {
            "feature_dim": int(self.classifier.feature_dim),
            "num_classes": int(self._classes),
            "classifier": self.classifier.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "bank": self.bank,
            "bank_labels": self.bank_labels,
            "bank_next": int(self.bank_next),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keeps the state; the probe is rebuilt on the model's device when first used."""
        self.classifier = self.optimizer = self.bank = self.bank_labels = None
        self._loaded = dict(state_dict)
