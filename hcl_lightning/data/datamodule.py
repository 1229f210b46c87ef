"""LightningDataModule of HCL: box source, crop sampler, transform and DataLoader."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from hcl_lightning.checks import check_number, check_path
from hcl_lightning.data.box_sources import build_box_source, check_box_source
from hcl_lightning.data.boxes import BoxSource, CocoBoxSource, ImageRecord
from hcl_lightning.data.dataset import HCLDataset
from hcl_lightning.data.eval_crops import LabelledCropDataset, collate_crops
from hcl_lightning.data.options import (
    BoxOptions,
    CropOptions,
    ImageOptions,
    LoaderOptions,
    ValidationOptions,
)
from hcl_lightning.data.transforms import HCLTransform

__all__ = ["HCLDataModule"]

#: Third seed word of the validation hold-out, ``(seed, n_images, VAL_SPLIT_STREAM)``: a
#: stream apart from the random boxes' ``(seed, index)`` of every image.
VAL_SPLIT_STREAM = 1


class HCLDataModule(pl.LightningDataModule):
    """Training data for Hyperbolic Contrastive Learning from images and their boxes.

    Boxes come from a COCO instances file (``ann_file``), a JSON/JSONL proposal file
    (``proposals``), or, with neither, by ``boxes.method`` (random boxes or
    selective-search proposals; see :func:`~hcl_lightning.data.build_box_source`).
    Batches follow the data contract of :class:`~hcl_lightning.data.HCLDataset`. Under
    DDP, Lightning replaces the shuffling sampler with a distributed one; for
    reproducible shuffling and crops, call ``pytorch_lightning.seed_everything``.

    **Validation.** With class labels (COCO boxes) and ``validation`` set (a seeded
    hold-out, or separate images), :meth:`val_dataloader` yields ``(crops, labels)``
    batches of every labelled box of the validation images
    (:class:`~hcl_lightning.data.LabelledCropDataset`: the box resized to
    ``object_size``, no augmentation), for the online probes
    (:class:`~hcl_lightning.callbacks.OnlineProbes`); otherwise it returns ``[]``. The
    validation loader draws its workers' seed from its own generator, so validating
    does not change the random state training uses.

    Args:
        image_dir: Folder of the images.
        ann_file: COCO instances JSON.
        proposals: JSON/JSONL file of ``{"file", "boxes"}`` entries.
        batch_size: Samples per batch (per device).
        object_size: Side in pixels of the object views and object crop.
        scene_size: Side in pixels of the scene crop.
        seed: Seed of the random boxes and of the validation hold-out.
        crops: Crop sampling and augmentation (:class:`~hcl_lightning.data.CropOptions`).
        boxes: Box source options (:class:`~hcl_lightning.data.BoxOptions`).
        images: Bad-image policy (:class:`~hcl_lightning.data.ImageOptions`).
        loader: DataLoader options (:class:`~hcl_lightning.data.LoaderOptions`).
        validation: Validation data (:class:`~hcl_lightning.data.ValidationOptions`).

    Each option group may also be a mapping of its fields, or None for its defaults.

    Raises:
        FileNotFoundError: If ``image_dir``, ``ann_file``, ``proposals`` or a validation
            path is missing.
        ArgumentError: (a ``ValueError``) for a size out of range, both ``ann_file`` and
            ``proposals``, or an option out of range (see the option classes).

    Example:
        >>> datamodule = HCLDataModule("data/images", ann_file="data/annotations.json",
        ...                            loader=LoaderOptions(num_workers=8))
        >>> trainer.fit(model, datamodule=datamodule)
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path | None = None,
        proposals: str | Path | None = None,
        batch_size: int = 32,
        object_size: int = 64,
        scene_size: int = 64,
        seed: int = 0,
        crops: CropOptions | Mapping[str, Any] | None = None,
        boxes: BoxOptions | Mapping[str, Any] | None = None,
        images: ImageOptions | Mapping[str, Any] | None = None,
        loader: LoaderOptions | Mapping[str, Any] | None = None,
        validation: ValidationOptions | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.crops = CropOptions.coerce(crops)
        self.boxes = BoxOptions.coerce(boxes)
        self.images = ImageOptions.coerce(images)
        self.loader = LoaderOptions.coerce(loader)
        self.validation = ValidationOptions.coerce(validation)
        self.check_arguments(ann_file, proposals, batch_size, object_size, scene_size)
        self.image_dir, self.ann_file, self.proposals, self.val_image_dir, self.val_ann_file = (
            self.check_paths(image_dir, ann_file, proposals, self.validation)
        )
        # Hyperparameters as plain values (strings, dicts): checkpoints must load with
        # torch.load(weights_only=True). save_hyperparameters reads these locals.
        image_dir, ann_file, proposals = (
            None if path is None else str(path) for path in (image_dir, ann_file, proposals)
        )
        crops, boxes, images, loader, validation = (
            group.as_dict()
            for group in (self.crops, self.boxes, self.images, self.loader, self.validation)
        )
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = self.loader.num_workers
        pin_memory = self.loader.pin_memory
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = self.loader.persistent_workers and self.num_workers > 0
        # Built here so that argument errors surface at construction, not in setup().
        self.sampler = self.crops.sampler()
        self.transform = HCLTransform(
            object_size=object_size,
            scene_size=scene_size,
            fused_color_jitter=self.crops.fused_color_jitter,
        )
        self._source: BoxSource | None = None
        self.train_dataset: HCLDataset | None = None
        self.val_dataset: LabelledCropDataset | None = None

    @staticmethod
    def check_arguments(
        ann_file: str | Path | None,
        proposals: str | Path | None,
        batch_size: int,
        object_size: int,
        scene_size: int,
    ) -> None:
        """The checks of the constructor's own arguments (not the paths' existence; the
        option groups check themselves).

        Raises:
            ArgumentError: (a ``ValueError``) for a size below 1, or both ``ann_file``
                and ``proposals``.
        """
        for name, value in (
            ("batch_size", batch_size),
            ("object_size", object_size),
            ("scene_size", scene_size),
        ):
            check_number(name, value, ">= 1", lambda v: v >= 1, integer=True)
        check_box_source(ann_file, proposals)

    @staticmethod
    def check_paths(
        image_dir: str | Path,
        ann_file: str | Path | None,
        proposals: str | Path | None,
        validation: ValidationOptions,
    ) -> tuple[Path, Path | None, Path | None, Path | None, Path | None]:
        """The paths as Paths (``~`` expanded): ``image_dir``, ``ann_file``,
        ``proposals``, ``validation.image_dir``, ``validation.ann_file``.

        Raises:
            MissingPathError: (a ``FileNotFoundError``) naming the first missing one.
        """
        return (
            check_path("image_dir", image_dir, directory=True),
            check_path("ann_file", ann_file),
            check_path("proposals", proposals),
            check_path("validation.image_dir", validation.image_dir, directory=True),
            check_path("validation.ann_file", validation.ann_file),
        )

    @property
    def source(self) -> BoxSource:
        """The box source, read on first access."""
        if self._source is None:
            self._source = build_box_source(
                self.image_dir,
                ann_file=self.ann_file,
                proposals=self.proposals,
                min_box_size=self.boxes.min_box_size,
                boxes_per_image=self.boxes.boxes_per_image,
                seed=self.hparams.seed,
                box_method=self.boxes.method,
                selective_search=(
                    None
                    if self.boxes.selective_search is None
                    else dict(self.boxes.selective_search)
                ),
            )
        return self._source

    @property
    def num_classes(self) -> int | None:
        """Number of object classes, or None when the boxes have no classes."""
        return self.source.num_classes

    @property
    def class_names(self) -> list[str] | None:
        """Names of the object classes, or None when the boxes have no classes."""
        return self.source.class_names

    def setup(self, stage: str | None = None) -> None:
        """Builds the training and validation datasets (once), and scans the training
        images for bad files (:meth:`~hcl_lightning.data.HCLDataset.scan`).

        Raises:
            RuntimeError: if more than ``images.max_bad_fraction`` of them are bad.
        """
        if self.train_dataset is not None:
            return
        train_records, held_out = self._split()
        dataset = HCLDataset(
            train_records,
            self.sampler,
            self.transform,
            max_bad_fraction=self.images.max_bad_fraction,
            max_image_pixels=self.images.max_image_pixels,
        )
        dataset.scan(seed=self.hparams.seed)
        if len(dataset) < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the dataset ({len(dataset)} "
                "images): with drop_last=True there would be no batch"
            )
        self.train_dataset = dataset
        self.val_dataset = self._val_dataset(held_out)

    def _split(self) -> tuple[list[ImageRecord], list[ImageRecord]]:
        """``(training, held-out)`` records: the seeded ``validation.fraction`` hold-out."""
        records = self.source.records
        fraction = self.validation.fraction
        if fraction == 0:
            return records, []
        if self.num_classes is None:
            rank_zero_info(
                f"hcl: validation.fraction={fraction} ignored: the boxes have no classes to "
                "validate with; all images are used for training"
            )
            return records, []
        rng = np.random.default_rng((self.hparams.seed, len(records), VAL_SPLIT_STREAM))
        n_held = max(1, round(fraction * len(records)))
        held = sorted(rng.choice(len(records), size=n_held, replace=False).tolist())
        kept = sorted(set(range(len(records))) - set(held))
        return [records[i] for i in kept], [records[i] for i in held]

    def _val_dataset(self, held_out: list[ImageRecord]) -> LabelledCropDataset | None:
        records = held_out
        where = f"{len(held_out)} held-out images (validation.fraction={self.validation.fraction})"
        if self.val_image_dir is not None:
            source = CocoBoxSource(
                self.val_image_dir, self.val_ann_file, min_box_size=self.boxes.min_box_size
            )
            if source.class_names != self.class_names:
                raise ValueError(
                    f"validation.ann_file {self.val_ann_file} has the classes {source.class_names}, "
                    f"but the training boxes have {self.class_names}: they must be the same"
                )
            records, where = source.records, f"{len(source.records)} images of {self.val_image_dir}"
        if not records:
            return None
        dataset = LabelledCropDataset(
            records,
            object_size=self.hparams.object_size,
            min_object_size=self.crops.min_object_size,
            max_image_pixels=self.images.max_image_pixels,
        )
        dropped = ", ".join(f"{n} {reason}" for reason, n in dataset.dropped.items() if n)
        rank_zero_info(
            f"hcl: validation on {dataset.num_crops} labelled boxes of {where}"
            + (f"; boxes dropped: {dropped}" if dropped else "")
        )
        return dataset if len(dataset) else None

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of full size (the last incomplete batch is dropped)."""
        if self.train_dataset is None:
            self.setup("fit")
        return self._loader(self.train_dataset, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        """Batches ``(crops, labels)`` of the validation crops of ``batch_size`` images
        each (see :class:`~hcl_lightning.data.LabelledCropDataset`), or ``[]`` when there
        is no validation data."""
        if self.train_dataset is None:
            self.setup("fit")
        if self.val_dataset is None:
            return []
        return self._loader(
            self.val_dataset,
            shuffle=False,
            collate_fn=collate_crops,
            generator=torch.Generator(),  # not torch's global generator: see the class doc
        )

    def _loader(self, dataset: Dataset, **options: Any) -> DataLoader:
        """A DataLoader of ``dataset`` with this module's batch size and worker settings."""
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            **options,
        )
