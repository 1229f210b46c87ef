"""The HCL dataset: one image in, one dict of scene/object crops out."""

from __future__ import annotations

import math
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
    "TooManyBadImagesError",
    "bad_image_reason",
    "decode_image",
    "describe_unreadable",
    "load_image",
    "to_rgb",
]

#: Bad files named in a summary or error message.
MAX_NAMED_OFFENDERS = 3
#: Images decoded in full by :meth:`HCLDataset.scan` (a seeded sample of the larger sets).
SCAN_SAMPLE = 512
#: Standard deviations of the Wilson bound with which a scanned *sample* must exceed
#: ``max_bad_fraction`` to stop the run (3: a set at the threshold passes 99.9 % of scans).
SCAN_Z = 3.0
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
         "index": int64 tensor}                        # index of the image used

    torch's default collate stacks a list of items into ``views`` = list of 2
    (B, 3, H, W) tensors, ``scene`` (B, 3, Hs, Ws), and (B,) tensors for the rest.

    **Bad images.** Each image is decoded once per item, by :func:`decode_image` (size
    guard ``max_image_pixels``, EXIF orientation, any mode to 8-bit RGB; images smaller
    than the crops are upscaled by the transforms). An image that is missing, empty,
    corrupt or truncated, too large, of an unconvertible mode or unreadable does not
    stop training:

    - it is recorded once, with its reason, in :attr:`bad_codes`, a shared-memory
      tensor that the DataLoader workers (forked or spawned after construction) and
      the main process all see; a recorded file is never decoded again in the run;
    - its item is replaced by a uniformly drawn image not known to be bad (torch's
      random state, so seeded like the crops), never by a neighbour, so adjacent bad
      files do not over-sample the next good one (``index`` is that of the image used);
    - :meth:`scan` (called by :class:`~hcl_lightning.data.HCLDataModule` before the
      first step) finds the missing and empty files and decodes a sample of the rest;
    - more than ``max_bad_fraction`` of the *dataset* recorded as bad, at any time (in
      any worker, in any file order), raises :class:`TooManyBadImagesError` (a
      RuntimeError) naming the counts and the first offenders.

    :meth:`unreadable` lists the recorded files; a
    :class:`~hcl_lightning.data.DataHygieneMonitor` prints them once at the end of
    training.

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
        self.bad_codes = torch.zeros(len(self.records), dtype=torch.int8).share_memory_()
        """(N,) int8 in shared memory: 0 for an image not known to be bad, ``r + 1`` for
        one recorded as bad for reason ``BAD_IMAGE_REASONS[r]``."""

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Tensor | list[Tensor]]:
        current = index
        while True:
            if not self.bad_codes[current]:
                record = self.records[current]
                try:
                    image, scale = decode_image(record.path, self.max_image_pixels)
                except Exception as err:  # any file PIL cannot decode is skipped
                    self._record_bad(current, bad_image_reason(err))
                else:
                    return self._make_sample(
                        image, record.resolve(*image.size, scale=scale), current
                    )
            good = torch.nonzero(self.bad_codes == 0).flatten()
            if len(good) == 0:
                raise TooManyBadImagesError(self._describe("none readable"))
            current = int(good[torch.randint(len(good), ())])

    def scan(self, sample: int = SCAN_SAMPLE, seed: int = 0) -> None:
        """Records the missing and empty files, and decodes a seeded sample of the others.

        Every file is checked with one ``stat``; ``sample`` of the rest (all of them in
        a smaller set) are decoded in full, which finds corrupt and truncated ones.

        Raises:
            TooManyBadImagesError: naming the first offenders, if the recorded bad files are more
                than ``max_bad_fraction`` of the dataset, or if the decoded sample's bad
                fraction exceeds it by more than :data:`SCAN_Z` standard deviations
                (Wilson's bound).
        """
        unchecked = []
        for index, record in enumerate(self.records):
            try:
                size = record.path.stat().st_size
            except OSError as err:
                self._record_bad(index, bad_image_reason(err), check=False)
                continue
            if size == 0:
                self._record_bad(index, "empty", check=False)
            else:
                unchecked.append(index)
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(unchecked)[:sample] if len(unchecked) > sample else unchecked
        n_bad = 0
        for index in chosen:
            try:
                decode_image(self.records[index].path, self.max_image_pixels)
            except Exception as err:  # noqa: PERF203  any failure is a bad file
                self._record_bad(index, bad_image_reason(err), check=False)
                n_bad += 1
        self._check_fraction()
        if len(chosen) < len(unchecked):
            low = _wilson_lower_bound(n_bad, len(chosen), SCAN_Z)
            known = int(torch.count_nonzero(self.bad_codes)) - n_bad
            estimate = known + low * len(unchecked)
            if estimate > self.max_bad_fraction * len(self):
                raise TooManyBadImagesError(
                    f"{n_bad} of a sample of {len(chosen)} images were bad: at least "
                    f"{estimate / len(self):.0%} of the {len(self)} images are, more than "
                    f"max_bad_fraction={self.max_bad_fraction}; " + self._describe("found so far")
                )

    def unreadable(self, codes: Tensor | None = None) -> list[tuple[Path, str]]:
        """The files recorded as bad (by ``codes``, default :attr:`bad_codes`), in
        dataset order, with their reasons."""
        codes = self.bad_codes if codes is None else codes
        return [
            (self.records[i].path, BAD_IMAGE_REASONS[int(codes[i]) - 1])
            for i in torch.nonzero(codes).flatten().tolist()
        ]

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

    def _record_bad(self, index: int, reason: str, check: bool = True) -> None:
        self.bad_codes[index] = BAD_IMAGE_REASONS.index(reason) + 1
        if check:
            self._check_fraction()

    def _check_fraction(self) -> None:
        n_bad = int(torch.count_nonzero(self.bad_codes))
        if n_bad > self.max_bad_fraction * len(self):
            raise TooManyBadImagesError(
                self._describe(f"more than max_bad_fraction={self.max_bad_fraction}")
            )

    def _describe(self, verdict: str) -> str:
        return describe_unreadable(self.unreadable(), len(self), verdict)


class TooManyBadImagesError(RuntimeError):
    """More of a dataset's images are bad than its ``max_bad_fraction`` allows."""


def describe_unreadable(
    bad: Sequence[tuple[Path, str]], n_images: int, verdict: str = "skipped"
) -> str:
    """``"3 of 400 images unreadable (1 missing, 1 empty, 1 corrupt), skipped; first:
    a.jpg (missing), ..."`` for ``bad`` files of a set of ``n_images`` (the first
    :data:`MAX_NAMED_OFFENDERS` named by path; ``verdict`` after the counts)."""
    line = f"{len(bad)} of {n_images} images unreadable"
    if not bad:
        return line
    counts = Counter(reason for _, reason in bad)
    reasons = ", ".join(f"{counts[r]} {r}" for r in BAD_IMAGE_REASONS if counts[r])
    first = ", ".join(f"{path} ({reason})" for path, reason in bad[:MAX_NAMED_OFFENDERS])
    return f"{line} ({reasons}), {verdict}; first: {first}"


def _wilson_lower_bound(k: int, n: int, z: float) -> float:
    """Wilson's lower confidence bound of a proportion ``k / n`` at ``z`` sigmas."""
    if n == 0:
        return 0.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))
