"""Frozen-backbone evaluation: labelled sets, cached features, a linear classifier, kNN.

What ``hcl-analyze linear`` and ``hcl-analyze knn`` run, on the backbone features
(``model.backbone(x)``, the encoder :mod:`~hcl_lightning.export` ships) of labelled
images:

- :func:`coco_crop_split`: the labelled boxes of a COCO instances file as object crops
  (one item per image, :class:`~hcl_lightning.data.eval_crops.LabelledCropDataset`),
  split into train/val by image;
- :func:`folder_split`: a classification set in the torchvision ``ImageFolder`` layout
  (``root/<class>/**/*.jpg``), whole images;
- :func:`cached_features`: the features of both splits, computed once and reused from
  a cache file while the checkpoint, the images and the settings are unchanged;
- :class:`LinearClassifier` and :func:`train_linear`: a linear layer trained by a
  Lightning ``Trainer`` (SGD with a cosine schedule, or full-batch L-BFGS) on the
  cached, standardised features;
- the weighted kNN is :func:`hcl_lightning.analysis.probes.knn_accuracy`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from hcl_lightning.analysis.probes import standardise, topk_accuracy
from hcl_lightning.data.boxes import CocoBoxSource, ImageRecord, list_images
from hcl_lightning.data.eval_crops import LabelledCropDataset, RegionCropDataset, collate_crops

__all__ = [
    "LabelledSplit",
    "LinearClassifier",
    "cached_features",
    "coco_crop_split",
    "folder_split",
    "train_linear",
]

#: Optimisers of :class:`LinearClassifier`.
OPTIMIZERS = ("sgd", "lbfgs")


@dataclass
class LabelledSplit:
    """Train and val datasets of labelled images and their class names.

    Items of both datasets are ``(crops (M, 3, S, S), labels (M,))`` batched by
    :func:`~hcl_lightning.data.eval_crops.collate_crops`; ``files`` name the images of
    each split (in item order), for the feature cache's key.
    """

    train: Dataset
    val: Dataset
    class_names: list[str]
    files: dict[str, list[str]]


def _holdout(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded train/val split of ``n`` items; both parts non-empty."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if n < 2 or not 0 < n_val < n:
        raise ValueError(
            f"cannot hold out val_fraction={val_fraction} of {n} images as a non-empty "
            "val split; give a separate validation set or another fraction"
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def coco_crop_split(
    image_dir: str | Path,
    ann_file: str | Path,
    object_size: int,
    val_image_dir: str | Path | None = None,
    val_ann_file: str | Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_box_size: float = 1.0,
) -> LabelledSplit:
    """The labelled boxes of a COCO file as object crops, split into train and val.

    The val split is the boxes of ``val_ann_file`` (images in ``val_image_dir``,
    default ``image_dir``), their classes matched to the training file's by COCO
    category id (classes the training file lacks are dropped); without it, a seeded
    hold-out of ``val_fraction`` of the images (split by image, so no image has crops
    on both sides). Crops are ``object_size`` pixels, unaugmented.

    Raises:
        FileNotFoundError, ValueError: as :class:`~hcl_lightning.data.CocoBoxSource`;
            ValueError when a split has no labelled box.
    """
    source = CocoBoxSource(image_dir, ann_file, min_box_size)
    records = [r for r in source.records if (r.labels >= 0).any()]
    if val_ann_file is not None:
        val_source = CocoBoxSource(val_image_dir or image_dir, val_ann_file, min_box_size)
        contiguous = {cid: i for i, cid in enumerate(source.category_ids)}
        to_train = np.asarray(
            [contiguous.get(cid, -1) for cid in val_source.category_ids] + [-1], np.int64
        )  # label -1 (unknown) indexes the trailing -1
        train_records = records
        val_records = [
            ImageRecord(path=r.path, boxes=r.boxes, labels=to_train[r.labels])
            for r in val_source.records
        ]
    else:
        train_idx, val_idx = _holdout(len(records), val_fraction, seed)
        train_records = [records[i] for i in train_idx]
        val_records = [records[i] for i in val_idx]
    splits = {}
    for name, split in (("train", train_records), ("val", val_records)):
        dataset = LabelledCropDataset(split, object_size)
        if dataset.num_crops == 0:
            raise ValueError(f"the {name} split has no labelled box ({ann_file})")
        splits[name] = dataset
    files = {
        name: [str(record.path) for record, _, _ in dataset.items]
        for name, dataset in splits.items()
    }
    return LabelledSplit(splits["train"], splits["val"], list(source.class_names), files)


class _FolderDataset(Dataset):
    """Whole images with their class, as one-crop items of :func:`collate_crops`
    (no crop for an unreadable image)."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], size: int) -> None:
        self.regions = RegionCropDataset([(path, None) for path in files], size)
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        crop, ok = self.regions[index]
        n = 1 if ok else 0
        return crop[None][:n], torch.full((n,), self.labels[index], dtype=torch.long)


def _class_folders(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """Class names (sorted sub-folders with images), image files and their labels."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    names, files, labels = [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = list_images(folder)
        if images:
            labels += [len(names)] * len(images)
            names.append(folder.name)
            files += images
    if len(names) < 2:
        raise ValueError(
            f"{root}: expected class folders with images (root/<class>/*.jpg, the ImageFolder "
            f"layout), found {len(names)} class(es)"
        )
    return names, files, labels


def folder_split(
    root: str | Path,
    image_size: int,
    val_root: str | Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> LabelledSplit:
    """A classification set in the ``ImageFolder`` layout, split into train and val.

    Classes are the sub-folders of ``root`` that hold images, in sorted order (as
    torchvision's ``ImageFolder``); images are found recursively below each. The val
    split is ``val_root`` (same layout; its classes matched by folder name, unknown
    ones dropped) or a seeded hold-out of ``val_fraction`` of the images. Images are
    resized to ``image_size``, unaugmented; unreadable ones give no crop.
    """
    names, files, labels = _class_folders(Path(root))
    if val_root is not None:
        val_names, val_files, val_labels = _class_folders(Path(val_root))
        index = {name: i for i, name in enumerate(names)}
        kept = [
            (f, index[val_names[y]])
            for f, y in zip(val_files, val_labels, strict=True)
            if val_names[y] in index
        ]
        train = (files, labels)
        val = ([f for f, _ in kept], [y for _, y in kept])
    else:
        train_idx, val_idx = _holdout(len(files), val_fraction, seed)
        train = ([files[i] for i in train_idx], [labels[i] for i in train_idx])
        val = ([files[i] for i in val_idx], [labels[i] for i in val_idx])
    if not val[0]:
        raise ValueError(f"{val_root}: no image of a class of {root}")
    return LabelledSplit(
        _FolderDataset(*train, image_size),
        _FolderDataset(*val, image_size),
        names,
        {"train": [str(f) for f in train[0]], "val": [str(f) for f in val[0]]},
    )


@torch.no_grad()
def backbone_features(
    backbone: nn.Module, dataset: Dataset, batch_size: int = 64, num_workers: int = 0
) -> tuple[Tensor, Tensor]:
    """``(features (N, F) float32, labels (N,))`` of every crop of ``dataset`` (items of
    :func:`collate_crops`), by ``backbone`` in eval mode on its own device, on the CPU."""
    backbone.eval()
    device = next(backbone.parameters()).device
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_crops
    )
    features, labels = [], []
    for crops, y in loader:
        if len(y):
            features.append(backbone(crops.to(device)).flatten(start_dim=1).float().cpu())
            labels.append(y)
    if not features:
        raise ValueError("no image could be read")
    return torch.cat(features), torch.cat(labels)


def _cache_key(checkpoint: Path, encoder: str, split: LabelledSplit, settings: dict) -> str:
    stat = checkpoint.stat()
    text = json.dumps(
        [
            str(checkpoint.resolve()),
            stat.st_size,
            stat.st_mtime_ns,
            encoder,
            split.files,
            split.class_names,
            settings,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def cached_features(
    model: pl.LightningModule,
    checkpoint: str | Path,
    split: LabelledSplit,
    cache_file: str | Path | None,
    encoder: str = "online",
    batch_size: int = 64,
    num_workers: int = 0,
    settings: dict[str, Any] | None = None,
) -> tuple[dict[str, Tensor], bool]:
    """Backbone features and labels of both splits, from ``cache_file`` when it matches.

    The cache holds ``train_x``, ``train_y``, ``val_x``, ``val_y`` and a key: the
    checkpoint (path, size, modification time), ``encoder`` (``"online"``:
    ``model.backbone``; ``"momentum"``: ``model.backbone_momentum``), the image files
    of each split, the class names and ``settings`` (e.g. the crop size). A cache with
    another key is recomputed and overwritten; ``cache_file=None`` never caches.

    Returns:
        ``(features, from_cache)``.
    """
    name = "backbone" if encoder == "online" else "backbone_momentum"
    backbone = getattr(model, name, None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(f"{type(model).__name__} has no `{name}` (encoder={encoder!r})")
    key = _cache_key(Path(checkpoint), encoder, split, settings or {})
    if cache_file is not None and Path(cache_file).is_file():
        cached = torch.load(cache_file, map_location="cpu", weights_only=True)
        if cached.get("key") == key:
            return {k: v for k, v in cached.items() if k != "key"}, True
    features = {}
    for part in ("train", "val"):
        x, y = backbone_features(backbone, getattr(split, part), batch_size, num_workers)
        features[f"{part}_x"], features[f"{part}_y"] = x, y
    if cache_file is not None:
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        torch.save({**features, "key": key}, cache_file)
    return features, False


class LinearClassifier(pl.LightningModule):
    """A linear layer on frozen features, trained by a Lightning ``Trainer``.

    The loss is cross-entropy plus ``weight_decay / 2 * |W|^2`` (for both optimisers).
    ``optimizer="sgd"``: SGD, momentum 0.9, learning rate ``lr`` annealed to 0 by a
    cosine over ``trainer.max_epochs`` epochs. ``optimizer="lbfgs"``: L-BFGS with a
    strong-Wolfe line search (``lr`` is its initial step, 1 is usual; give it the
    whole training set as one batch). Validation logs ``val/top1`` and ``val/top5``
    (to the progress bar too); ``train/loss`` is logged per step.

    Args:
        feature_dim: input features.
        num_classes: output classes.
        optimizer: ``"sgd"`` or ``"lbfgs"``.
        lr: learning rate.
        weight_decay: L2 penalty of the weights (not of the bias).
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        optimizer: str = "sgd",
        lr: float = 0.1,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.save_hyperparameters()
        self.linear = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        penalty = 0.5 * self.hparams.weight_decay * self.linear.weight.pow(2).sum()
        loss = F.cross_entropy(self(x), y) + penalty
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        accuracy = topk_accuracy(self(x).argsort(dim=1, descending=True), y)
        for k, value in accuracy.items():
            self.log(f"val/{k}", value, prog_bar=True, batch_size=len(y))

    def configure_optimizers(self) -> Any:
        if self.hparams.optimizer == "lbfgs":
            return torch.optim.LBFGS(
                self.parameters(), lr=self.hparams.lr, line_search_fn="strong_wolfe"
            )
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        return [optimizer], [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)]


def train_linear(
    features: dict[str, Tensor],
    num_classes: int,
    out_dir: str | Path,
    optimizer: str = "sgd",
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    accelerator: str = "cpu",
    seed: int = 0,
    progress_bar: bool = True,
) -> tuple[LinearClassifier, dict[str, float]]:
    """Trains a :class:`LinearClassifier` on standardised features; scores the val split.

    Features are standardised with the train split's mean and standard deviation. SGD
    takes shuffled batches of ``batch_size``; L-BFGS the whole train split per step.
    Lightning writes its CSV log (``train/loss``, ``val/top1``, ``val/top5`` per epoch)
    under ``out_dir/csv``, replacing that of an earlier run.

    Returns:
        The trained classifier (on standardised features) and ``{"top1", "top5"}`` of
        the val split after the last epoch (:func:`~hcl_lightning.analysis.probes.topk_accuracy`).
    """
    pl.seed_everything(seed, workers=True)
    train_x, val_x = standardise(features["train_x"], features["val_x"])
    train_x, val_x = train_x.float(), val_x.float()
    train_y, val_y = features["train_y"].long(), features["val_y"].long()
    full = optimizer == "lbfgs"
    train = DataLoader(
        TensorDataset(train_x, train_y),
        batch_size=len(train_y) if full else batch_size,
        shuffle=not full,
    )
    val = DataLoader(TensorDataset(val_x, val_y), batch_size=max(batch_size, 1024))
    model = LinearClassifier(train_x.shape[1], num_classes, optimizer, lr, weight_decay)
    shutil.rmtree(Path(out_dir) / "csv", ignore_errors=True)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=CSVLogger(out_dir, name="csv", version=""),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        log_every_n_steps=1,
    )
    trainer.fit(model, train, val)
    model.eval()
    with torch.no_grad():
        ranked = model(val_x.to(model.device)).argsort(dim=1, descending=True).cpu()
    return model, topk_accuracy(ranked, val_y)
