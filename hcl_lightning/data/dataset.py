"""The HCL dataset: one image in, one dict of scene/object crops out."""

from __future__ import annotations

import math
import warnings
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

#: Why an image was skipped, in the order of a sample's ``skipped`` counts.
BAD_IMAGE_REASONS = ("missing", "empty", "corrupt", "too_large", "unsupported", "unreadable")

#: Default pixel budget of a decoded image (e.g. 8000 x 5000). Larger JPEGs are decoded
#: at a reduced scale (PIL's ``draft``); other larger images are skipped as "too_large".
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

#: Colour that transparent pixels are composited onto: the ImageNet mean, which the
#: normalisation maps to 0.
TRANSPARENT_BACKGROUND = (124, 116, 104)

#: EXIF orientations that swap width and height.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


class BadImageError(OSError):
    """An image that cannot be used; ``reason`` is one of :data:`BAD_IMAGE_REASONS`."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts a decoded image of any common mode to 8-bit RGB.

    - 16/32-bit integer greyscale (``I;16*``, ``I``): scaled by 255/65535 (a plain
      ``convert("RGB")`` clips at 255 and turns a 16-bit image white);
    - float greyscale (``F``): values in [0, 1] scaled by 255, others clipped to [0, 255];
    - alpha (``RGBA``, ``LA``, ``PA``, palette with transparency): composited onto
      :data:`TRANSPARENT_BACKGROUND`;
    - everything else (``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ...): PIL's conversion.

    Raises:
        BadImageError: (reason "unsupported") if PIL cannot convert the mode to RGB.
    """
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        if mode == "F":
            in_unit = values.size == 0 or (values.min() >= 0 and values.max() <= 1)
            values = values * 255.0 if in_unit else values
        else:
            values = values * (255.0 / 65535.0)
        grey = Image.fromarray(np.rint(values.clip(0, 255)).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise BadImageError(f"cannot convert mode {mode} to RGB: {err}", "unsupported") from err


def decode_image(
    path: Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[Image.Image, tuple[float, float]]:
    """Decodes an image with a size guard, applies its EXIF orientation, makes it RGB.

    The size is read from the header before any pixel is decoded. An image of more than
    ``max_pixels`` pixels is decoded at a reduced scale if it is a JPEG (PIL's
    ``draft``, then a resize to fit the budget), and refused otherwise.

    Args:
        path: Image file.
        max_pixels: Pixel budget of the decoded image; None: no guard (PIL's own
            ``Image.MAX_IMAGE_PIXELS`` decompression-bomb check still applies).

    Returns:
        The RGB image and its scale ``(sx, sy)`` relative to the full-size, EXIF-rotated
        image (``(1.0, 1.0)`` unless it was reduced), to scale annotation boxes with.

    Raises:
        FileNotFoundError: If the file does not exist.
        BadImageError: With ``reason`` "empty" (zero-byte file), "too_large" or
            "unsupported" (a mode that cannot be made RGB).
        OSError: If the file cannot be read or decoded (including truncated files).
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadImageError(f"{path} is an empty (zero-byte) file", "empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image_file = Image.open(path)
        except Image.DecompressionBombError as err:
            raise BadImageError(str(err), "too_large") from err
    with image_file as image:
        full_w, full_h = image.size
        if max_pixels is not None and full_w * full_h > max_pixels:
            if image.format != "JPEG":
                raise BadImageError(
                    f"{path}: {full_w}x{full_h} pixels exceed max_image_pixels={max_pixels}",
                    "too_large",
                )
            fit = math.sqrt(max_pixels / (full_w * full_h))
            image.draft(image.mode, (math.ceil(full_w * fit), math.ceil(full_h * fit)))
            if image.size[0] * image.size[1] > 4 * max_pixels:  # even 1/8 is too large
                raise BadImageError(
                    f"{path}: {full_w}x{full_h} pixels exceed max_image_pixels={max_pixels} "
                    "even at 1/8 scale",
                    "too_large",
                )
        image.load()
        orientation = image.getexif().get(0x0112, 1)
        rgb = to_rgb(ImageOps.exif_transpose(image))
    if max_pixels is not None and rgb.width * rgb.height > max_pixels:
        fit = math.sqrt(max_pixels / (rgb.width * rgb.height))
        size = (max(1, math.floor(rgb.width * fit)), max(1, math.floor(rgb.height * fit)))
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    if orientation in _TRANSPOSING_ORIENTATIONS:
        full_w, full_h = full_h, full_w
    return rgb, (rgb.width / full_w, rgb.height / full_h)


def load_image(path: Path, max_pixels: int | None = None) -> Image.Image:
    """Decodes an image once (EXIF orientation, RGB); see :func:`decode_image`.

    Without ``max_pixels`` the image keeps its full size, so boxes in its pixel
    coordinates stay valid (PIL's decompression-bomb check still applies).

    Raises:
        FileNotFoundError: If the file does not exist.
        OSError: If the file cannot be read or decoded (including truncated files); a
            :class:`BadImageError` for empty, too large or unconvertible images.
    """
    return decode_image(path, max_pixels)[0]


def bad_image_reason(err: Exception) -> str:
    """The entry of :data:`BAD_IMAGE_REASONS` for an error raised while decoding."""
    if isinstance(err, BadImageError):
        return err.reason
    if isinstance(err, FileNotFoundError):
        return "missing"
    if isinstance(err, PermissionError | IsADirectoryError):
        return "unreadable"
    if isinstance(err, Image.DecompressionBombError):
        return "too_large"
    return "corrupt"


class HCLDataset(Dataset):
    """Scene and object crops of images with boxes, for Hyperbolic Contrastive Learning.

    Each item is the dict of the data contract::

        {"views": [Tensor(3, H, W), Tensor(3, H, W)],  # 2 MoCo v2 views of the object
         "scene": Tensor(3, Hs, Ws),                   # scene region containing it
         "object": Tensor(3, H, W),                    # the object region
         "n_objects": int64 tensor,                    # boxes at least half in the scene
         "labels": int64 tensor,                       # class of the object box, or -1
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
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        if max_image_pixels is not None and max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1 or None, got {max_image_pixels}")
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
