"""LightningDataModule of HCL: box source, crop sampler, transform and DataLoader."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from hcl_lightning.data.boxes import BOX_METHODS, BoxSource, build_box_source
from hcl_lightning.data.crops import SceneObjectSampler
from hcl_lightning.data.dataset import DEFAULT_MAX_IMAGE_PIXELS, HCLDataset
from hcl_lightning.data.transforms import HCLTransform


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

    Args:
        image_dir: Folder of the images.
        ann_file: COCO instances JSON.
        proposals: JSON/JSONL file of ``{"file", "boxes"}`` entries.
        batch_size: Samples per batch (per device).
        object_size: Side in pixels of the object views and object crop.
        scene_size: Side in pixels of the scene crop.
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

    Raises:
        FileNotFoundError: If ``image_dir``, ``ann_file`` or ``proposals`` is missing.
        ValueError: If a numeric argument is out of range, both ``ann_file`` and
            ``proposals`` are given, or ``box_method`` is unknown.

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
    ) -> None:
        super().__init__()
        self.image_dir = _check_file("image_dir", image_dir, directory=True)
        self.ann_file = _check_file("ann_file", ann_file)
        self.proposals = _check_file("proposals", proposals)
        if ann_file is not None and proposals is not None:
            raise ValueError("give at most one of ann_file and proposals, not both")
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
        for key in ("image_dir", "ann_file", "proposals"):
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
        self.transform = HCLTransform(object_size=object_size, scene_size=scene_size)
        self._source: BoxSource | None = None
        self.train_dataset: HCLDataset | None = None

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
        """Builds the training dataset (once)."""
        if self.train_dataset is not None:
            return
        dataset = HCLDataset(
            self.source.records,
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

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of full size (the last incomplete batch is dropped)."""
        if self.train_dataset is None:
            self.setup("fit")
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )
