"""Colour jitter as one affine colour transform: :class:`FusedColorJitter`.

torchvision's :class:`~torchvision.transforms.ColorJitter` on a PIL image runs four
image operations in a random order, each a pass over the pixels with its own rounding
and clipping; its hue step converts RGB -> HSV -> RGB and is most of its time. Each of
the four operations is affine in RGB (hue approximately), so their composition is one
3x4 matrix, applied by PIL in a single C pass (``Image.convert("RGB", matrix)``) — the
way GPU pipelines apply colour jitter (NVIDIA DALI's ``color_twist``).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from torchvision.transforms import ColorJitter

__all__ = ["FusedColorJitter", "colour_matrix", "LUMA"]

#: ITU-R 601 luma weights: PIL's RGB -> L conversion, used by its saturation (``Color``)
#: and contrast enhancers.
LUMA = np.array([0.299, 0.587, 0.114])

#: RGB -> YIQ (rows Y, I, Q); hue is rotated in the I-Q plane, luma Y is kept.
_RGB_TO_YIQ = np.array(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ]
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
#: RGB -> grey RGB (the luma in every channel): the saturation operation's blend target.
_GREY = np.outer(np.ones(3), LUMA)


def _hue_rotation(hue: float) -> np.ndarray:
    """RGB matrix turning the hue by ``hue`` turns, keeping the luma.

    A rotation of the YIQ chroma plane by ``-hue`` turns: the I-Q angle runs against
    the HSV hue (red -> yellow -> green is clockwise in the I-Q plane).
    """
    angle = -2.0 * math.pi * hue
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    return _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ


def colour_matrix(
    order: list[int],
    brightness: float | None,
    contrast: float | None,
    saturation: float | None,
    hue: float | None,
    mean_rgb: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The affine map ``rgb -> A @ rgb + b`` of the four jitter operations in ``order``.

    ``order`` and the factors are those of ``ColorJitter.get_params`` (0 brightness,
    1 contrast, 2 saturation, 3 hue; a factor ``None`` skips its operation), with
    torchvision's meaning for PIL images:

    - brightness ``f``: ``f * rgb`` (blend with black);
    - contrast ``f``: ``f * rgb + (1 - f) * m``, with ``m`` the mean luma of the image
      *at that point*, i.e. ``LUMA @ (A @ mean_rgb + b)`` for the map so far;
    - saturation ``f``: ``f * rgb + (1 - f) * luma(rgb)`` (blend with grey);
    - hue ``h``: a rotation of the YIQ chroma by ``h`` turns (torchvision shifts the HSV
      hue by ``h`` turns; the two agree in direction, and in size only roughly: see the
      performance page of the docs).

    Args:
        order: Permutation of ``0..3``.
        brightness: Brightness factor, or None.
        contrast: Contrast factor, or None.
        saturation: Saturation factor, or None.
        hue: Hue shift in turns, or None.
        mean_rgb: Mean RGB of the input image (the contrast operation's reference).

    Returns:
        ``(A, b)``: float64 arrays of shapes (3, 3) and (3,).
    """
    matrix, offset = np.eye(3), np.zeros(3)
    for index in order:
        if index == 0 and brightness is not None:
            matrix, offset = brightness * matrix, brightness * offset
        elif index == 1 and contrast is not None:
            mean = LUMA @ (matrix @ mean_rgb + offset)
            matrix, offset = contrast * matrix, contrast * offset + (1.0 - contrast) * mean
        elif index == 2 and saturation is not None:
            blend = saturation * np.eye(3) + (1.0 - saturation) * _GREY
            matrix, offset = blend @ matrix, blend @ offset
        elif index == 3 and hue is not None:
            rotation = _hue_rotation(hue)
            matrix, offset = rotation @ matrix, rotation @ offset
    return matrix, offset


class FusedColorJitter:
    """Colour jitter of a PIL RGB image in one pass: a drop-in for ``ColorJitter``.

    Draws its parameters with ``ColorJitter.get_params`` (the same distributions and
    the same random numbers, from torch's global generator, as torchvision's
    ``ColorJitter(brightness, contrast, saturation, hue)``), composes the four
    operations into one affine colour map (:func:`colour_matrix`) and applies it with
    ``Image.convert("RGB", matrix)`` (timings: the performance page of the docs).
    Differences from torchvision's output:
    pixel values are rounded and clipped to [0, 255] once at the end instead of after
    every operation, and the hue shift is a rotation of the YIQ chroma instead of the
    HSV hue.

    Args:
        brightness: As for torchvision's ``ColorJitter``.
        contrast: As for torchvision's ``ColorJitter``.
        saturation: As for torchvision's ``ColorJitter``.
        hue: As for torchvision's ``ColorJitter``.

    Example:
        >>> jitter = FusedColorJitter(0.4, 0.4, 0.4, 0.1)
        >>> jitter(image).size == image.size  # image: a PIL RGB image
        True
    """

    def __init__(
        self,
        brightness: float | tuple[float, float] = 0.0,
        contrast: float | tuple[float, float] = 0.0,
        saturation: float | tuple[float, float] = 0.0,
        hue: float | tuple[float, float] = 0.0,
    ) -> None:
        self.ranges = ColorJitter(brightness, contrast, saturation, hue)  # checks, ranges

    def __call__(self, image: Image.Image) -> Image.Image:
        """Jitters one RGB image; returns a new RGB image of the same size."""
        if image.mode != "RGB":
            raise ValueError(f"FusedColorJitter needs an RGB image, got mode {image.mode!r}")
        ranges = self.ranges
        order, *factors = ColorJitter.get_params(
            ranges.brightness, ranges.contrast, ranges.saturation, ranges.hue
        )
        mean_rgb = np.asarray(image.reduce(image.size).getpixel((0, 0)), dtype=np.float64)
        matrix, offset = colour_matrix(order.tolist(), *factors, mean_rgb)
        affine = np.concatenate([matrix, offset[:, None]], axis=1)
        return image.convert("RGB", tuple(float(v) for v in affine.ravel()))

    def __repr__(self) -> str:
        ranges = self.ranges
        return (
            f"{type(self).__name__}(brightness={ranges.brightness}, contrast={ranges.contrast}, "
            f"saturation={ranges.saturation}, hue={ranges.hue})"
        )
