"""Selective-search object proposals for image folders without boxes (as in ORL).

ORL (Xie et al., NeurIPS 2021) uses selective search proposals as the object boxes of
images that have no annotation. :class:`SelectiveSearchBoxSource` computes them once
with OpenCV's contrib module (``cv2.ximgproc``) and caches them on disk in the
JSON/JSONL proposal format that :class:`~hcl_lightning.data.JsonBoxSource` reads, so
later runs (and ``data.proposals=<cache>`` users) reuse them.

OpenCV's contrib build is an optional dependency::

    pip install "hcl-lightning[selective-search]"   # opencv-contrib-python-headless
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from hcl_lightning.data.boxes import BoxSource, JsonBoxSource, list_images
from hcl_lightning.data.images import decode_image

#: Default cache file name, inside the image folder.
DEFAULT_CACHE_NAME = ".hcl_selective_search.jsonl"
SELECTIVE_SEARCH_MODES = ("fast", "quality")


def _import_ximgproc():
    try:
        import cv2
        import cv2.ximgproc  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "selective search needs OpenCV's contrib modules (cv2.ximgproc): "
            "pip install opencv-contrib-python-headless  (or pip install "
            '"hcl-lightning[selective-search]"); a plain opencv-python install lacks '
            "cv2.ximgproc and must be uninstalled first"
        ) from err
    if not hasattr(cv2, "ximgproc"):
        raise ImportError(
            "cv2 has no ximgproc module: pip install opencv-contrib-python-headless "
            '(or pip install "hcl-lightning[selective-search]")'
        )
    return cv2


def filter_proposals(
    boxes: np.ndarray,
    width: int,
    height: int,
    max_boxes: int,
    min_size: float,
    max_aspect: float,
    max_area_fraction: float = 1.0,
) -> np.ndarray:
    """Clips proposals to the image and keeps the first ``max_boxes`` usable ones.

    Dropped: boxes narrower or lower than ``min_size`` pixels, with an aspect ratio
    (long side / short side) above ``max_aspect``, covering more than
    ``max_area_fraction`` of the image, and exact duplicates. The order (selective
    search's ranking) is kept.

    Args:
        boxes: Float array (M, 4) in xyxy pixel coordinates.
        width: Image width in pixels.
        height: Image height in pixels.
        max_boxes: Maximum number of boxes returned.
        min_size: Minimum width and height, in pixels.
        max_aspect: Maximum long/short side ratio.
        max_area_fraction: Maximum box area as a fraction of the image area.

    Returns:
        Float32 array (K, 4), K <= max_boxes, inside the image.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    box_w = boxes[:, 2] - boxes[:, 0]
    box_h = boxes[:, 3] - boxes[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.maximum(box_w, box_h) / np.minimum(box_w, box_h)
    keep = (
        (box_w >= max(min_size, 1e-6))
        & (box_h >= max(min_size, 1e-6))
        & (aspect <= max_aspect)
        & (box_w * box_h <= max_area_fraction * width * height)
    )
    boxes = boxes[keep]
    _, first = np.unique(np.round(boxes, 1), axis=0, return_index=True)
    return boxes[np.sort(first)][:max_boxes]


def selective_search(
    image: np.ndarray,
    max_boxes: int = 100,
    min_size: float = 16.0,
    max_aspect: float = 4.0,
    max_side: int | None = 500,
    mode: str = "fast",
    max_area_fraction: float = 1.0,
) -> np.ndarray:
    """Selective-search proposals of one RGB image.

    Args:
        image: uint8 array (H, W, 3), RGB.
        max_boxes: Maximum number of boxes returned.
        min_size: Minimum box width and height, in pixels of ``image``.
        max_aspect: Maximum long/short side ratio of a box.
        max_side: The image is downscaled so that its longer side is at most this
            (None: never) before the search; boxes are scaled back to ``image``.
        mode: ``"fast"`` (``switchToSelectiveSearchFast``) or ``"quality"``.
        max_area_fraction: Maximum box area as a fraction of the image area.

    Returns:
        Float32 array (K, 4) in xyxy pixel coordinates of ``image``.
    """
    if mode not in SELECTIVE_SEARCH_MODES:
        raise ValueError(f"mode must be one of {SELECTIVE_SEARCH_MODES}, got {mode!r}")
    cv2 = _import_ximgproc()
    height, width = image.shape[:2]
    scale = 1.0
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(bgr)
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)  # x, y, w, h
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    sx, sy = width / bgr.shape[1], height / bgr.shape[0]
    boxes *= np.asarray([sx, sy, sx, sy], np.float32)
    return filter_proposals(
        boxes, width, height, max_boxes, min_size, max_aspect, max_area_fraction
    )


def _write_atomic(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + ("\n" if lines else ""))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SelectiveSearchBoxSource(BoxSource):
    """A plain image folder with selective-search proposals as boxes (as in ORL).

    On first use, runs OpenCV's selective search (fast mode by default) on each image
    of the folder (searched recursively, like :class:`RandomBoxSource`), keeps up to
    ``max_boxes`` boxes per image after dropping small, extremely elongated and
    near-whole-image boxes, and writes them to ``cache_file`` as JSONL
    (``{"file", "boxes"}`` per line, boxes in xyxy pixels of the full-size,
    EXIF-rotated image). If ``cache_file`` exists it is read instead and OpenCV is not
    needed; it is **not** checked against the folder or the arguments: delete it to
    regenerate. The cache is a valid ``proposals`` file for :class:`JsonBoxSource` /
    ``data.proposals=``. Images that cannot be decoded get no boxes (the dataset then
    counts them as bad images).

    Args:
        image_dir: Folder searched recursively for jpg/jpeg/png/bmp/webp files.
        cache_file: JSONL cache; default ``<image_dir>/.hcl_selective_search.jsonl``.
        max_boxes: Maximum number of proposals kept per image.
        min_size: Minimum proposal width and height, in pixels of the full image.
        mode: ``"fast"`` or ``"quality"`` selective search.
        max_side: Longer image side the search runs at (boxes scaled back); None: full
            resolution (slow on large images).
        max_aspect: Maximum long/short side ratio of a proposal.
        max_area_fraction: Maximum proposal area as a fraction of the image area
            (drops the whole-image proposal by default).

    Raises:
        FileNotFoundError: If ``image_dir`` does not exist.
        ValueError: If no image is found or an argument is out of range.
        ImportError: If the cache must be computed and ``cv2.ximgproc`` is missing
            (``pip install opencv-contrib-python-headless``).
    """

    def __init__(
        self,
        image_dir: str | Path,
        cache_file: str | Path | None = None,
        max_boxes: int = 100,
        min_size: float = 16.0,
        mode: str = "fast",
        max_side: int | None = 500,
        max_aspect: float = 4.0,
        max_area_fraction: float = 0.9,
    ) -> None:
        image_dir = Path(image_dir)
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image_dir not found: {image_dir}")
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {min_size}")
        if mode not in SELECTIVE_SEARCH_MODES:
            raise ValueError(f"mode must be one of {SELECTIVE_SEARCH_MODES}, got {mode!r}")
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be >= 1 or None, got {max_side}")
        if max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
        if not 0 < max_area_fraction <= 1:
            raise ValueError(f"max_area_fraction must be in (0, 1], got {max_area_fraction}")
        self.cache_file = Path(cache_file) if cache_file else image_dir / DEFAULT_CACHE_NAME
        self.options = {
            "max_boxes": int(max_boxes),
            "min_size": float(min_size),
            "mode": mode,
            "max_side": max_side,
            "max_aspect": float(max_aspect),
            "max_area_fraction": float(max_area_fraction),
        }
        self.computed = False
        if not self.cache_file.is_file():
            self._compute(image_dir)
            self.computed = True
        json_source = JsonBoxSource(image_dir, self.cache_file)
        self.records = json_source.records
        self.stats = json_source.stats
        if not self.records:
            raise ValueError(f"no images found under {image_dir} (cache {self.cache_file})")

    def _compute(self, image_dir: Path) -> None:
        paths = list_images(image_dir)
        if not paths:
            raise ValueError(f"no images found under {image_dir}")
        _import_ximgproc()  # fail before any work
        opts = self.options
        lines = []
        for path in paths:
            try:
                image, (sx, sy) = decode_image(path)
            except (OSError, ValueError):  # BadImageError is an OSError
                boxes = np.zeros((0, 4), np.float32)
            else:
                array = np.asarray(image.convert("RGB"))
                min_size = opts["min_size"] * min(sx, sy)
                boxes = selective_search(
                    array,
                    max_boxes=opts["max_boxes"],
                    min_size=min_size,
                    max_aspect=opts["max_aspect"],
                    max_side=opts["max_side"],
                    mode=opts["mode"],
                    max_area_fraction=opts["max_area_fraction"],
                )
                boxes = boxes / np.asarray([sx, sy, sx, sy], np.float32)  # to full size
            entry = {
                "file": path.relative_to(image_dir).as_posix(),
                "boxes": np.round(boxes.astype(np.float64), 2).tolist(),
            }
            lines.append(json.dumps(entry))
        _write_atomic(self.cache_file, lines)
