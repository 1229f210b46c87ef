"""Scene/object crop sampling of Hyperbolic Contrastive Learning (Ge et al., CVPR 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hcl_lightning.checks import ArgumentError, check_number
from hcl_lightning.data.boxes import ImageRecord, sanitize_boxes

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CropSpec:
    """Where to crop one HCL sample.

    Attributes:
        object_box: Object region (x1, y1, x2, y2), integer pixels, inside the image.
        scene_box: Scene region containing ``object_box``, same format.
        n_objects: Number of the image's boxes lying at least half inside the scene.
        label: Class id of the object box, -1 if unknown or if the object is random.
        box_index: Index of the object box in the record's boxes, -1 if random.
        scene_labels: Class ids of the boxes counted in ``n_objects`` (one per box, so
            a class may repeat); what a class-level scene-object matcher can know.
    """

    object_box: Box
    scene_box: Box
    n_objects: int
    label: int
    box_index: int
    scene_labels: tuple[int, ...] = ()


def objects_inside(boxes: np.ndarray, region: Box) -> np.ndarray:
    """Which boxes lie at least half inside a region.

    Args:
        boxes: Boxes (M, 4), xyxy, with positive area.
        region: One xyxy box.

    Returns:
        A boolean mask (M,): ``area(box & region) >= 0.5 * area(box)``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    inter_w = (np.minimum(boxes[:, 2], region[2]) - np.maximum(boxes[:, 0], region[0])).clip(0)
    inter_h = (np.minimum(boxes[:, 3], region[3]) - np.maximum(boxes[:, 1], region[1])).clip(0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter_w * inter_h >= 0.5 * area


def count_objects_inside(boxes: np.ndarray, region: Box) -> int:
    """The number of boxes whose area lies at least half inside a region (see
    :func:`objects_inside`)."""
    return int(objects_inside(boxes, region).sum())


def to_pixels(box: np.ndarray, width: int, height: int) -> Box:
    """Rounds a float box outwards to integer pixels inside the image, at least 1 px."""
    x1 = min(max(math.floor(box[0]), 0), width - 1)
    y1 = min(max(math.floor(box[1]), 0), height - 1)
    x2 = min(max(math.ceil(box[2]), x1 + 1), width)
    y2 = min(max(math.ceil(box[3]), y1 + 1), height)
    return x1, y1, x2, y2


def _union(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)])


class SceneObjectSampler:
    """Samples an object region and a scene region containing it, as in HCL.

    The rule, for an image of size W x H:

    - **Object.** One box is chosen uniformly among the image's boxes at least
      ``min_object_size`` wide and high. Each side is pushed out by a random fraction
      in ``[0, context_jitter]`` of the box's width/height (context), then the box is
      rounded outwards to integer pixels and clipped to the image.
    - **Scene.** The union of the object region with ``k`` other usable boxes, ``k``
      drawn uniformly from ``scene_extra_boxes`` and capped by the number available.
      If no other usable box exists, a random region containing the object whose sides
      are ``s`` times the object's, ``s`` uniform in ``scene_fallback_scale``, clipped to
      the image.
    - **No usable box.** The object is a random region of 10-50% of the image area
      (aspect ratio in [3/4, 4/3]) with label -1, and the scene is the same kind of
      larger random region around it as above.

    Every step draws a fixed number of random numbers: there is no rejection loop.
    ``n_objects`` counts all the image's non-empty boxes (usable or not) whose area
    lies at least half inside the scene, so it is at least 1 whenever the object is a
    real box.

    Args:
        min_object_size: Minimum width and height, in pixels, of a box to be an object.
        context_jitter: Maximum enlargement of each object side, as a fraction of the
            box size.
        scene_extra_boxes: Inclusive range of the number of other boxes in the scene.
        scene_fallback_scale: Range of the scene/object side ratio when the scene
            cannot be built from other boxes.

    Examples:
        >>> sampler = SceneObjectSampler(min_object_size=16)
        >>> crop = sampler.sample(record, np.random.default_rng(0))
        >>> crop.object_box, crop.scene_box, crop.n_objects
    """

    def __init__(
        self,
        min_object_size: float = 8.0,
        context_jitter: float = 0.1,
        scene_extra_boxes: tuple[int, int] = (1, 5),
        scene_fallback_scale: tuple[float, float] = (1.5, 3.0),
    ) -> None:
        check_number("min_object_size", min_object_size, ">= 0", lambda v: v >= 0)
        check_number("context_jitter", context_jitter, ">= 0", lambda v: v >= 0)
        if not 0 <= scene_extra_boxes[0] <= scene_extra_boxes[1]:
            raise ArgumentError(
                "scene_extra_boxes", scene_extra_boxes, "must satisfy 0 <= low <= high"
            )
        if not 1.0 <= scene_fallback_scale[0] <= scene_fallback_scale[1]:
            raise ArgumentError(
                "scene_fallback_scale", scene_fallback_scale, "must satisfy 1 <= low <= high"
            )
        self.min_object_size = min_object_size
        self.context_jitter = context_jitter
        self.scene_extra_boxes = scene_extra_boxes
        self.scene_fallback_scale = scene_fallback_scale

    def sample(self, record: ImageRecord, rng: np.random.Generator) -> CropSpec:
        """Samples the object and scene regions of one image.

        Args:
            record: The image; its size must be known (see :meth:`ImageRecord.resolve`).
            rng: Source of randomness.

        Returns:
            The crop specification.
        """
        if record.width is None or record.height is None:
            raise ValueError(f"{record.path}: image size unknown; call record.resolve(w, h)")
        width, height = int(record.width), int(record.height)
        boxes, nonempty = sanitize_boxes(record.boxes, width, height)
        large = (boxes[:, 2:] - boxes[:, :2] >= self.min_object_size).all(axis=1)
        usable = np.flatnonzero(nonempty & large)

        if len(usable) == 0:
            object_box = self._random_object(width, height, rng)
            scene_box = self._scene_around(object_box, width, height, rng)
            box_index, label = -1, -1
        else:
            box_index = int(rng.choice(usable))
            label = int(record.labels[box_index])
            object_box = self._with_context(boxes[box_index], width, height, rng)
            others = usable[usable != box_index]
            low, high = self.scene_extra_boxes
            k = min(int(rng.integers(low, high + 1)), len(others))
            if k == 0:
                scene_box = self._scene_around(object_box, width, height, rng)
            else:
                chosen = rng.choice(others, size=k, replace=False)
                union = _union(np.vstack([np.asarray(object_box), boxes[chosen]]))
                scene_box = to_pixels(union, width, height)
        inside = objects_inside(boxes[nonempty], scene_box)
        scene_labels = tuple(int(v) for v in np.asarray(record.labels)[nonempty][inside])
        return CropSpec(object_box, scene_box, int(inside.sum()), label, box_index, scene_labels)

    def _with_context(
        self, box: np.ndarray, width: int, height: int, rng: np.random.Generator
    ) -> Box:
        size = np.tile(box[2:] - box[:2], 2)
        pad = rng.uniform(0.0, self.context_jitter, 4) * size
        return to_pixels(box + pad * np.array([-1, -1, 1, 1]), width, height)

    @staticmethod
    def _random_object(width: int, height: int, rng: np.random.Generator) -> Box:
        area = rng.uniform(0.1, 0.5) * width * height
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        box_w = min(max(round(math.sqrt(area * ratio)), 1), width)
        box_h = min(max(round(math.sqrt(area / ratio)), 1), height)
        x1 = int(rng.integers(0, width - box_w + 1))
        y1 = int(rng.integers(0, height - box_h + 1))
        return x1, y1, x1 + box_w, y1 + box_h

    def _scene_around(self, box: Box, width: int, height: int, rng: np.random.Generator) -> Box:
        scale = rng.uniform(*self.scene_fallback_scale)
        scene_w = min((box[2] - box[0]) * scale, width)
        scene_h = min((box[3] - box[1]) * scale, height)
        # Any position in these ranges contains the object and stays inside the image.
        x1 = rng.uniform(max(0.0, box[2] - scene_w), min(box[0], width - scene_w))
        y1 = rng.uniform(max(0.0, box[3] - scene_h), min(box[1], height - scene_h))
        scene = to_pixels(np.array([x1, y1, x1 + scene_w, y1 + scene_h]), width, height)
        return to_pixels(_union(np.array([scene, box])), width, height)
