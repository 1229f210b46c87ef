"""Box sources: where the object boxes of an image come from.

A box source turns a folder of images (plus, optionally, an annotation file) into a list
of :class:`ImageRecord`. Three sources are provided here (the selective-search source
is :mod:`hcl_lightning.data.selective_search`; :func:`~hcl_lightning.data.build_box_source`
in :mod:`hcl_lightning.data.box_sources` chooses one):

- :class:`CocoBoxSource`: COCO ``instances_*.json`` annotations (the common case).
- :class:`JsonBoxSource`: a JSON list or JSONL file of ``{"file", "boxes", "labels"}``
  entries, e.g. unsupervised object proposals.
- :class:`RandomBoxSource`: a plain image folder with *random* boxes, for data without
  any annotation.

All boxes are ``float32`` arrays of shape ``(M, 4)`` in ``xyxy`` pixel coordinates, and
all labels are ``int64`` arrays of shape ``(M,)`` holding contiguous class ids, or ``-1``
when the class is unknown.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def sanitize_boxes(
    boxes: np.ndarray, width: int, height: int, min_size: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Clips boxes to the image and flags the usable ones.

    Args:
        boxes: Boxes of shape (M, 4) in xyxy pixel coordinates; may hold NaN or inf.
        width: Image width in pixels.
        height: Image height in pixels.
        min_size: Minimum width and height (after clipping) of a usable box. A box must
            also have a positive width and height.

    Returns:
        The clipped boxes (float32, shape (M, 4)) and a boolean mask (M,) of the boxes
        that are finite and at least ``min_size`` wide and high.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    clipped = np.nan_to_num(boxes, nan=0.0, posinf=0.0, neginf=0.0)
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    box_w = clipped[:, 2] - clipped[:, 0]
    box_h = clipped[:, 3] - clipped[:, 1]
    keep = finite & (box_w > 0) & (box_h > 0) & (box_w >= min_size) & (box_h >= min_size)
    return clipped, keep


#: Reasons an annotation box is dropped, as counted in ``CocoBoxSource.stats``.
DROPPED_BOX_REASONS = (
    "crowd",  # iscrowd=1
    "non_finite",  # NaN or inf coordinate
    "empty",  # width or height <= 0 as annotated
    "outside",  # nothing of it inside the image
    "too_small",  # narrower or lower than min_box_size after clipping
    "unknown_image",  # image_id not among the images
    "unknown_category",  # category_id not among the categories
)
#: All the counts of ``CocoBoxSource.stats``: the dropped boxes, ``clipped`` (kept,
#: clipped to the image) and ``duplicate_image`` (image entries ignored).
BOX_STATS = (*DROPPED_BOX_REASONS, "clipped", "duplicate_image")


def classify_boxes(
    boxes: np.ndarray, width: int, height: int, min_size: float = 0.0
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """:func:`sanitize_boxes`, with the count of each reason a box is dropped or clipped.

    Returns:
        The clipped boxes, the mask of usable ones, and counts of ``non_finite``,
        ``empty``, ``outside``, ``too_small`` (dropped) and ``clipped`` (kept).
    """
    raw = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped, keep = sanitize_boxes(raw, width, height, min_size)
    finite = np.isfinite(raw).all(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        empty = finite & ((raw[:, 2] <= raw[:, 0]) | (raw[:, 3] <= raw[:, 1]))
        left = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        outside = finite & ~empty & ~left
        changed = finite & (clipped != raw).any(axis=1)
    too_small = finite & ~empty & ~outside & ~keep
    reasons = {
        "non_finite": int((~finite).sum()),
        "empty": int(empty.sum()),
        "outside": int(outside.sum()),
        "too_small": int(too_small.sum()),
        "clipped": int((keep & changed).sum()),
    }
    return clipped, keep, reasons


@dataclass(frozen=True)
class RandomBoxes:
    """Recipe for random boxes, generated deterministically once the image size is known.

    Attributes:
        boxes_per_image: Inclusive range of the number of boxes.
        seed: Seed of the source.
        index: Index of the image; with ``seed``, it seeds the generator, so the same
            seed, index and image size give the same boxes.
    """

    boxes_per_image: tuple[int, int]
    seed: int
    index: int

    def generate(self, width: int, height: int) -> np.ndarray:
        """Draws boxes covering 2-50% of the image area each.

        Args:
            width: Image width in pixels.
            height: Image height in pixels.

        Returns:
            Boxes of shape (M, 4) in xyxy pixel coordinates, inside the image.
        """
        rng = np.random.default_rng((self.seed, self.index))
        low, high = self.boxes_per_image
        n = int(rng.integers(low, high + 1))
        area = rng.uniform(0.02, 0.5, n) * width * height
        ratio = np.exp(rng.uniform(math.log(0.5), math.log(2.0), n))
        box_w = np.clip(np.sqrt(area * ratio), 1, width)
        box_h = np.clip(np.sqrt(area / ratio), 1, height)
        x1 = rng.uniform(0, 1, n) * (width - box_w)
        y1 = rng.uniform(0, 1, n) * (height - box_h)
        return np.stack([x1, y1, x1 + box_w, y1 + box_h], axis=1).astype(np.float32)


@dataclass
class ImageRecord:
    """One image and its object boxes.

    Attributes:
        path: Path of the image file.
        width: Image width in pixels, or None when unknown until the image is read.
        height: Image height in pixels, or None when unknown until the image is read.
        boxes: Float32 array (M, 4) of boxes in xyxy pixel coordinates.
        labels: Int64 array (M,) of contiguous class ids, -1 where unknown.
        image_id: Optional id of the image in its annotation file.
        random_boxes: If set, the boxes are random and generated by :meth:`resolve`.
        annotations: Optional per-box int64 arrays (M,) of annotation fields, by name
            (see ``CocoBoxSource(annotation_fields=...)``).
    """

    path: Path
    width: int | None = None
    height: int | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    image_id: int | None = None
    random_boxes: RandomBoxes | None = None
    annotations: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.annotations = {
            name: np.asarray(values, dtype=np.int64).reshape(-1)
            for name, values in self.annotations.items()
        }
        for name, values in {"labels": self.labels, **self.annotations}.items():
            if len(values) != len(self.boxes):
                raise ValueError(
                    f"{self.path}: got {len(self.boxes)} boxes but {len(values)} {name}"
                )

    def resolve(
        self, width: int, height: int, scale: tuple[float, float] = (1.0, 1.0)
    ) -> ImageRecord:
        """Returns a copy for an image of the given (decoded) size.

        Random boxes are generated, and all boxes are clipped to the image; boxes left
        empty or non-finite are dropped.

        Args:
            width: Width of the decoded image in pixels.
            height: Height of the decoded image in pixels.
            scale: ``(sx, sy)`` of the decoded image relative to the image the boxes
                refer to (below 1 when a huge image was decoded at reduced size).

        Returns:
            A record with known size and concrete boxes.
        """
        boxes, labels = self.boxes, self.labels
        if self.random_boxes is not None:
            boxes = self.random_boxes.generate(width, height)
            labels = np.full(len(boxes), -1, dtype=np.int64)
        elif tuple(scale) != (1.0, 1.0):
            boxes = boxes * np.asarray([scale[0], scale[1], scale[0], scale[1]], np.float32)
        boxes, keep = sanitize_boxes(boxes, width, height)
        annotations = {} if self.random_boxes is not None else self.annotations
        return replace(
            self,
            width=width,
            height=height,
            boxes=boxes[keep],
            labels=labels[keep],
            random_boxes=None,
            annotations={name: values[keep] for name, values in annotations.items()},
        )


class BoxSource:
    """Base of the box sources: a list of image records plus what is known about them.

    Attributes:
        records: One :class:`ImageRecord` per image.
        class_names: Names of the contiguous class ids, or None when unknown.
        stats: Number of dropped boxes by reason.
    """

    records: list[ImageRecord]
    class_names: list[str] | None = None
    stats: dict[str, int]

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or None when the source has no class names."""
        return None if self.class_names is None else len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)


def _load_json(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def _require(entry: dict, key: str, path: Path, where: str) -> object:
    if not isinstance(entry, dict) or key not in entry:
        raise ValueError(f"{path}: {where} has no field '{key}'")
    return entry[key]


def _integer(entry: dict, key: str, path: Path, where: str) -> int:
    value = _require(entry, key, path, where)
    try:
        if isinstance(value, bool) or float(value) != int(value):
            raise ValueError
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{path}: {where} has a non-integer '{key}': {value!r}") from None


def _bbox_xywh(ann: dict, path: Path) -> list[float]:
    bbox = _require(ann, "bbox", path, "an annotation")
    if not isinstance(bbox, list | tuple):
        raise ValueError(f"{path}: annotation {ann.get('id')} 'bbox' must be [x, y, w, h]")
    try:
        values = [math.nan if v is None else float(v) for v in bbox]
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"{path}: annotation {ann.get('id')} has a non-numeric 'bbox'") from err
    if len(values) != 4:
        raise ValueError(f"{path}: annotation {ann.get('id')} 'bbox' must be [x, y, w, h]")
    return values


class CocoBoxSource(BoxSource):
    """Boxes from a COCO instances annotation file.

    COCO ``xywh`` boxes are converted to ``xyxy`` and clipped to the image (boxes partly
    outside are kept, clipped, and counted as ``clipped``). Dropped, each counted in
    :attr:`stats` by its reason (:data:`DROPPED_BOX_REASONS`): crowd annotations
    (``iscrowd=1``), non-finite coordinates, zero or negative width/height, boxes wholly
    outside the image, boxes narrower or lower than ``min_box_size`` after clipping,
    and annotations of an unknown ``image_id`` or of a ``category_id`` missing from
    ``categories``. Of duplicate image ids the first entry is kept (it gets all the
    id's annotations), the others are counted as ``duplicate_image`` and listed in
    :attr:`duplicate_image_ids`, with a warning. Category ids are mapped to contiguous
    ids ``0..C-1`` in increasing order of the COCO id. Images without (usable)
    annotations are kept with 0 boxes: the sampler falls back to a random object region
    (see :class:`~hcl_lightning.data.SceneObjectSampler`).

    Args:
        image_dir: Folder holding the images named by ``file_name``.
        ann_file: COCO instances JSON file.
        min_box_size: Minimum width and height of a kept box, in pixels.
        annotation_fields: Integer fields of the annotations to keep per box, each with
            its default for annotations without it (e.g. ``{"id": -1}``), in
            ``record.annotations``; :attr:`annotation_fields_seen` names those that
            occur in the file.

    Raises:
        FileNotFoundError: If ``ann_file`` does not exist.
        ValueError: If ``ann_file`` is not JSON, is not a JSON object, lacks
            ``images``/``annotations`` or a required field of an entry, or has a
            malformed value (a non-integer id or size, a size below 1, a ``bbox`` that is
            not 4 numbers); the message names the file and the entry.

    Examples:
        >>> source = CocoBoxSource("coco/train2017", "coco/instances_train2017.json")
        >>> source.records[0].boxes  # (M, 4) xyxy pixels
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        min_box_size: float = 1.0,
        annotation_fields: Mapping[str, int] | None = None,
    ) -> None:
        image_dir, ann_file = Path(image_dir), Path(ann_file)
        fields = dict(annotation_fields or {})
        data = _load_json(ann_file)
        if not isinstance(data, dict):
            raise ValueError(f"{ann_file}: expected a JSON object with 'images' and 'annotations'")
        images = _require(data, "images", ann_file, "the top level")
        annotations = _require(data, "annotations", ann_file, "the top level")
        categories = data.get("categories")
        for key, value in (("images", images), ("annotations", annotations)):
            if not isinstance(value, list):
                raise ValueError(f"{ann_file}: '{key}' must be a list")
        if categories is not None and not isinstance(categories, list):
            raise ValueError(f"{ann_file}: 'categories' must be a list")
        if categories is None:
            category_ids = sorted(
                {_integer(a, "category_id", ann_file, "an annotation") for a in annotations}
            )
            names = {cid: str(cid) for cid in category_ids}
        else:
            names = {}
            for c in categories:
                cid = _integer(c, "id", ann_file, "a category")
                names.setdefault(cid, str(c.get("name", cid)))
        self.category_ids = sorted(names)
        self.class_names = [names[cid] for cid in self.category_ids]
        contiguous = {cid: i for i, cid in enumerate(self.category_ids)}
        self.stats = dict.fromkeys(BOX_STATS, 0)
        self.duplicate_image_ids: list[int] = []

        entries: dict[int, dict] = {}  # image id -> its first entry
        for image in images:
            image_id = _integer(image, "id", ann_file, "an image")
            where = f"image {image_id}"
            file_name = _require(image, "file_name", ann_file, where)
            width = _integer(image, "width", ann_file, where)
            height = _integer(image, "height", ann_file, where)
            if width < 1 or height < 1:
                raise ValueError(f"{ann_file}: {where} has size {width}x{height}; must be >= 1")
            if image_id in entries:
                self.stats["duplicate_image"] += 1
                self.duplicate_image_ids.append(image_id)
                continue
            entries[image_id] = {
                "file_name": str(file_name),
                "width": width,
                "height": height,
                "boxes": [],
                "labels": [],
                "annotations": [],
            }
        if self.duplicate_image_ids:
            warnings.warn(
                f"{ann_file}: {len(self.duplicate_image_ids)} duplicate image ids (first: "
                f"{self.duplicate_image_ids[:5]}); the first entry of each id is kept and "
                "gets all its annotations",
                stacklevel=2,
            )
        for ann in annotations:
            image_id = _integer(ann, "image_id", ann_file, "an annotation")
            x, y, w, h = _bbox_xywh(ann, ann_file)
            category = _integer(ann, "category_id", ann_file, "an annotation")
            if ann.get("iscrowd", 0):
                self.stats["crowd"] += 1
            elif image_id not in entries:
                self.stats["unknown_image"] += 1
            elif category not in contiguous:
                self.stats["unknown_category"] += 1
            else:
                entries[image_id]["boxes"].append([x, y, x + w, y + h])
                entries[image_id]["labels"].append(contiguous[category])
                entries[image_id]["annotations"].append(
                    [
                        _integer(ann, name, ann_file, "an annotation") if name in ann else default
                        for name, default in fields.items()
                    ]
                )
        self.annotation_fields_seen = {
            name for name in fields if any(name in ann for ann in annotations)
        }

        self.records = []
        for image_id, entry in entries.items():
            width, height = entry["width"], entry["height"]
            raw = np.asarray(entry["boxes"], dtype=np.float32).reshape(-1, 4)
            boxes, keep, reasons = classify_boxes(raw, width, height, min_box_size)
            for reason, count in reasons.items():
                self.stats[reason] += count
            values = np.asarray(entry["annotations"], np.int64).reshape(len(raw), len(fields))
            self.records.append(
                ImageRecord(
                    path=image_dir / entry["file_name"],
                    width=width,
                    height=height,
                    boxes=boxes[keep],
                    labels=np.asarray(entry["labels"], np.int64)[keep],
                    image_id=image_id,
                    annotations={name: values[keep, i] for i, name in enumerate(fields)},
                )
            )

    @property
    def dropped_boxes(self) -> int:
        """Number of annotations dropped, all reasons (``clipped`` boxes are kept)."""
        return sum(v for k, v in self.stats.items() if k in DROPPED_BOX_REASONS)


def _read_entries(path: Path) -> list:
    """Reads a JSON list, or a JSONL file with one object per line."""
    if not path.is_file():
        raise FileNotFoundError(f"proposal file not found: {path}")
    text = path.read_text()
    if path.suffix != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSONL without the .jsonl suffix
        if isinstance(data, list):
            return data
        if data is not None:
            raise ValueError(f"{path}: expected a JSON list of {{'file', 'boxes'}} entries")
    entries = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {line_no} is not valid JSON: {err}") from err
    return entries


class JsonBoxSource(BoxSource):
    """Boxes from a JSON list or JSONL file, e.g. unsupervised object proposals.

    Each entry is ``{"file": ..., "boxes": [[x1, y1, x2, y2], ...], "labels": [...]}``
    with ``file`` relative to ``image_dir`` and optional integer ``labels``. Image sizes
    are not read here (no image is opened at construction): :meth:`ImageRecord.resolve`
    takes them from the decoded image, and clips the boxes then.
    Non-finite or empty boxes are dropped and counted in :attr:`stats`.

    Args:
        image_dir: Folder the ``file`` entries are relative to.
        path: JSON (a list of entries) or JSONL (one entry per line) file.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If ``path`` is not JSON/JSONL or an entry lacks ``file``/``boxes``.
    """

    def __init__(self, image_dir: str | Path, path: str | Path) -> None:
        image_dir, path = Path(image_dir), Path(path)
        self.stats = {"invalid": 0}
        self.records = []
        for i, entry in enumerate(_read_entries(path)):
            where = f"entry {i}"
            file_name = _require(entry, "file", path, where)
            boxes = np.asarray(_require(entry, "boxes", path, where), np.float32)
            if boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 4):
                raise ValueError(f"{path}: {where} 'boxes' must be a list of [x1, y1, x2, y2]")
            boxes = boxes.reshape(-1, 4)
            labels = np.asarray(entry.get("labels", [-1] * len(boxes)), np.int64).reshape(-1)
            if len(labels) != len(boxes):
                raise ValueError(f"{path}: {where} has {len(boxes)} boxes but {len(labels)} labels")
            valid = (
                np.isfinite(boxes).all(axis=1)
                & (boxes[:, 2] > boxes[:, 0])
                & (boxes[:, 3] > boxes[:, 1])
            )
            self.stats["invalid"] += int((~valid).sum())
            self.records.append(
                ImageRecord(path=image_dir / file_name, boxes=boxes[valid], labels=labels[valid])
            )


def list_images(image_dir: Path) -> list[Path]:
    """Lists the image files under a folder, recursively, in a stable order."""
    return sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


class RandomBoxSource(BoxSource):
    """A plain image folder with **random** boxes.

    For images without annotations: each image gets ``boxes_per_image`` boxes drawn at
    random, but deterministically (seeded by ``seed`` and the image's index in the
    sorted file list), when the image is decoded. The boxes carry no information about
    real objects, so ``n_objects`` of such samples counts random boxes.

    Args:
        image_dir: Folder searched recursively for jpg/jpeg/png/bmp/webp files.
        boxes_per_image: Inclusive range of the number of random boxes per image.
        seed: Base seed of the random boxes.
    """

    def __init__(
        self, image_dir: str | Path, boxes_per_image: tuple[int, int] = (2, 6), seed: int = 0
    ) -> None:
        low, high = boxes_per_image
        if not 1 <= low <= high:
            raise ValueError(
                f"boxes_per_image must satisfy 1 <= low <= high, got {boxes_per_image}"
            )
        image_dir = Path(image_dir)
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image_dir not found: {image_dir}")
        self.stats = {}
        self.records = [
            ImageRecord(path=path, random_boxes=RandomBoxes((low, high), seed, i))
            for i, path in enumerate(list_images(image_dir))
        ]
        if not self.records:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {image_dir}")
