"""The HCL dataset: one image in, one dict of scene/object crops out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from hcl_lightning.data.boxes import ImageRecord
from hcl_lightning.data.crops import SceneObjectSampler
from hcl_lightning.data.images import (
    BAD_IMAGE_REASONS,
    DEFAULT_MAX_IMAGE_PIXELS,
    TRANSPARENT_BACKGROUND,
    BadImageError,
    bad_image_reason,
    check_bad_image_policy,
    decode_image,
    load_image,
    to_rgb,
)
from hcl_lightning.data.transforms import HCLTransform

# Image decoding moved to hcl_lightning.data.images; its names stay importable from here.
__all__ = [
    "BAD_IMAGE_REASONS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "TRANSPARENT_BACKGROUND",
    "BadImageError",
    "HCLDataset",
    "bad_image_reason",
    "decode_image",
    "load_image",
    "to_rgb",
]

MIN_TRIES_BEFORE_ABORT = 20
MAX_KEPT_OFFENDERS = 10
#: Length of a sample's ``scene_labels`` (classes beyond it are dropped; -1 pads).
MAX_SCENE_LABELS = 32


def padded_labels(labels: Sequence[int], length: int = MAX_SCENE_LABELS) -> Tensor:
    """``labels`` as an int64 tensor of ``length``, cut or padded with -1."""
    out = torch.full((length,), -1, dtype=torch.long)
    kept = list(labels)[:length]
    out[: len(kept)] = torch.tensor(kept, dtype=torch.long)
    return out


class HCLDataset(Dataset):
    """Scene and object crops of images with boxes, for Hyperbolic Contrastive Learning.

    Each item is the dict of the data contract::

        {"views": [Tensor(3, H, W), Tensor(3, H, W)],  # 2 MoCo v2 views of the object
         "scene": Tensor(3, Hs, Ws),                   # scene region containing it
         "object": Tensor(3, H, W),                    # the object region
         "n_objects": int64 tensor,                    # boxes at least half in the scene
         "labels": int64 tensor,                       # class of the object box, or -1
         "scene_labels": int64 tensor (32,),           # classes of the n_objects, -1 padded
         "index": int64 tensor,                        # index of the image used
         "skipped": int64 tensor (R,)}                 # bad images skipped for this item

    torch's default collate stacks a list of items into ``views`` = list of 2
    (B, 3, H, W) tensors, ``scene`` (B, 3, Hs, Ws), ``skipped`` (B, R), and (B,)
    tensors for the rest.

    **Bad images.** Each image is decoded once per item, by :func:`decode_image` (size
    guard ``max_image_pixels``, EXIF orientation, any mode to 8-bit RGB; images smaller
    than the crops are upscaled by the transforms). An image that is missing, empty,
    corrupt or truncated, too large, of an unconvertible mode or unreadable does not
    stop training: the next index is tried instead (so ``index`` is that of the image
    actually used). Each skip is counted three ways:

    - in the item itself: ``skipped[r]`` counts the bad images of reason
      ``BAD_IMAGE_REASONS[r]`` skipped to produce it. The counts travel with the batch,
      so they reach the main process from DataLoader workers too; a
      :class:`~hcl_lightning.data.DataHygieneMonitor` sums them per epoch;
    - in :attr:`skipped` (reason -> count) and :attr:`offenders` (the first files and
      their reasons) of this process (each DataLoader worker keeps its own);
    - fail fast: if, after at least 20 tried images, more than ``max_bad_fraction`` of
      the images this process tried were bad, a RuntimeError lists the counts and the
      first offenders.

    The crop positions come from a generator seeded from torch's random state; the
    augmentations use torch's and (lightly's blur) numpy's global state. So
    ``pytorch_lightning.seed_everything`` and the DataLoader's per-worker seeding make
    samples reproducible.

    Args:
        source_records: The images and their boxes (e.g. ``BoxSource.records``).
        sampler: Chooses the object and scene regions.
        transform: Crops and augments the regions.
        max_bad_fraction: Largest tolerated fraction of bad images, in [0, 1].
        max_image_pixels: Pixel budget of a decoded image (see :func:`decode_image`);
            None disables the guard.
    """

    def __init__(
        self,
        source_records: Sequence[ImageRecord],
        sampler: SceneObjectSampler,
        transform: HCLTransform,
        max_bad_fraction: float = 0.1,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        check_bad_image_policy(max_bad_fraction, max_image_pixels)
        if len(source_records) == 0:
            raise ValueError("source_records is empty: no images to sample from")
        self.records = list(source_records)
        self.sampler = sampler
        self.transform = transform
        self.max_bad_fraction = max_bad_fraction
        self.max_image_pixels = max_image_pixels
        self.skipped: Counter[str] = Counter()
        self.offenders: list[tuple[str, str]] = []
        self._tried = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Tensor | list[Tensor]]:
        skipped = torch.zeros(len(BAD_IMAGE_REASONS), dtype=torch.long)
        for attempt in range(len(self.records)):
            current = (index + attempt) % len(self.records)
            record = self.records[current]
            self._tried += 1
            try:
                image, scale = decode_image(record.path, self.max_image_pixels)
            except Exception as err:  # any file PIL cannot decode is skipped
                reason = bad_image_reason(err)
                skipped[BAD_IMAGE_REASONS.index(reason)] += 1
                self._count_bad(record.path, reason)
                continue
            sample = self._make_sample(image, record.resolve(*image.size, scale=scale), current)
            sample["skipped"] = skipped
            return sample
        raise RuntimeError(f"no readable image in the dataset; first offenders: {self.offenders}")

    def _make_sample(
        self, image: Image.Image, record: ImageRecord, index: int
    ) -> dict[str, Tensor | list[Tensor]]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        crop = self.sampler.sample(record, rng)
        sample = self.transform(image, crop)
        sample["n_objects"] = torch.tensor(crop.n_objects, dtype=torch.long)
        sample["labels"] = torch.tensor(crop.label, dtype=torch.long)
        sample["scene_labels"] = padded_labels(crop.scene_labels)
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
