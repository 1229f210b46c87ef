"""Image decoding and the bad-file policy: :func:`decode_image`, :class:`BadImageError`."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from hcl_lightning.checks import check_number

__all__ = [
    "BAD_IMAGE_REASONS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "TRANSPARENT_BACKGROUND",
    "BadImageError",
    "bad_image_reason",
    "check_bad_image_policy",
    "decode_image",
    "load_image",
    "to_rgb",
]

#: Why an image was skipped, in the order of ``HCLDataset.bad_codes`` (code r + 1 = reason r).
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


def check_bad_image_policy(max_bad_fraction: float, max_image_pixels: int | None) -> None:
    """Raises ``ArgumentError`` (a ``ValueError``) for a bad-image policy out of range.

    Args:
        max_bad_fraction: Largest tolerated fraction of bad images, in [0, 1].
        max_image_pixels: Pixel budget of a decoded image, >= 1, or None.
    """
    check_number("max_bad_fraction", max_bad_fraction, "in [0, 1]", lambda v: 0 <= v <= 1)
    check_number(
        "max_image_pixels", max_image_pixels, ">= 1", lambda v: v >= 1, integer=True, nullable=True
    )
