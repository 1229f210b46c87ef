"""A small synthetic multi-object scene dataset in COCO format, generated on first use.

Optionally with scene contexts (:data:`CONTEXTS`: a background type and palette and
two typical object classes each) and a controlled fraction of images holding one
object of another context, flagged ``out_of_context: 1`` in the annotations. Objects
look alike within a class (``appearance="class"``) or each instance has its own look
(``"instance"``, the default; :mod:`hcl_lightning.data.instance_appearance`).
:func:`prepare_synthetic_data` generates the dataset of an ``hcl-train`` /
``hcl-analyze`` config's ``data.synthetic`` node.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image, ImageDraw

from hcl_lightning.checks import check_choice
from hcl_lightning.data import instance_appearance as looks

FORMAT_VERSION = 1
Box = tuple[int, int, int, int]
#: ``appearance`` values: objects alike within a class, or each instance its own look.
APPEARANCES = ("class", "instance")

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
#: ``appearance="instance"``: largest fraction of an object's box that objects drawn
#: after it may cover (partial occlusion).
MAX_COVERED = 0.3
#: Classes of the same outline, told apart by texture alone (see :func:`_instance_textures`).
RECTANGLES = ("square", "striped_rectangle", "checkerboard")
PLACEMENT_TRIES = 10
BACKGROUNDS = ("gradient", "smooth_noise", "waves", "plain")
#: Third seed word of the stream choosing the out-of-context images: not 0, so that
#: stream differs from every image's own ``(seed, i)`` stream.
OOC_STREAM = 1


@dataclass(frozen=True)
class Context:
    """A scene type: background type (index into :data:`BACKGROUNDS`), per-channel
    colour range ``[low, high)`` of the background, and typical classes (indices into
    :data:`SHAPES`)."""

    name: str
    background: int
    low: tuple[int, int, int]
    high: tuple[int, int, int]
    classes: tuple[int, ...]


#: The scene contexts of ``contexts=True``: one per background type, with disjoint
#: typical classes of colours that stand out from the palette.
CONTEXTS = (
    Context("sunset", 0, (170, 60, 0), (255, 170, 90), (2, 5)),  # triangle, ring
    Context("meadow", 1, (20, 80, 10), (120, 190, 90), (0, 4)),  # circle, striped rectangle
    Context("sea", 2, (0, 30, 90), (90, 140, 230), (3, 6)),  # cross, diamond
    Context("desk", 3, (110, 110, 110), (200, 195, 185), (1, 7)),  # square, checkerboard
)


def _background(
    rng: np.random.Generator,
    size: int,
    kind: int | None = None,
    low: float | tuple[float, float, float] = 0.0,
    high: float | tuple[float, float, float] = 255.0,
) -> np.ndarray:
    """A background of type ``kind`` (index into :data:`BACKGROUNDS`; random if None):
    gradient, smooth noise, waves, or noisy plain colour, its colours drawn per channel
    from ``[low, high)``."""
    if kind is None:
        kind = int(rng.integers(len(BACKGROUNDS)))
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    start, end = rng.uniform(low, high, (2, 3))
    if kind == 0:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        image = start + t * (end - start)
    elif kind == 1:  # smooth noise: coarse random grid, upsampled
        coarse = rng.uniform(low, high, (4, 4, 3)).astype(np.uint8)
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


def _random_box(
    rng: np.random.Generator, size: int, aspect: float | None = None
) -> tuple[int, int, int, int]:
    """A box of side 15-40 % of ``size``: width 0.8-1.25 times the height, or of
    width / height ``aspect`` (and the area of a square of that side)."""
    side = rng.uniform(0.15, 0.4) * size
    if aspect is None:
        w = int(np.clip(side * rng.uniform(0.8, 1.25), 8, size))
        h = int(np.clip(side, 8, size))
    else:
        w = int(np.clip(side * np.sqrt(aspect), 8, size))
        h = int(np.clip(side / np.sqrt(aspect), 8, size))
    x1, y1 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    return x1, y1, x1 + w, y1 + h


def _paint(
    image: np.ndarray,
    cls: int,
    box: Box,
    rng: np.random.Generator,
    random_colours: bool = False,
) -> np.ndarray:
    """``image`` with an object of class ``cls`` (index into :data:`SHAPES`) drawn in
    ``box``: in its class colour (jittered), or in a uniformly random one."""
    size = image.shape[0]
    name, colour, texture = SHAPES[cls]
    if random_colours:
        colour = rng.integers(0, 256, 3)
    else:
        colour = np.clip(np.asarray(colour) + rng.integers(-20, 21, 3), 0, 255)
    mask = _shape_mask(name, box, size)[..., None]
    return np.where(mask, _texture(texture, colour, rng, size), image)


#: A placed object: class index, annotation box, and the function that paints it.
Placed = tuple[int, Box, Callable[[np.ndarray], np.ndarray]]


def _place_class(
    rng: np.random.Generator,
    size: int,
    pool: Sequence[int],
    boxes: list[Box],
    random_colours: bool,
) -> Placed | None:
    """``appearance="class"``: a box overlapping none of ``boxes`` by IoU above
    :data:`MAX_OVERLAP_IOU`, then a class of ``pool`` in its class look; None if no
    box fits."""
    for _ in range(PLACEMENT_TRIES):
        box = _random_box(rng, size)
        if all(_iou(box, other) <= MAX_OVERLAP_IOU for other in boxes):
            break
    else:
        return None
    cls = pool[int(rng.integers(len(pool)))]
    return cls, box, lambda image: _paint(image, cls, box, rng, random_colours)


def _instance_textures(cls: int) -> tuple[str, ...]:
    """Textures of the instances of class ``cls``: its own for a class named by its
    texture (striped rectangle, checkerboard); else every texture but those naming
    another class of the same outline (a square is never striped or checked)."""
    name, _, texture = SHAPES[cls]
    if texture != "solid":
        return (texture,)
    if name not in RECTANGLES:
        return looks.TEXTURES
    taken = {t for other, _, t in SHAPES if other in RECTANGLES and t != texture}
    return tuple(t for t in looks.TEXTURES if t not in taken)


def _outline_mask(name: str, look: looks.Look, box: Box, size: int) -> np.ndarray:
    """Boolean mask of shape ``name`` drawn with ``look``'s aspect and tilt in ``box``."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for vertices, value in looks.outline(name, look, box):
        draw.polygon(vertices, fill=value)
    return np.asarray(mask) > 0


def _tight_box(mask: np.ndarray) -> Box | None:
    """The smallest box (exclusive end) around the pixels of ``mask``; None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _covered_at_most(boxes: Sequence[Box], limit: float) -> bool:
    """Whether no box of ``boxes`` (in drawing order) has more than ``limit`` of its area
    covered by the boxes drawn after it."""
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        covered = np.zeros((y2 - y1, x2 - x1), bool)
        for a1, b1, a2, b2 in boxes[i + 1 :]:
            covered[max(b1 - y1, 0) : max(b2 - y1, 0), max(a1 - x1, 0) : max(a2 - x1, 0)] = True
        if covered.mean() > limit:
            return False
    return True


def _place_instance(
    rng: np.random.Generator,
    size: int,
    pool: Sequence[int],
    boxes: list[Box],
    random_colours: bool,
    first_on_top: bool,
) -> Placed | None:
    """``appearance="instance"``: a class of ``pool`` in a look of its own
    (:func:`~hcl_lightning.data.instance_appearance.sample_look`), then a box where it
    and the earlier ``boxes`` keep at most :data:`MAX_COVERED` of their area covered
    (``first_on_top``: the first of ``boxes`` is drawn last); its annotation box is the
    tight box of its pixels. None if no box fits."""
    cls = pool[int(rng.integers(len(pool)))]
    name, colour, _ = SHAPES[cls]
    base = rng.integers(0, 256, 3) if random_colours else colour
    look = looks.sample_look(rng, tuple(base), _instance_textures(cls))
    for _ in range(PLACEMENT_TRIES):
        box = _random_box(rng, size, look.aspect)
        mask = _outline_mask(name, look, box, size)
        tight = _tight_box(mask)
        if tight is None:
            continue
        order = [*boxes[1:], tight, boxes[0]] if first_on_top and boxes else [*boxes, tight]
        if _covered_at_most(order, MAX_COVERED):
            break
    else:
        return None

    def paint(image: np.ndarray) -> np.ndarray:
        pixels = looks.fill(look, box, size) + rng.normal(0, 6, (size, size, 3))
        return np.where(mask[..., None], pixels, image)

    return cls, tight, paint


def _make_scene(
    rng: np.random.Generator,
    size: int,
    max_objects: int,
    context: Context | None = None,
    out_of_context: bool = False,
    random_colours: bool = False,
    appearance: str = "class",
) -> tuple[np.ndarray, list[tuple[int, Box, int]]]:
    """Draws one image; returns it and its objects as (class index, xyxy box, 0/1 flag).

    Without a ``context``: a random background type and classes. With one: its
    background type and palette and its typical classes; with ``out_of_context`` the
    image has 2 to ``max_objects`` objects, the first (always placed) of another
    context's classes, flagged 1, and drawn last, so no other object covers it.
    ``random_colours`` paints every object in a random colour instead of its class's.
    ``appearance`` (see :data:`APPEARANCES`) chooses :func:`_place_class` or
    :func:`_place_instance`.
    """
    if context is None:
        image = _background(rng, size)
        classes: Sequence[int] = range(len(SHAPES))
    else:
        image = _background(rng, size, context.background, context.low, context.high)
        classes = context.classes
    objects: list[tuple[int, Box, int]] = []
    on_top = None  # paints the out-of-context object, last
    for slot in range(int(rng.integers(1 + out_of_context, max_objects + 1))):
        flag = int(out_of_context and slot == 0)
        pool = _other_classes(context) if flag else classes
        boxes = [box for _, box, _ in objects]
        if appearance == "instance":
            placed = _place_instance(rng, size, pool, boxes, random_colours, out_of_context)
        else:
            placed = _place_class(rng, size, pool, boxes, random_colours)
        if placed is None:
            continue  # no room left for this object
        cls, box, paint = placed
        objects.append((cls, box, flag))
        if flag:
            on_top = paint
        else:
            image = paint(image)
    if on_top is not None:
        image = on_top(image)
    return image.clip(0, 255).astype(np.uint8), objects


def _other_classes(context: Context) -> tuple[int, ...]:
    """The typical classes of every context but ``context``."""
    return tuple(cls for other in CONTEXTS if other != context for cls in other.classes)


def _out_of_context_images(n_images: int, ooc_fraction: float, seed: int) -> frozenset[int]:
    """Indices of exactly ``round(ooc_fraction * n_images)`` images, chosen with ``seed``."""
    rng = np.random.default_rng((seed, n_images, OOC_STREAM))
    count = round(ooc_fraction * n_images)
    return frozenset(int(i) for i in rng.choice(n_images, size=count, replace=False))


def check_context_args(
    contexts: bool,
    ooc_fraction: float,
    max_objects: int,
    random_colours: bool = False,
    appearance: str = "instance",
) -> None:
    """Raises ``ValueError``, its message starting with the argument's name, for
    ``contexts`` / ``ooc_fraction`` / ``random_colours`` / ``appearance`` values
    :func:`make_synthetic_scenes` cannot use."""
    check_choice("appearance", appearance, APPEARANCES)
    for name, flag in (("contexts", contexts), ("random_colours", random_colours)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if (
        not isinstance(ooc_fraction, int | float)
        or isinstance(ooc_fraction, bool)
        or not 0 <= ooc_fraction <= 1  # also rejects NaN
    ):
        raise ValueError(f"ooc_fraction must be a number in [0, 1], got {ooc_fraction!r}")
    if ooc_fraction > 0 and not contexts:
        raise ValueError(
            f"ooc_fraction={ooc_fraction} needs contexts=True: an object is out of context "
            "only relative to its scene's context"
        )
    if ooc_fraction > 0 and max_objects < 2:
        raise ValueError(
            f"ooc_fraction={ooc_fraction} needs max_objects >= 2 (an out-of-context image "
            f"holds a typical object too), got max_objects={max_objects}"
        )


def make_synthetic_scenes(
    root: str | Path,
    n_images: int = 200,
    image_size: int = 96,
    seed: int = 0,
    max_objects: int = 6,
    contexts: bool = False,
    ooc_fraction: float = 0.0,
    random_colours: bool = False,
    appearance: str = "instance",
) -> tuple[Path, Path]:
    """Writes (or reuses) a synthetic multi-object scene dataset in COCO format.

    Each image shows 1 to ``max_objects`` objects of 8 classes (circle, square,
    triangle, cross, striped rectangle, ring, diamond, checkerboard; each its own
    colour and texture) on one of four background types (gradient, smooth noise,
    waves, plain), with little overlap between objects. Category ids are 1, 3, 5, ...
    (non-contiguous, like COCO's), and each image entry stores its ``num_objects``.

    With ``contexts=True`` each image is a scene of one of the :data:`CONTEXTS`
    (sunset, meadow, sea, desk): that context's background type and palette, and
    objects of its two typical classes only (the contexts' classes are disjoint).
    Exactly ``round(ooc_fraction * n_images)`` images, chosen with ``seed``, instead
    hold one object of another context's classes (drawn on top) plus 1 to
    ``max_objects - 1`` typical ones. Image entries then carry ``context`` (name) and
    ``context_id``, every annotation ``out_of_context`` (0 or 1), and the JSON a
    ``contexts`` list (``id``, ``name``, ``background``, typical ``category_ids``).
    With ``random_colours=True`` every object is painted in a uniformly random colour
    instead of its class colour, so only shape and texture tell the classes apart (and,
    with contexts, only shape tells an out-of-context object from a typical one):
    object classification is then not solvable from colour alone.

    With ``appearance="instance"`` (the default) every object instance has its own look
    (:mod:`~hcl_lightning.data.instance_appearance`): its colour jittered around the
    class colour (hue within ±40°, saturation, value), a texture of its own (solid,
    stripes, checks, dots, gradient, each with its own angle, period and second colour;
    striped rectangles and checkerboards keep their pattern, squares take neither), an
    aspect ratio in 0.6-1.6, a tilt within ±20°, and up to 30 % of its box covered by
    objects drawn later; its box is the tight box of its pixels. The class stays
    recognisable by shape, and a crop of a scene identifies its object beyond its class.
    With ``appearance="class"`` all objects of a class look alike (one colour, jittered
    by ±20 per channel, and the class texture) and overlap by IoU <= 0.2; with the other
    defaults (``contexts=False``, ``random_colours=False``) its output is that of
    earlier versions, byte for byte.

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
        contexts: Draw each image from a scene context.
        ooc_fraction: Fraction of images, in [0, 1], with one out-of-context object
            (needs ``contexts=True`` and ``max_objects >= 2``).
        random_colours: Paint objects in random colours (classes by shape only).
        appearance: ``"instance"`` (each object its own look) or ``"class"`` (objects of
            a class alike).

    Returns:
        ``(image_dir, ann_file)``, ready for :class:`~hcl_lightning.data.CocoBoxSource`.

    Raises:
        ValueError: for an argument out of range, naming it.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    check_context_args(contexts, ooc_fraction, max_objects, random_colours, appearance)
    root = Path(root)
    image_dir, ann_file, meta_file = root / "images", root / "annotations.json", root / "meta.json"
    meta = {
        "format_version": FORMAT_VERSION,
        "n_images": n_images,
        "image_size": image_size,
        "seed": seed,
        "max_objects": max_objects,
    }
    if contexts:  # recorded only when used: default datasets keep their meta.json
        meta.update(contexts=True, ooc_fraction=ooc_fraction)
    if random_colours:
        meta.update(random_colours=True)
    if appearance != "class":  # class-look datasets keep their earlier meta.json
        meta.update(appearance=appearance)
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
    ooc_images = _out_of_context_images(n_images, ooc_fraction, seed) if contexts else ()
    images, annotations = [], []
    for i, file_name in enumerate(file_names):
        rng = np.random.default_rng((seed, i))
        context_id = int(rng.integers(len(CONTEXTS))) if contexts else None
        pixels, objects = _make_scene(
            rng,
            image_size,
            max_objects,
            None if context_id is None else CONTEXTS[context_id],
            i in ooc_images,
            random_colours,
            appearance,
        )
        Image.fromarray(pixels).save(image_dir / file_name, quality=92)
        image = {
            "id": i + 1,
            "file_name": file_name,
            "width": image_size,
            "height": image_size,
            "num_objects": len(objects),
        }
        if context_id is not None:
            image.update(context=CONTEXTS[context_id].name, context_id=context_id + 1)
        images.append(image)
        for cls, (x1, y1, x2, y2), flag in objects:
            annotation = {
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": CATEGORY_IDS[cls],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
            if contexts:
                annotation["out_of_context"] = flag
            annotations.append(annotation)
    categories = [
        {"id": cid, "name": name, "supercategory": "shape"}
        for cid, (name, _, _) in zip(CATEGORY_IDS, SHAPES, strict=True)
    ]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    if contexts:
        coco["contexts"] = [
            {
                "id": k + 1,
                "name": context.name,
                "background": BACKGROUNDS[context.background],
                "category_ids": [CATEGORY_IDS[cls] for cls in context.classes],
            }
            for k, context in enumerate(CONTEXTS)
        ]
    ann_file.write_text(json.dumps(coco))
    meta_file.write_text(json.dumps(meta))
    return image_dir, ann_file


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (ranks and sweep jobs generating the same data)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: generation is deterministic, so races only cost time
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: Config nodes ``data.<node>`` of generated scenes, and the ``data`` keys their image
#: folder and annotation file fill in.
SYNTHETIC_NODES = {
    "synthetic": ("image_dir", "ann_file"),
    "val_synthetic": ("validation.image_dir", "validation.ann_file"),
}


def prepare_synthetic_data(cfg: DictConfig) -> None:
    """Generates (or reuses) the synthetic scenes of ``data.synthetic``, in place.

    Fills in ``data.image_dir`` and ``data.ann_file`` and removes ``data.synthetic``, so
    ``cfg.data`` can be instantiated as an :class:`~hcl_lightning.data.HCLDataModule`;
    likewise ``data.val_synthetic`` (validation scenes) fills in
    ``data.validation.image_dir`` and ``data.validation.ann_file``. Does nothing for other data. Used by ``hcl-train`` and
    ``hcl-analyze``; concurrent callers (DDP ranks, sweep jobs) generate one dataset
    under a file lock.
    """
    # all resolved before any node is removed: val_synthetic refers to synthetic's values
    nodes = {name: OmegaConf.select(cfg, f"data.{name}") for name in SYNTHETIC_NODES}
    args = {
        name: OmegaConf.to_container(node, resolve=True)
        for name, node in nodes.items()
        if node is not None
    }
    for name, kwargs in args.items():
        root = Path(str(kwargs.pop("root"))).expanduser().resolve()
        with _file_lock(root.parent / f".{root.name}.lock"):
            image_dir, ann_file = make_synthetic_scenes(root, **kwargs)
        image_key, ann_key = SYNTHETIC_NODES[name]
        with open_dict(cfg.data):
            OmegaConf.update(cfg.data, image_key, str(image_dir), force_add=True)
            OmegaConf.update(cfg.data, ann_key, str(ann_file), force_add=True)
            del cfg.data[name]
