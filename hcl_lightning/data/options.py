"""The argument groups of :class:`~hcl_lightning.data.HCLDataModule`, one dataclass each.

Hydra instantiates them from ``data.crops``, ``data.boxes``, ``data.images``,
``data.loader`` and ``data.validation`` (``_target_``); each checks its fields when it is
made and raises :class:`~hcl_lightning.checks.ArgumentError` (a ``ValueError``) for a
field out of range. A mapping of the fields is accepted wherever one is expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hcl_lightning.checks import ArgumentError, check_flag, check_number
from hcl_lightning.data.box_sources import check_box_method
from hcl_lightning.data.crops import SceneObjectSampler
from hcl_lightning.data.images import DEFAULT_MAX_IMAGE_PIXELS, check_bad_image_policy

__all__ = ["BoxOptions", "CropOptions", "ImageOptions", "LoaderOptions", "ValidationOptions"]


class _Options:
    """``as_dict`` and ``coerce`` for the option dataclasses."""

    @classmethod
    def coerce(cls, value: Any) -> Any:
        """``value`` as an instance: ``None`` gives the defaults, a mapping its fields."""
        if value is None:
            return cls()
        if isinstance(value, Mapping):
            return cls(**value)
        if not isinstance(value, cls):
            raise TypeError(f"expected a {cls.__name__} or a mapping, got {type(value).__name__}")
        return value

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain values (tuples, strings), e.g. for ``save_hyperparameters``."""
        return asdict(self)


@dataclass(frozen=True)
class CropOptions(_Options):
    """How the object and scene crops are sampled and augmented.

    Args:
        min_object_size: Minimum box side, in pixels, for a box to be an object.
        context_jitter: Maximum enlargement of each object side (fraction of its size).
        scene_extra_boxes: Range of the number of other boxes in a scene.
        scene_fallback_scale: Range of scene/object side ratio when no other box exists.
        fused_color_jitter: Colour-jitter the scene and object crops in one affine pass
            (:class:`~hcl_lightning.data.color.FusedColorJitter`) instead of
            torchvision's ``ColorJitter``; the views keep lightly's MoCo v2 augmentation.

    Raises:
        ArgumentError: as :class:`~hcl_lightning.data.SceneObjectSampler`, or for a
            ``fused_color_jitter`` that is not a bool.

    Example:
        >>> HCLDataModule("images", ann_file="ann.json", crops=CropOptions(min_object_size=16))
    """

    min_object_size: float = 8.0
    context_jitter: float = 0.1
    scene_extra_boxes: tuple[int, int] = (1, 5)
    scene_fallback_scale: tuple[float, float] = (1.5, 3.0)
    fused_color_jitter: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "scene_extra_boxes", tuple(self.scene_extra_boxes))
        object.__setattr__(self, "scene_fallback_scale", tuple(self.scene_fallback_scale))
        check_flag("fused_color_jitter", self.fused_color_jitter)
        self.sampler()  # the sampler checks its arguments

    def sampler(self) -> SceneObjectSampler:
        """A :class:`~hcl_lightning.data.SceneObjectSampler` with these options."""
        return SceneObjectSampler(
            min_object_size=self.min_object_size,
            context_jitter=self.context_jitter,
            scene_extra_boxes=self.scene_extra_boxes,
            scene_fallback_scale=self.scene_fallback_scale,
        )


@dataclass(frozen=True)
class BoxOptions(_Options):
    """Where the boxes come from when the datamodule gets no ``ann_file`` / ``proposals``,
    and which annotation boxes are kept.

    Args:
        method: Boxes of a plain folder: ``"random"`` or ``"selective_search"``
            (cached proposals, see :class:`~hcl_lightning.data.SelectiveSearchBoxSource`;
            needs ``pip install "hcl-lightning[selective-search]"``).
        min_box_size: Minimum box side, in pixels, of COCO boxes kept at all.
        boxes_per_image: Range of the number of random boxes (``method="random"``).
        selective_search: Keyword arguments of ``SelectiveSearchBoxSource``
            (``cache_file``, ``max_boxes``, ``min_size``, ``mode``, ``max_side``...).

    Raises:
        ArgumentError: for an unknown ``method`` or a negative ``min_box_size``.
    """

    method: str = "random"
    min_box_size: float = 1.0
    boxes_per_image: tuple[int, int] = (2, 6)
    selective_search: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes_per_image", tuple(self.boxes_per_image))
        if self.selective_search is not None:  # plain values: checkpoints load weights_only
            options = {
                str(k): str(v) if isinstance(v, Path) else v
                for k, v in dict(self.selective_search).items()
            }
            object.__setattr__(self, "selective_search", options)
        check_box_method(self.method, argument="method")
        check_number("min_box_size", self.min_box_size, ">= 0", lambda v: v >= 0)


@dataclass(frozen=True)
class ImageOptions(_Options):
    """What happens to bad and huge images.

    Args:
        max_bad_fraction: Largest tolerated fraction of bad images (see
            :class:`~hcl_lightning.data.HCLDataset`); more fails fast.
        max_image_pixels: Pixel budget of a decoded image: larger JPEGs are decoded at
            reduced scale, other larger images skipped (None: no guard).

    Raises:
        ArgumentError: as :func:`~hcl_lightning.data.images.check_bad_image_policy`.
    """

    max_bad_fraction: float = 0.1
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        check_bad_image_policy(self.max_bad_fraction, self.max_image_pixels)


@dataclass(frozen=True)
class LoaderOptions(_Options):
    """DataLoader settings other than the batch size.

    Args:
        num_workers: Worker processes.
        pin_memory: Pin batches in page-locked memory; None: if CUDA is available.
        persistent_workers: Keep workers between epochs (only with ``num_workers > 0``).

    Raises:
        ArgumentError: for a negative or non-integer ``num_workers``, or flags that are
            not bools.
    """

    num_workers: int = 0
    pin_memory: bool | None = None
    persistent_workers: bool = True

    def __post_init__(self) -> None:
        check_number("num_workers", self.num_workers, ">= 0", lambda v: v >= 0, integer=True)
        if self.pin_memory is not None:
            check_flag("pin_memory", self.pin_memory)
        check_flag("persistent_workers", self.persistent_workers)


@dataclass(frozen=True)
class ValidationOptions(_Options):
    """Validation crops for the online probes: a hold-out or separate images.

    Args:
        fraction: Fraction of the training images, in [0, 1), held out for validation
            (chosen with the datamodule's ``seed``; ignored, with a log line, when the
            boxes have no classes).
        image_dir: Folder of separate validation images (with ``ann_file``).
        ann_file: COCO instances JSON of those images; its categories must be the
            training boxes'.

    Raises:
        ArgumentError: if ``fraction`` is outside [0, 1), only one of ``image_dir`` and
            ``ann_file`` is given, or they are given with ``fraction > 0``.
    """

    fraction: float = 0.0
    image_dir: str | None = None
    ann_file: str | None = None

    def __post_init__(self) -> None:
        for name in ("image_dir", "ann_file"):  # strings: checkpoints load weights_only
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else str(value))
        check_number("fraction", self.fraction, "in [0, 1)", lambda v: 0 <= v < 1)
        if (self.image_dir is None) != (self.ann_file is None):
            raise ArgumentError(
                "ann_file" if self.ann_file is None else "image_dir",
                None,
                "must be given with the other of image_dir and ann_file",
                message="give both image_dir and ann_file (COCO instances JSON) of the "
                f"validation images or neither, got image_dir={self.image_dir!r}, "
                f"ann_file={self.ann_file!r}",
            )
        if self.fraction > 0 and self.image_dir is not None:
            raise ArgumentError(
                "fraction",
                self.fraction,
                "must be 0 with separate validation images",
                message=f"give fraction={self.fraction} (a hold-out of the training images) "
                "or image_dir/ann_file (separate images), not both",
            )
