"""Unaugmented crops for evaluation: every labelled box of a set of images, or given regions."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightly.transforms.torchvision_v2_compatibility import torchvision_transforms as T
from lightly.transforms.utils import IMAGENET_NORMALIZE
from PIL.Image import Image
from torch import Tensor
from torch.utils.data import Dataset

from hcl_lightning.data.boxes import ImageRecord
from hcl_lightning.data.crops import to_pixels
from hcl_lightning.data.images import DEFAULT_MAX_IMAGE_PIXELS, bad_image_reason, decode_image

__all__ = ["LabelledCropDataset", "RegionCropDataset", "collate_crops", "eval_transform"]

#: A region of an image: xyxy pixel box.
Box = tuple[float, float, float, float]


def eval_transform(
    size: int, normalize: dict[str, list[float]] | None = IMAGENET_NORMALIZE
) -> T.Compose:
    """Resize to ``size x size``, tensor, normalisation: deterministic, no random state."""
    transform = [T.Resize((size, size)), T.ToTensor()]
    if normalize:
        transform.append(T.Normalize(mean=normalize["mean"], std=normalize["std"]))
    return T.Compose(transform)


def collate_crops(items: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Concatenates the ``(crops (M, 3, S, S), labels (M,))`` of several images."""
    crops, labels = zip(*items, strict=True)
    return torch.cat(crops), torch.cat(labels)


def crop_boxes(image: Image, boxes: np.ndarray, scale: tuple[float, float], transform) -> Tensor:
    """``transform`` of each box of ``image`` (boxes in pixels of the full-size image,
    ``scale`` that of the decoded one), rounded outwards to pixels: (M, 3, S, S)."""
    sx, sy = scale
    scaled = boxes * np.asarray([sx, sy, sx, sy], boxes.dtype)
    return torch.stack([transform(image.crop(to_pixels(box, *image.size))) for box in scaled])


class LabelledCropDataset(Dataset):
    """The labelled boxes of images as evaluation crops, one item per image.

    Item ``i`` is ``(crops, labels)`` of image ``i``: ``crops`` (M, 3, S, S) are its
    labelled boxes, each cut out and resized to ``object_size`` (:func:`eval_transform`:
    no augmentation, ImageNet normalisation), ``labels`` (M,) their int64 classes.
    Batch items with :func:`collate_crops`, which concatenates them, so a batch of
    ``B`` images holds every crop of those images. Each image is decoded once per item
    (:func:`~hcl_lightning.data.decode_image`, with its ``max_image_pixels`` guard;
    boxes are scaled with the image when it is decoded at reduced size).

    Dropped when the dataset is built, and counted in :attr:`dropped` by reason:
    ``unlabelled`` boxes (label -1) and ``too_small`` ones (narrower or lower than
    ``max(min_object_size, 1)`` pixels, or not finite). Images left without a box are not items. An
    image that cannot be read (missing, corrupt, too large, ...) gives no crops
    (``M = 0``) instead of an error; it is counted in :attr:`skipped` (reason ->
    count, of this process) and warned about once.

    Args:
        records: The images and their boxes (e.g. ``BoxSource.records``).
        object_size: Side in pixels of the crops.
        min_object_size: Minimum box side in pixels.
        max_image_pixels: Pixel budget of a decoded image (None: no guard).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        object_size: int,
        min_object_size: float = 0.0,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        if object_size < 1:
            raise ValueError(f"object_size must be >= 1, got {object_size}")
        self.object_size = object_size
        self.max_image_pixels = max_image_pixels
        self.transform = eval_transform(object_size)
        self.dropped: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.items: list[tuple[ImageRecord, np.ndarray, np.ndarray]] = []
        for record in records:
            labelled = record.labels >= 0
            sides = record.boxes[:, 2:] - record.boxes[:, :2]
            with np.errstate(invalid="ignore"):
                large = (sides >= max(min_object_size, 1.0)).all(axis=1)  # False for NaN
            self.dropped["unlabelled"] += int((~labelled).sum())
            self.dropped["too_small"] += int((labelled & ~large).sum())
            keep = labelled & large
            if keep.any():
                self.items.append((record, record.boxes[keep], record.labels[keep]))

    @property
    def num_crops(self) -> int:
        """Number of crops of all the items."""
        return sum(len(labels) for _, _, labels in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        record, boxes, labels = self.items[index]
        try:
            image, (sx, sy) = decode_image(record.path, self.max_image_pixels)
        except Exception as err:  # any file PIL cannot decode gives no crops
            reason = bad_image_reason(err)
            self.skipped[reason] += 1
            warnings.warn(
                f"evaluation image skipped ({reason}): {record.path}: {err}", stacklevel=2
            )
            size = self.object_size
            return torch.zeros(0, 3, size, size), torch.zeros(0, dtype=torch.long)
        crops = crop_boxes(image, boxes, (sx, sy), self.transform)
        return crops, torch.as_tensor(labels, dtype=torch.long)


class RegionCropDataset(Dataset):
    """Image regions as evaluation crops, one item per ``(path, box)``.

    Item ``i`` is ``(crop, ok)``: the region ``box`` (xyxy pixels of the full-size image;
    ``None``: the whole image) of the image at ``path``, resized to ``size``
    (:func:`eval_transform`), and ``ok = True``; an image that cannot be read gives a
    zero tensor and ``ok = False`` instead of an error.

    Args:
        items: ``(image path, box or None)`` pairs.
        size: Side in pixels of the crops.
        max_image_pixels: Pixel budget of a decoded image (None: no guard, full size).
    """

    def __init__(
        self,
        items: Sequence[tuple[Path, Box | None]],
        size: int,
        max_image_pixels: int | None = None,
    ) -> None:
        self.items = list(items)
        self.size = size
        self.max_image_pixels = max_image_pixels
        self.transform = eval_transform(size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, bool]:
        path, box = self.items[index]
        try:
            image, scale = decode_image(Path(path), self.max_image_pixels)
        except Exception:  # unreadable images are reported, never crash an evaluation
            return torch.zeros(3, self.size, self.size), False
        if box is None:
            return self.transform(image), True
        return crop_boxes(image, np.asarray([box], np.float64), scale, self.transform)[0], True
