"""A small synthetic multi-object scene dataset in COCO format, generated on first use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FORMAT_VERSION = 1

# (name, RGB colour, texture); COCO-like non-contiguous category ids 1, 3, 5, ...
SHAPES = (
    ("circle", (220, 40, 40), "solid"),
    ("square", (40, 180, 60), "solid"),
    ("triangle", (40, 70, 220), "solid"),
    ("cross", (235, 210, 30), "solid"),
    ("striped_rectangle", (200, 40, 200), "stripes"),
    ("ring", (30, 200, 210), "solid"),
    ("diamond", (245, 140, 20), "solid"),
    ("checkerboard", (120, 60, 170), "checker"),
)
CATEGORY_IDS = tuple(2 * i + 1 for i in range(len(SHAPES)))
MAX_OVERLAP_IOU = 0.2
PLACEMENT_TRIES = 10


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """One of four background types: gradient, smooth noise, waves, or noisy plain colour."""
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    start, end = rng.uniform(0, 255, (2, 3))
    if kind == 0:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        image = start + t * (end - start)
    elif kind == 1:  # smooth noise: coarse random grid, upsampled
        coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), float)
    elif kind == 2:  # sinusoidal waves between two colours
        freq = rng.uniform(2, 6)
        t = (0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx + rng.uniform(0.3, 1) * yy)))[..., None]
        image = start + t * (end - start)
    else:  # plain colour
        image = np.broadcast_to(start, (size, size, 3))
    image = image + rng.normal(0, 8, (size, size, 3))
    return image.clip(0, 255)


def _shape_mask(name: str, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Boolean mask of a shape drawn inside ``box`` (x1, y1, x2, y2, exclusive end)."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    x1, y1, x2, y2 = box[0], box[1], box[2] - 1, box[3] - 1
    w, h = x2 - x1, y2 - y1
    if name == "circle":
        draw.ellipse((x1, y1, x2, y2), fill=255)
    elif name == "ring":
        draw.ellipse((x1, y1, x2, y2), outline=255, width=max(2, min(w, h) // 5))
    elif name == "triangle":
        draw.polygon([(x1, y2), (x2, y2), ((x1 + x2) / 2, y1)], fill=255)
    elif name == "diamond":
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=255)
    elif name == "cross":
        draw.rectangle((x1 + w // 3, y1, x2 - w // 3, y2), fill=255)
        draw.rectangle((x1, y1 + h // 3, x2, y2 - h // 3), fill=255)
    else:  # square, striped_rectangle, checkerboard
        draw.rectangle((x1, y1, x2, y2), fill=255)
    return np.asarray(mask) > 0


def _texture(texture: str, colour: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Full-size fill of an object: its colour, with stripes or checks, plus noise."""
    fill = np.broadcast_to(colour, (size, size, 3)).astype(float)
    yy, xx = np.mgrid[0:size, 0:size]
    period = int(rng.integers(3, 6))
    if texture == "stripes":
        fill = np.where((((xx + yy) // period) % 2 == 0)[..., None], fill, 255.0)
    elif texture == "checker":
        fill = np.where((((xx // period) + (yy // period)) % 2 == 0)[..., None], fill, 20.0)
    return fill + rng.normal(0, 6, (size, size, 3))


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _random_box(rng: np.random.Generator, size: int) -> tuple[int, int, int, int]:
    side = rng.uniform(0.15, 0.4) * size
    w = int(np.clip(side * rng.uniform(0.8, 1.25), 8, size))
    h = int(np.clip(side, 8, size))
    x1, y1 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    return x1, y1, x1 + w, y1 + h


def _make_scene(rng: np.random.Generator, size: int, max_objects: int) -> tuple[np.ndarray, list]:
    """Draws one image; returns it and its objects as (class index, xyxy box)."""
    image = _background(rng, size)
    objects: list[tuple[int, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _ in range(PLACEMENT_TRIES):
            box = _random_box(rng, size)
            if all(_iou(box, other) <= MAX_OVERLAP_IOU for _, other in objects):
                break
        else:
            continue  # no room left for this object
        cls = int(rng.integers(len(SHAPES)))
        name, colour, texture = SHAPES[cls]
        colour = np.clip(np.asarray(colour) + rng.integers(-20, 21, 3), 0, 255)
        mask = _shape_mask(name, box, size)[..., None]
        image = np.where(mask, _texture(texture, colour, rng, size), image)
        objects.append((cls, box))
    return image.clip(0, 255).astype(np.uint8), objects


def make_synthetic_scenes(
    root: str | Path,
    n_images: int = 200,
    image_size: int = 96,
    seed: int = 0,
    max_objects: int = 6,
) -> tuple[Path, Path]:
    """Writes (or reuses) a synthetic multi-object scene dataset in COCO format.

    Each image shows 1 to ``max_objects`` objects of 8 classes (circle, square,
    triangle, cross, striped rectangle, ring, diamond, checkerboard; each its own
    colour and texture) on one of four background types (gradient, smooth noise,
    waves, plain), with little overlap between objects. Category ids are 1, 3, 5, ...
    (non-contiguous, like COCO's), and each image entry stores its ``num_objects``.

    The output is deterministic: the same arguments give the same JPEG bytes and the
    same JSON. If ``root`` already holds a complete dataset made with the same
    arguments (recorded in ``root/meta.json``, written last), nothing is regenerated.

    Args:
        root: Output folder; images go to ``root/images``, annotations to
            ``root/annotations.json``.
        n_images: Number of images.
        image_size: Side of the square images in pixels (at least 32).
        seed: Random seed.
        max_objects: Maximum number of objects per image.

    Returns:
        ``(image_dir, ann_file)``, ready for :class:`~hcl_lightning.data.CocoBoxSource`.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    root = Path(root)
    image_dir, ann_file, meta_file = root / "images", root / "annotations.json", root / "meta.json"
    meta = {
        "format_version": FORMAT_VERSION,
        "n_images": n_images,
        "image_size": image_size,
        "seed": seed,
        "max_objects": max_objects,
    }
    file_names = [f"{i:06d}.jpg" for i in range(n_images)]
    if (
        meta_file.is_file()
        and json.loads(meta_file.read_text()) == meta
        and ann_file.is_file()
        and all((image_dir / name).is_file() for name in file_names)
    ):
        return image_dir, ann_file

    meta_file.unlink(missing_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, file_name in enumerate(file_names):
        pixels, objects = _make_scene(np.random.default_rng((seed, i)), image_size, max_objects)
        Image.fromarray(pixels).save(image_dir / file_name, quality=92)
        images.append(
            {
                "id": i + 1,
                "file_name": file_name,
                "width": image_size,
                "height": image_size,
                "num_objects": len(objects),
            }
        )
        for cls, (x1, y1, x2, y2) in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": CATEGORY_IDS[cls],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": cid, "name": name, "supercategory": "shape"}
        for cid, (name, _, _) in zip(CATEGORY_IDS, SHAPES, strict=True)
    ]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    ann_file.write_text(json.dumps(coco))
    meta_file.write_text(json.dumps(meta))
    return image_dir, ann_file
