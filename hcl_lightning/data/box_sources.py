"""Choosing the box source of a dataset: :func:`build_box_source`."""

from __future__ import annotations

from pathlib import Path

from hcl_lightning.checks import ArgumentError, check_choice
from hcl_lightning.data.boxes import BoxSource, CocoBoxSource, JsonBoxSource, RandomBoxSource
from hcl_lightning.data.selective_search import SelectiveSearchBoxSource

__all__ = ["BOX_METHODS", "build_box_source", "check_box_method", "check_box_source"]

#: Box sources of a plain image folder, for ``build_box_source(box_method=...)``.
BOX_METHODS = ("random", "selective_search")


def check_box_method(box_method: str, argument: str = "box_method") -> None:
    """Raises ``ArgumentError`` (named ``argument``) unless ``box_method`` is one of
    :data:`BOX_METHODS`."""
    check_choice(argument, box_method, BOX_METHODS)


def check_box_source(
    ann_file: str | Path | None, proposals: str | Path | None, box_method: str = "random"
) -> None:
    """Raises ``ArgumentError`` (a ``ValueError``) unless the arguments choose one source.

    Args:
        ann_file: COCO instances JSON, or None.
        proposals: JSON/JSONL proposal file, or None.
        box_method: one of :data:`BOX_METHODS`.

    Raises:
        ArgumentError: if both ``ann_file`` and ``proposals`` are given (argument
            ``proposals``), or ``box_method`` is unknown.
    """
    check_box_method(box_method)
    if ann_file is not None and proposals is not None:
        raise ArgumentError(
            "proposals",
            proposals,
            "must be null when ann_file is set",
            message="give at most one of ann_file and proposals, not both",
        )


def build_box_source(
    image_dir: str | Path,
    ann_file: str | Path | None = None,
    proposals: str | Path | None = None,
    min_box_size: float = 1.0,
    boxes_per_image: tuple[int, int] = (2, 6),
    seed: int = 0,
    box_method: str = "random",
    selective_search: dict | None = None,
) -> BoxSource:
    """Chooses the box source: COCO annotations, proposals, or random/selective-search boxes.

    Args:
        image_dir: Folder of the images.
        ann_file: COCO instances JSON; selects :class:`CocoBoxSource`.
        proposals: JSON/JSONL proposal file; selects :class:`JsonBoxSource`.
        min_box_size: Minimum box side for :class:`CocoBoxSource`.
        boxes_per_image: Number of boxes for :class:`RandomBoxSource`.
        seed: Seed for :class:`RandomBoxSource`.
        box_method: Boxes of a plain folder (neither ``ann_file`` nor ``proposals``):
            ``"random"`` (:class:`RandomBoxSource`) or ``"selective_search"``
            (:class:`~hcl_lightning.data.SelectiveSearchBoxSource`, cached proposals;
            needs ``opencv-contrib-python-headless``).
        selective_search: Keyword arguments of
            :class:`~hcl_lightning.data.SelectiveSearchBoxSource` (e.g. ``cache_file``,
            ``max_boxes``, ``min_size``).

    Returns:
        The box source. With neither ``ann_file`` nor ``proposals``, a
        :class:`RandomBoxSource` or a ``SelectiveSearchBoxSource`` by ``box_method``.

    Raises:
        ValueError: If both ``ann_file`` and ``proposals`` are given, or ``box_method``
            is unknown.
    """
    check_box_source(ann_file, proposals, box_method)
    if ann_file is not None:
        return CocoBoxSource(image_dir, ann_file, min_box_size=min_box_size)
    if proposals is not None:
        return JsonBoxSource(image_dir, proposals)
    if box_method == "selective_search":
        return SelectiveSearchBoxSource(image_dir, **(selective_search or {}))
    return RandomBoxSource(image_dir, boxes_per_image=boxes_per_image, seed=seed)
