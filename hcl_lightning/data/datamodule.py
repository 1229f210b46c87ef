"""LightningDataModule of HCL: box source, crop sampler, transform and DataLoader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from hcl_lightning.data.boxes import (
    BOX_METHODS,
    BoxSource,
    CocoBoxSource,
    ImageRecord,
    build_box_source,
)
from hcl_lightning.data.crops import SceneObjectSampler
from hcl_lightning.data.dataset import DEFAULT_MAX_IMAGE_PIXELS, HCLDataset
from hcl_lightning.data.eval_crops import LabelledCropDataset, collate_crops
from hcl_lightning.data.transforms import HCLTransform

#: Third seed word of the validation hold-out, ``(seed, n_images, VAL_SPLIT_STREAM)``: a
#: stream apart from the random boxes' ``(seed, index)`` of every image.
VAL_SPLIT_STREAM = 1


def _check_at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _check_file(name: str, path: str | Path | None, directory: bool = False) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not (path.is_dir() if directory else path.is_file()):
        raise FileNotFoundError(f"{name} not found: {path}")
    return path


class HCLDataModule(pl.LightningDataModule):
    """Training data for Hyperbolic Contrastive Learning from images and their boxes.

    Boxes come from a COCO instances file (``ann_file``), a JSON/JSONL proposal file
    (``proposals``), or, with neither, random boxes (see
    :func:`~hcl_lightning.data.build_box_source`). Batches follow the data contract of
    :class:`~hcl_lightning.data.HCLDataset`. Under DDP, Lightning replaces the
    shuffling sampler with a distributed one; for reproducible shuffling and crops,
    call ``pytorch_lightning.seed_everything``.

    **Validation.** With class labels (COCO boxes) and either ``val_fraction > 0`` (a
    seeded hold-out of that fraction of the images, removed from training) or a
    separate ``val_image_dir`` + ``val_ann_file``, :meth:`val_dataloader` yields
    ``(crops, labels)`` batches of every labelled box of the validation images
    (:class:`~hcl_lightning.data.LabelledCropDataset`: the box resized to
    ``object_size``, no augmentation), for the online probes
    (:class:`~hcl_lightning.probes.OnlineProbes`). Otherwise it returns ``[]`` (no
    validation). The validation loader draws its workers' seed from its own
    generator, so validating does not change the random state training uses.

    Args:
        image_dir: Folder of the images.
        ann_file: COCO instances JSON.
        proposals: JSON/JSONL file of ``{"file", "boxes"}`` entries.
        batch_size: Samples per batch (per device).
        object_size: Side in pixels of the object views and object crop.
        scene_size: Side in pixels of the scene crop.
        fused_color_jitter: Colour-jitter the scene and object crops in one affine
            pass (:class:`~hcl_lightning.data.color.FusedColorJitter`: YIQ hue, one
            rounding) instead of torchvision's ``ColorJitter``; the views keep lightly's
            MoCo v2 augmentation.
        num_workers: DataLoader worker processes.
        pin_memory: Pin batches in page-locked memory; default: if CUDA is available.
        persistent_workers: Keep workers between epochs (only with num_workers > 0).
        min_object_size: Minimum box side, in pixels, for a box to be an object.
        min_box_size: Minimum box side, in pixels, of COCO boxes kept at all.
        context_jitter: Maximum enlargement of each object side (fraction of its size).
        scene_extra_boxes: Range of the number of other boxes in a scene.
        scene_fallback_scale: Range of scene/object side ratio when no other box exists.
        boxes_per_image: Range of the number of random boxes (random-box source only).
        max_bad_fraction: Largest tolerated fraction of bad images (see
            :class:`~hcl_lightning.data.HCLDataset`); more fails fast.
        max_image_pixels: Pixel budget of a decoded image: larger JPEGs are decoded at
            reduced scale, other larger images skipped (None: no guard).
        seed: Seed of the random boxes (random-box source only).
        box_method: Boxes of a plain folder (neither ``ann_file`` nor ``proposals``):
            ``"random"`` or ``"selective_search"`` (cached selective-search proposals,
            see :class:`~hcl_lightning.data.SelectiveSearchBoxSource`; needs
            ``pip install "hcl-lightning[selective-search]"``).
        selective_search: Keyword arguments of ``SelectiveSearchBoxSource``
            (``cache_file``, ``max_boxes``, ``min_size``, ``mode``, ``max_side``...).
        val_fraction: Fraction of the images, in [0, 1), held out for validation
            (chosen with ``seed``; ignored, with a log line, when the boxes have no
            classes).
        val_image_dir: Folder of separate validation images (with ``val_ann_file``).
        val_ann_file: COCO instances JSON of the validation images; its categories
            must be those of ``ann_file``.

    Raises:
        FileNotFoundError: If ``image_dir``, ``ann_file``, ``proposals``,
            ``val_image_dir`` or ``val_ann_file`` is missing.
        ValueError: If a numeric argument is out of range, both ``ann_file`` and
            ``proposals`` are given, ``box_method`` is unknown, only one of
            ``val_image_dir`` and ``val_ann_file`` is given, or they are given with
            ``val_fraction > 0``.

    Examples:
        >>> datamodule = HCLDataModule("data/images", ann_file="data/annotations.json")
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
        fused_color_jitter: bool = False,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        min_object_size: float = 8.0,
        min_box_size: float = 1.0,
        context_jitter: float = 0.1,
        scene_extra_boxes: tuple[int, int] = (1, 5),
        scene_fallback_scale: tuple[float, float] = (1.5, 3.0),
        boxes_per_image: tuple[int, int] = (2, 6),
        max_bad_fraction: float = 0.1,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        seed: int = 0,
        box_method: str = "random",
        selective_search: dict | None = None,
        val_fraction: float = 0.0,
        val_image_dir: str | Path | None = None,
        val_ann_file: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.image_dir = _check_file("image_dir", image_dir, directory=True)
        self.ann_file = _check_file("ann_file", ann_file)
        self.proposals = _check_file("proposals", proposals)
        self.val_image_dir = _check_file("val_image_dir", val_image_dir, directory=True)
        self.val_ann_file = _check_file("val_ann_file", val_ann_file)
        if ann_file is not None and proposals is not None:
            raise ValueError("give at most one of ann_file and proposals, not both")
        if (val_image_dir is None) != (val_ann_file is None):
            raise ValueError(
                "give both val_image_dir and val_ann_file (COCO instances JSON) or neither, "
                f"got val_image_dir={val_image_dir!r}, val_ann_file={val_ann_file!r}"
            )
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if val_fraction > 0 and val_image_dir is not None:
            raise ValueError(
                f"give val_fraction={val_fraction} (a hold-out of the training images) or "
                "val_image_dir/val_ann_file (separate images), not both"
            )
        if not isinstance(fused_color_jitter, bool):
            raise ValueError(
                f"fused_color_jitter must be true or false, got {fused_color_jitter!r}"
            )
        if box_method not in BOX_METHODS:
            raise ValueError(f"box_method must be one of {BOX_METHODS}, got {box_method!r}")
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("object_size", object_size, 1),
            ("scene_size", scene_size, 1),
            ("num_workers", num_workers, 0),
            ("min_object_size", min_object_size, 0),
            ("min_box_size", min_box_size, 0),
        ):
            _check_at_least(name, value, low)
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        if max_image_pixels is not None:
            _check_at_least("max_image_pixels", max_image_pixels, 1)
        self.save_hyperparameters()
        # Paths as strings: checkpoints must load with torch.load(weights_only=True).
        for key in ("image_dir", "ann_file", "proposals", "val_image_dir", "val_ann_file"):
            if self.hparams[key] is not None:
                self.hparams[key] = str(self.hparams[key])
        if selective_search is not None:
            self.hparams["selective_search"] = {
                str(k): str(v) if isinstance(v, Path) else v
                for k, v in dict(selective_search).items()
            }
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        # Built here so that argument errors surface at construction, not in setup().
        self.sampler = SceneObjectSampler(
            min_object_size=min_object_size,
            context_jitter=context_jitter,
            scene_extra_boxes=tuple(scene_extra_boxes),
            scene_fallback_scale=tuple(scene_fallback_scale),
        )
        self.transform = HCLTransform(
            object_size=object_size, scene_size=scene_size, fused_color_jitter=fused_color_jitter
        )
        self._source: BoxSource | None = None
        self.train_dataset: HCLDataset | None = None
        self.val_dataset: LabelledCropDataset | None = None

    @property
    def source(self) -> BoxSource:
        """The box source, read on first access."""
        if self._source is None:
            self._source = build_box_source(
                self.image_dir,
                ann_file=self.ann_file,
                proposals=self.proposals,
                min_box_size=self.hparams.min_box_size,
                boxes_per_image=tuple(self.hparams.boxes_per_image),
                seed=self.hparams.seed,
                box_method=self.hparams.box_method,
                selective_search=(
                    None
                    if self.hparams.selective_search is None
                    else dict(self.hparams.selective_search)
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
        """Builds the training and validation datasets (once)."""
        if self.train_dataset is not None:
            return
        train_records, held_out = self._split()
        dataset = HCLDataset(
            train_records,
            self.sampler,
            self.transform,
            max_bad_fraction=self.hparams.max_bad_fraction,
            max_image_pixels=self.hparams.max_image_pixels,
        )
        if len(dataset) < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the dataset ({len(dataset)} "
                "images): with drop_last=True there would be no batch"
            )
        self.train_dataset = dataset
        self.val_dataset = self._val_dataset(held_out)

    def _split(self) -> tuple[list[ImageRecord], list[ImageRecord]]:
        """``(training, held-out)`` records: the seeded ``val_fraction`` hold-out."""
        records = self.source.records
        fraction = self.hparams.val_fraction
        if fraction == 0:
            return records, []
        if self.num_classes is None:
            rank_zero_info(
                f"hcl: val_fraction={fraction} ignored: the boxes have no classes to "
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
        where = f"{len(held_out)} held-out images (val_fraction={self.hparams.val_fraction})"
        if self.val_image_dir is not None:
            source = CocoBoxSource(
                self.val_image_dir, self.val_ann_file, min_box_size=self.hparams.min_box_size
            )
            if source.class_names != self.class_names:
                raise ValueError(
                    f"val_ann_file {self.val_ann_file} has the classes {source.class_names}, "
                    f"but the training boxes have {self.class_names}: they must be the same"
                )
            records, where = source.records, f"{len(source.records)} images of {self.val_image_dir}"
        if not records:
            return None
        dataset = LabelledCropDataset(
            records,
            object_size=self.hparams.object_size,
            min_object_size=self.hparams.min_object_size,
            max_image_pixels=self.hparams.max_image_pixels,
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
