"""The HCL dataset: one image in, one dict of scene/object crops out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from hcl_lightning.data.boxes import ImageRecord
from hcl_lightning.data.crops import SceneObjectSampler
from hcl_lightning.data.transforms import HCLTransform

MIN_TRIES_BEFORE_ABORT = 20
MAX_KEPT_OFFENDERS = 10


def load_image(path: Path) -> Image.Image:
    """Decodes an image once: applies the EXIF orientation and converts it to RGB.

    Raises:
        FileNotFoundError: If the file does not exist.
        OSError: If the file cannot be read or decoded (including truncated files).
    """
    with Image.open(path) as image:
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")


def _bad_image_reason(err: Exception) -> str:
    if isinstance(err, FileNotFoundError):
        return "missing"
    if isinstance(err, PermissionError | IsADirectoryError):
        return "unreadable"
    return "corrupt"


class HCLDataset(Dataset):
    """Scene and object crops of images with boxes, for Hyperbolic Contrastive Learning.

    Each item is the dict of the data contract::

        {"views": [Tensor(3, H, W), Tensor(3, H, W)],  # 2 MoCo v2 views of the object
         "scene": Tensor(3, Hs, Ws),                   # scene region containing it
         "object": Tensor(3, H, W),                    # the object region
         "n_objects": int64 tensor,                    # boxes at least half in the scene
         "labels": int64 tensor,                       # class of the object box, or -1
         "index": int64 tensor}                        # index of the image used

    torch's default collate stacks a list of items into ``views`` = list of 2
    (B, 3, H, W) tensors, ``scene`` (B, 3, Hs, Ws), and (B,) tensors for the rest.

    Each image is decoded once per item. An image that is missing, corrupt or
    unreadable does not stop training: the next index is tried instead (so ``index``
    is that of the image actually used), and the failure is counted in
    :attr:`skipped` (reason -> count) with the first offending files kept in
    :attr:`offenders`. With DataLoader workers, each worker process keeps its own
    counts. If, after at least 20 tried images, more than ``max_bad_fraction`` of them
    were bad, a RuntimeError lists the first offenders.

    The crop positions come from a generator seeded from torch's random state; the
    augmentations use torch's and (lightly's blur) numpy's global state. So
    ``pytorch_lightning.seed_everything`` and the DataLoader's per-worker seeding make
    samples reproducible.

    Args:
        source_records: The images and their boxes (e.g. ``BoxSource.records``).
        sampler: Chooses the object and scene regions.
        transform: Crops and augments the regions.
        max_bad_fraction: Largest tolerated fraction of bad images, in [0, 1].
    """

    def __init__(
        self,
        source_records: Sequence[ImageRecord],
        sampler: SceneObjectSampler,
        transform: HCLTransform,
        max_bad_fraction: float = 0.1,
    ) -> None:
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        if len(source_records) == 0:
            raise ValueError("source_records is empty: no images to sample from")
        self.records = list(source_records)
        self.sampler = sampler
        self.transform = transform
        self.max_bad_fraction = max_bad_fraction
        self.skipped: Counter[str] = Counter()
        self.offenders: list[tuple[str, str]] = []
        self._tried = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Tensor | list[Tensor]]:
        for attempt in range(len(self.records)):
            current = (index + attempt) % len(self.records)
            record = self.records[current]
            self._tried += 1
            try:
                image = load_image(record.path)
            except Exception as err:  # any file PIL cannot decode is skipped
                self._count_bad(record.path, _bad_image_reason(err))
                continue
            return self._make_sample(image, record, current)
        raise RuntimeError(f"no readable image in the dataset; first offenders: {self.offenders}")

    def _make_sample(
        self, image: Image.Image, record: ImageRecord, index: int
    ) -> dict[str, Tensor | list[Tensor]]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        crop = self.sampler.sample(record.resolve(*image.size), rng)
        sample = self.transform(image, crop)
        sample["n_objects"] = torch.tensor(crop.n_objects, dtype=torch.long)
        sample["labels"] = torch.tensor(crop.label, dtype=torch.long)
        sample["index"] = torch.tensor(index, dtype=torch.long)
        return sample

    def _count_bad(self, path: Path, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.offenders) < MAX_KEPT_OFFENDERS:
            self.offenders.append((str(path), reason))
        n_bad = sum(self.skipped.values())
        if self._tried >= MIN_TRIES_BEFORE_ABORT and n_bad > self.max_bad_fraction * self._tried:
            raise RuntimeError(
                f"{n_bad} of {self._tried} images tried were bad (more than "
                f"max_bad_fraction={self.max_bad_fraction}): {dict(self.skipped)}; "
                f"first offenders: {self.offenders}"
            )
