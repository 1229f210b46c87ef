"""A second, independent scene family, for evaluation only.

The method was designed and tuned on the scenes of
:func:`hcl_lightning.data.make_synthetic_scenes` (flat shapes in class colours on four
procedural backgrounds). This generator shares none of their drawing code, kinds,
colours, backgrounds or layout, so results on it are evidence on data the method was
not developed on:

- five **contexts**, each a textured scene with its own layout: ``meadow`` (sky, horizon,
  grass; objects on the ground, grass blades in front), ``pantry_shelf`` (wood grain and
  shelf planks; objects stand on the planks), ``tabletop`` (a gingham cloth seen from
  above), ``underwater`` (caustics, sand, bubbles in front), ``night_sky`` (stars above
  a line of hills; objects in the sky);
- fifteen **object kinds**, three typical of each context, drawn as anti-aliased
  polygons and ellipses (supersampled) with per-instance colour jitter, shading and
  noise texture, size, aspect and rotation, partly occluding each other (box IoU up to
  0.3) and partly covered by the context's foreground;
- category ids 10, 20, ..., 150 (disjoint from the training family's 1, 3, ..., 15);
- 2 to 6 objects per image; exactly ``round(ooc_fraction * n_images)`` images (chosen
  with the seed) hold one object of another context's kinds, flagged
  ``out_of_context: 1``.

The output is the COCO format of :func:`~hcl_lightning.data.make_synthetic_scenes`
(``images/``, ``annotations.json`` with ``num_objects``, ``context`` / ``context_id``
per image, ``out_of_context`` per annotation and a ``contexts`` list), so
``hcl-train data=coco``, :func:`hcl_lightning.analysis.embed.read_coco` and
``benchmarks/reproduce.py --family heldout`` read it. Deterministic for its arguments;
a folder already holding the same set (``meta.json``) is reused.

Usage::

    python benchmarks/heldout_scenes.py --out data/heldout --images 400 --seed 2 \\
        --size 96 --ooc-fraction 0.15
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageDraw

FAMILY = "heldout-v1"
SUPERSAMPLE = 3  # sprites are drawn this many times larger, then downsampled
MAX_BOX_IOU = 0.3  # boxes may overlap this much: objects partly hide each other
ALPHA_CUT = 96  # sprite pixels at least this opaque count towards the box
SIDE_RANGE = (0.16, 0.36)  # sqrt(box area) / image side
RNG_TAG = 0x4E1D  # seed word of every stream of this family

RGB = tuple[int, int, int]


# -- drawing helpers ----------------------------------------------------------------
class Pen:
    """Draws on an RGBA sprite in unit coordinates: x and y in [-1, 1] span it."""

    def __init__(self, canvas: Image.Image) -> None:
        self.draw = ImageDraw.Draw(canvas)
        self.w, self.h = canvas.size

    def xy(self, x: float, y: float) -> tuple[float, float]:
        return (x + 1) * (self.w - 1) / 2, (y + 1) * (self.h - 1) / 2

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, ...]:
        return (*self.xy(x0, y0), *self.xy(x1, y1))

    def px(self, fraction: float) -> int:
        """A stroke width, as a fraction of the sprite's smaller half-side."""
        return max(1, round(fraction * min(self.w, self.h) / 2))

    def poly(self, points: Sequence[tuple[float, float]], fill) -> None:
        self.draw.polygon([self.xy(x, y) for x, y in points], fill=fill)

    def oval(self, x0, y0, x1, y1, fill=None, outline=None, width: float = 0.0) -> None:
        self.draw.ellipse(
            self.box(x0, y0, x1, y1), fill=fill, outline=outline, width=self.px(width)
        )

    def rect(self, x0, y0, x1, y1, fill, radius: float = 0.0) -> None:
        self.draw.rounded_rectangle(self.box(x0, y0, x1, y1), radius=self.px(radius), fill=fill)

    def line(self, points: Sequence[tuple[float, float]], fill, width: float) -> None:
        self.draw.line(
            [self.xy(x, y) for x, y in points], fill=fill, width=self.px(width), joint="curve"
        )


def tint(colour: Sequence[float], factor: float, alpha: int = 255) -> tuple[int, int, int, int]:
    """``colour`` scaled by ``factor`` (>1 lighter, towards white), as RGBA."""
    c = np.asarray(colour[:3], float)
    c = c * factor if factor <= 1 else c + (255 - c) * (factor - 1)
    r, g, b = (int(v) for v in np.clip(c, 0, 255).round())
    return r, g, b, alpha


def arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 16):
    """Points of an elliptic arc, angles in degrees (0: +x, 90: +y, i.e. down)."""
    t = np.radians(np.linspace(a0, a1, n))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t), strict=True))


# -- object kinds -------------------------------------------------------------------
Drawer = Callable[[Pen, RGB, np.random.Generator], None]


@dataclass(frozen=True)
class Kind:
    """An object kind: category id, drawer, base colours, box aspect (w / h) range and
    the largest rotation in degrees."""

    name: str
    category_id: int
    draw: Drawer
    colours: tuple[RGB, ...]
    aspect: tuple[float, float]
    spin: float


#: The object kinds, in category-id order; each drawer registers itself with :func:`object_kind`.
KINDS: list[Kind] = []


def object_kind(category_id: int, aspect: tuple[float, float], spin: float, colours: str):
    """Registers the decorated ``draw_<name>`` function as the kind ``<name>``, with its
    base colours given as hex codes."""

    def register(draw: Drawer) -> Drawer:
        rgb = tuple(ImageColor.getrgb(code)[:3] for code in colours.split())
        name = draw.__name__.removeprefix("draw_")
        KINDS.append(Kind(name, category_id, draw, rgb, aspect, spin))
        return draw

    return register


@object_kind(10, (0.45, 0.7), 180, "#469632 #7daa28 #cd8c1e #aa3c1e")
def draw_leaf(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    t = np.linspace(0, np.pi, 20)
    y = -1 + 1.75 * t / np.pi
    half = np.sin(t) ** 0.8 * rng.uniform(0.8, 1.0)
    pen.line([(0, 0.7), (0.05, 1)], tint(c, 0.5), 0.08)
    pen.poly(
        list(zip(half, y, strict=True)) + list(zip(-half[::-1], y[::-1], strict=True)), tint(c, 1)
    )
    vein = tint(c, 0.6)
    pen.line([(0, -0.95), (0, 0.75)], vein, 0.05)
    for k in np.linspace(-0.6, 0.4, 4):
        pen.line([(0, k + 0.25), (0.55, k)], vein, 0.03)
        pen.line([(0, k + 0.25), (-0.55, k)], vein, 0.03)


@object_kind(20, (0.85, 1.15), 180, "#e65aa0 #aa5adc #f5f5f0 #f06e3c")
def draw_flower(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    n = int(rng.integers(5, 9))
    for k in range(n):
        a = 2 * np.pi * k / n
        d, s = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
        pts = [
            0.55 * d + 0.42 * np.cos(t) * d + 0.2 * np.sin(t) * s
            for t in np.linspace(0, 2 * np.pi, 14)
        ]
        pen.poly([tuple(p) for p in pts], tint(c, 0.9 + 0.2 * (k % 2)))
    pen.oval(-0.3, -0.3, 0.3, 0.3, fill=tint((230, 170, 30), rng.uniform(0.7, 1.0)))


@object_kind(30, (0.8, 1.2), 15, "#c8281e #965a32 #e6963c")
def draw_mushroom(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    pen.poly([(-0.3, -0.4), (0.3, -0.4), (0.38, 1), (-0.38, 1)], (235, 225, 200, 255))
    pen.poly([(-1, -0.3), *arc(0, -0.3, 1, 0.7, 180, 360), (1, -0.3)], tint(c, 1))
    pen.rect(-0.95, -0.38, 0.95, -0.25, tint(c, 0.7), radius=0.05)
    for _ in range(int(rng.integers(3, 7))):
        x, y, r = rng.uniform(-0.6, 0.6), rng.uniform(-0.8, -0.5), rng.uniform(0.07, 0.13)
        pen.oval(x - r, y - r, x + r, y + r, fill=(250, 250, 245, 255))


@object_kind(40, (0.55, 0.8), 6, "#c81e28 #1e5ab4 #289646 #f0be1e")
def draw_can(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    metal = (185, 188, 195)
    pen.rect(-1, -0.85, 1, 0.85, tint(c, 1))
    pen.oval(-1, 0.7, 1, 1, fill=tint(c, 0.8))
    pen.rect(-1, -0.85, 1, -0.68, tint(metal, 1))
    pen.oval(-1, -1, 1, -0.7, fill=tint(metal, 1.15), outline=tint(metal, 0.7), width=0.06)
    pen.rect(-1, -0.15, 1, 0.25, tint(c, rng.uniform(1.5, 1.8)))
    pen.rect(-0.65, -0.68, -0.45, 0.85, tint(c, 1.3))


@object_kind(50, (0.75, 0.95), 6, "#96143c #e67814 #783c1e")
def draw_jar(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    pen.rect(-1, -0.75, 1, 1, (205, 225, 225, 255), radius=0.3)
    pen.rect(-0.88, -0.45, 0.88, 0.92, tint(c, 1), radius=0.25)
    pen.rect(-0.88, 0.0, 0.88, 0.45, tint((240, 230, 205), rng.uniform(0.9, 1.0)))
    lid = [(200, 160, 40), (190, 40, 40), (230, 230, 230)][int(rng.integers(3))]
    pen.rect(-0.8, -1, 0.8, -0.72, tint(lid, 1), radius=0.08)
    pen.rect(-0.7, -0.35, -0.55, 0.8, tint(c, 1.5))


@object_kind(60, (0.3, 0.45), 6, "#1e6e32 #784614 #3c8caa")
def draw_bottle(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    pen.rect(-1, -0.25, 1, 1, tint(c, 1), radius=0.2)
    pen.poly([(-1, -0.2), (1, -0.2), (0.35, -0.6), (-0.35, -0.6)], tint(c, 1))
    pen.rect(-0.33, -0.88, 0.33, -0.5, tint(c, 0.9))
    pen.rect(-0.4, -1, 0.4, -0.82, tint((200, 40, 40) if rng.random() < 0.5 else (220, 200, 60), 1))
    pen.rect(-1, 0.2, 1, 0.6, (235, 225, 195, 255))
    pen.rect(-0.7, -0.15, -0.5, 0.85, tint(c, 1.45))


@object_kind(70, (1.0, 1.3), 30, "#f0f0eb #c83c32 #3264aa #f0c83c")
def draw_cup(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    pen.oval(0.15, -0.45, 1, 0.45, outline=tint(c, 0.85), width=0.16)
    pen.poly([(-1, -0.8), (0.5, -0.8), (0.35, 1), (-0.85, 1)], tint(c, 1))
    pen.oval(-1, -0.95, 0.5, -0.65, fill=tint(c, 1.2))
    pen.oval(-0.9, -0.9, 0.4, -0.7, fill=tint((110, 60, 30), rng.uniform(0.6, 1.2)))
    pen.rect(-0.9, 0.1, 0.43, 0.3, tint(c, 0.7))


@object_kind(80, (0.9, 1.1), 0, "#f5f5f5 #e6dcbe #aac8e6")
def draw_plate(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    pen.oval(-1, -1, 1, 1, fill=tint(c, 0.95), outline=tint(c, 0.7), width=0.04)
    pen.oval(-0.68, -0.68, 0.68, 0.68, fill=tint(c, 1.1), outline=tint(c, 0.8), width=0.03)
    pen.oval(-0.88, -0.88, 0.88, 0.88, outline=tint((60, 80, 170), 1), width=0.05)
    if rng.random() < 0.5:  # something on it
        x, y = rng.uniform(-0.25, 0.25, 2)
        food = tuple(int(v) for v in rng.integers(40, 230, 3))
        pen.oval(x - 0.3, y - 0.22, x + 0.3, y + 0.22, fill=tint(food, 1))


@object_kind(90, (0.65, 0.8), 180, "#961e1e #1e3c82 #286e3c #6e3c8c")
def draw_book(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    pen.rect(-1, -1, 1, 1, tint(c, 1), radius=0.05)
    pen.rect(0.82, -0.94, 0.98, 0.94, (240, 232, 210, 255))
    pen.rect(-1, -1, -0.72, 1, tint(c, 0.65))
    pen.rect(-0.5, -0.65, 0.62, -0.35, tint(c, rng.uniform(1.5, 1.8)))
    for y in (0.35, 0.5):
        pen.line([(-0.45, y), (0.55, y)], tint(c, 1.4), 0.04)


@object_kind(100, (1.4, 2.1), 25, "#fa8c1e #f0d228 #3c78dc #dc4646")
def draw_fish(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    pen.poly([(0.45, 0), (1, -0.85), (0.85, 0), (1, 0.85)], tint(c, 0.85))
    pen.poly([(-0.3, -0.4), (0.25, -0.45), (0.05, -0.95)], tint(c, 0.8))
    pen.oval(-1, -0.55, 0.65, 0.55, fill=tint(c, 1))
    for x in rng.choice([-0.35, -0.1, 0.15, 0.4], size=int(rng.integers(0, 4)), replace=False):
        pen.oval(x - 0.07, -0.42, x + 0.07, 0.42, fill=tint(c, 0.55))
    pen.oval(-0.8, -0.28, -0.55, -0.03, fill=(250, 250, 250, 255))
    pen.oval(-0.72, -0.2, -0.6, -0.08, fill=(10, 10, 10, 255))


@object_kind(110, (0.7, 0.9), 15, "#f08cc8 #be96f0 #aadcfa")
def draw_jellyfish(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    body = tint(c, 1, alpha=215)
    for x in np.linspace(-0.7, 0.7, int(rng.integers(4, 7))):
        phase = rng.uniform(0, 2 * np.pi)
        ys = np.linspace(-0.4, 1, 12)
        pen.line([(x + 0.12 * np.sin(4 * y + phase), y) for y in ys], tint(c, 0.8, 200), 0.07)
    pen.poly([(-1, -0.35), *arc(0, -0.35, 1, 0.65, 180, 360), (1, -0.35)], body)
    for x in np.linspace(-0.8, 0.8, 5):
        pen.oval(x - 0.2, -0.5, x + 0.2, -0.2, fill=body)
    pen.oval(-0.4, -0.8, 0.1, -0.55, fill=tint(c, 1.4, 215))


@object_kind(120, (1.0, 1.3), 40, "#f0d2b4 #e6a08c #faebd2")
def draw_shell(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    rim = arc(0, 1, 1, 1.9, 212, 328, 24)
    pen.poly([(0, 1), *rim], tint(c, 1))
    ridge = tint(c, 0.7)
    for x, y in rim[2:-1:3]:
        pen.line([(0, 0.95), (x, y)], ridge, 0.05)
    pen.rect(-0.3, 0.78, 0.3, 1, tint(c, 0.8), radius=0.05)


@object_kind(130, (0.9, 1.1), 36, "#ffe65a #ffffdc #fac83c")
def draw_star(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    inner = rng.uniform(0.38, 0.5)
    for scale, factor in ((1.0, 1.0), (0.55, 1.35)):
        pts = []
        for k in range(10):
            r = scale * (1 if k % 2 == 0 else inner)
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((r * np.cos(a), r * np.sin(a) * 1.05 + 0.05))
        pen.poly(pts, tint(c, factor))


@object_kind(140, (0.9, 1.1), 180, "#f0ebc8 #dcdce6")
def draw_moon(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    pen.oval(-1, -1, 1, 1, fill=tint(c, 1))
    for _ in range(3):
        x, y, r = rng.uniform(-0.7, 0.0), rng.uniform(-0.6, 0.6), rng.uniform(0.08, 0.18)
        pen.oval(x - r, y - r, x + r, y + r, fill=tint(c, 0.8))
    shift = rng.uniform(0.45, 0.8)
    pen.oval(-1 + shift, -1.05, 1 + shift, 0.95, fill=(0, 0, 0, 0))  # bite out: a crescent


@object_kind(150, (1.4, 1.8), 30, "#d28c50 #78aadc #c85a46")
def draw_planet(pen: Pen, c: RGB, rng: np.random.Generator) -> None:
    pen.oval(-0.62, -0.62, 0.62, 0.62, fill=tint(c, 1))
    for y in np.linspace(-0.4, 0.4, 5)[int(rng.integers(2)) :: 2]:
        half = 0.62 * math.sqrt(max(0.0, 1 - (y / 0.62) ** 2))
        pen.oval(-half, y - 0.06, half, y + 0.06, fill=tint(c, 0.75))
    pen.oval(-1, -0.28, 1, 0.28, outline=tint((225, 210, 170), rng.uniform(0.8, 1.1)), width=0.09)


KIND_INDEX = {kind.name: k for k, kind in enumerate(KINDS)}


def render_sprite(kind: Kind, rng: np.random.Generator, width: float, height: float) -> Image.Image:
    """One instance of ``kind`` about ``width`` x ``height`` px before rotation: jittered
    colour, lit from the top left, noisy, rotated, anti-aliased, cropped to its pixels."""
    w, h = (max(4, round(v * SUPERSAMPLE)) for v in (width, height))
    base = np.asarray(kind.colours[int(rng.integers(len(kind.colours)))], float)
    colour = np.clip(base * rng.uniform(0.8, 1.12) + rng.integers(-25, 26, 3), 0, 255)
    sprite = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    kind.draw(Pen(sprite), tuple(int(v) for v in colour), rng)
    pixels = np.asarray(sprite, float).copy()
    v, u = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    blotches = np.asarray(
        Image.fromarray(rng.uniform(-1, 1, (3, 3)).astype(np.float32), "F").resize(
            (w, h), Image.BILINEAR
        )
    )
    light = 1 - 0.12 * (u + v) / 2 + 0.1 * blotches
    pixels[..., :3] = pixels[..., :3] * light[..., None] + rng.normal(0, 12, (h, w, 3))
    sprite = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGBA")
    angle = rng.uniform(-kind.spin, kind.spin)
    sprite = sprite.convert("RGBa").rotate(angle, Image.BICUBIC, expand=True).convert("RGBA")
    size = (max(2, round(sprite.width / SUPERSAMPLE)), max(2, round(sprite.height / SUPERSAMPLE)))
    sprite = sprite.resize(size, Image.LANCZOS)
    opaque = sprite.getchannel("A").point(lambda a: 255 if a >= ALPHA_CUT else 0).getbbox()
    return sprite.crop(opaque) if opaque else sprite


# -- contexts -----------------------------------------------------------------------
def blur_noise(rng: np.random.Generator, rows: int, cols: int, size: int) -> np.ndarray:
    """Values in about [-1, 1]: a ``rows`` x ``cols`` grid of noise, bicubically stretched
    to ``size`` x ``size`` (few rows and many columns: vertical streaks)."""
    grid = rng.uniform(-1, 1, (rows, cols)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((size, size), Image.BICUBIC))


def lerp(a: Sequence[float], b: Sequence[float], t: np.ndarray) -> np.ndarray:
    return np.asarray(a, float) + (np.asarray(b, float) - np.asarray(a, float)) * t[..., None]


def jitter(rng: np.random.Generator, rgb: Sequence[float], amount: int = 20) -> np.ndarray:
    return np.asarray(rgb, float) + rng.integers(-amount, amount + 1, 3)


def meadow(rng: np.random.Generator, s: int) -> tuple[np.ndarray, dict]:
    horizon = rng.uniform(0.28, 0.5)
    v = np.linspace(0, 1, s)[:, None] * np.ones((1, s))
    sky = lerp(
        jitter(rng, (80, 140, 225)), jitter(rng, (205, 225, 245)), np.clip(v / horizon, 0, 1)
    )
    depth = np.clip((v - horizon) / (1 - horizon), 0, 1)
    grass = lerp(jitter(rng, (110, 150, 70)), jitter(rng, (50, 125, 35)), depth)
    grass *= 1 + 0.18 * blur_noise(rng, 5, max(4, s // 3), s)[..., None]
    image = np.where((v < horizon)[..., None], sky, grass)
    return image, {"band": (horizon + 0.1, 1.0), "front": "grass"}


def pantry_shelf(rng: np.random.Generator, s: int) -> tuple[np.ndarray, dict]:
    v, u = np.mgrid[0 : 1 : s * 1j, 0 : 1 : s * 1j]
    wood = jitter(rng, (150, 100, 60), 25)
    grain = np.sin(2 * np.pi * (v * rng.uniform(12, 20) + 0.25 * blur_noise(rng, 3, 6, s)))
    image = wood * (0.85 + 0.08 * grain)[..., None]
    shelves = int(rng.integers(2, 4))
    tops = [(k + 1) / shelves - 0.06 for k in range(shelves)]
    for top in tops:
        plank = (v >= top) & (v < top + 0.07)
        image[plank] = wood * 0.6
        image[(v >= top) & (v < top + 0.015)] = wood * 1.2
        image[(v >= top + 0.07) & (v < top + 0.1)] *= 0.7  # shadow under the plank
    return image, {"shelves": tops}


def tabletop(rng: np.random.Generator, s: int) -> tuple[np.ndarray, dict]:
    v, u = np.mgrid[0 : 1 : s * 1j, 0 : 1 : s * 1j]
    a = rng.uniform(0, np.pi / 2)
    period = rng.uniform(1 / 9, 1 / 5)
    along = np.floor((u * np.cos(a) + v * np.sin(a)) / period * 2) % 2
    across = np.floor((-u * np.sin(a) + v * np.cos(a)) / period * 2) % 2
    cloth = [(190, 40, 40), (40, 80, 170), (50, 130, 70), (220, 170, 40)][int(rng.integers(4))]
    image = lerp((245, 242, 235), jitter(rng, cloth), 0.45 * (along + across))
    image *= 1 + 0.05 * np.sin(2 * np.pi * s / 3 * u)[..., None]  # weave
    return image, {}


def underwater(rng: np.random.Generator, s: int) -> tuple[np.ndarray, dict]:
    v, u = np.mgrid[0 : 1 : s * 1j, 0 : 1 : s * 1j]
    image = lerp(jitter(rng, (40, 170, 190)), jitter(rng, (10, 45, 110)), v)
    phase = rng.uniform(0, 2 * np.pi, 2)
    waves = np.sin(
        2 * np.pi * rng.uniform(3, 6) * u + 2 * np.sin(2 * np.pi * 4 * v + phase[0]) + phase[1]
    )
    image += (60 * np.clip(waves, 0, 1) ** 6 * (1 - v))[..., None]
    floor = 1 - rng.uniform(0.1, 0.2) + 0.03 * np.sin(2 * np.pi * 2 * u + phase[0])
    sand = jitter(rng, (195, 178, 128)) * (1 + 0.1 * blur_noise(rng, 8, 8, s))[..., None]
    image = np.where((v > floor)[..., None], sand, image)
    return image, {"front": "bubbles"}


def night_sky(rng: np.random.Generator, s: int) -> tuple[np.ndarray, dict]:
    v, u = np.mgrid[0 : 1 : s * 1j, 0 : 1 : s * 1j]
    image = lerp(jitter(rng, (8, 12, 40), 8), jitter(rng, (35, 35, 85), 12), v)
    twinkle = rng.random((s, s)) < 0.012
    image[twinkle] = rng.uniform(150, 255, (int(twinkle.sum()), 1))
    phase = rng.uniform(0, 2 * np.pi, 2)
    ridge = (
        0.8
        + 0.06 * np.sin(2 * np.pi * 1.5 * u + phase[0])
        + 0.03 * np.sin(2 * np.pi * 5 * u + phase[1])
    )
    image = np.where((v > ridge)[..., None], jitter(rng, (15, 20, 25), 8), image)
    return image, {"band": (0.0, 0.68)}


@dataclass(frozen=True)
class Setting:
    """A scene context: background painter (image, layout) and its typical kinds."""

    name: str
    description: str
    paint: Callable[[np.random.Generator, int], tuple[np.ndarray, dict]]
    kinds: tuple[str, str, str]


SETTINGS = (
    Setting("meadow", "sky over grass", meadow, ("leaf", "flower", "mushroom")),
    Setting("pantry_shelf", "wooden shelves", pantry_shelf, ("can", "jar", "bottle")),
    Setting("tabletop", "gingham cloth from above", tabletop, ("cup", "plate", "book")),
    Setting("underwater", "water, caustics and sand", underwater, ("fish", "jellyfish", "shell")),
    Setting("night_sky", "stars over hills", night_sky, ("star", "moon", "planet")),
)


# -- scenes -------------------------------------------------------------------------
def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return w * h / (area - w * h)


def place(rng: np.random.Generator, layout: dict, w: int, h: int, s: int) -> tuple[int, int]:
    """Top-left corner of a ``w`` x ``h`` sprite: on a shelf, in the context's band of
    heights, or anywhere."""
    x = int(rng.integers(0, s - w + 1))
    if "shelves" in layout:
        y = round(float(rng.choice(layout["shelves"])) * s) - h + 1
    elif "band" in layout:
        low, high = layout["band"]
        y = round(rng.uniform(low, high) * s - h / 2)
    else:
        y = int(rng.integers(0, s - h + 1))
    return x, int(np.clip(y, 0, s - h))


def foreground(image: Image.Image, kind: str | None, rng: np.random.Generator) -> None:
    """What covers the objects in front: grass blades or bubbles (boxes stay amodal)."""
    s = image.width
    draw = ImageDraw.Draw(image, "RGBA")
    if kind == "grass":
        for _ in range(int(rng.integers(6, 14))):
            x, top = rng.uniform(0, s), s * (1 - rng.uniform(0.08, 0.25))
            lean = rng.uniform(-0.08, 0.08) * s
            green = tuple(int(c) for c in jitter(rng, (45, 120, 30), 20))
            draw.line([(x, s), (x + lean, top)], fill=green, width=max(1, s // 48))
    elif kind == "bubbles":
        for _ in range(int(rng.integers(3, 9))):
            x, y, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.01, 0.035) * s
            draw.ellipse(
                (x - r, y - r, x + r, y + r), outline=(220, 245, 255, 170), width=max(1, s // 96)
            )


Obj = tuple[int, tuple[int, int, int, int], int]  # kind index, xyxy box, out-of-context flag


def make_scene(
    rng: np.random.Generator,
    s: int,
    setting: Setting,
    n_objects: int,
    stray: bool,
) -> tuple[Image.Image, list[Obj]]:
    """One scene of ``setting`` with up to ``n_objects`` objects (at least 2); with
    ``stray``, the first placed is of another context's kinds and flagged."""
    pixels, layout = setting.paint(rng, s)
    pixels = pixels + rng.normal(0, 3, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")
    typical = [KIND_INDEX[name] for name in setting.kinds]
    strangers = [k for k in range(len(KINDS)) if k not in typical]
    placed: list[tuple[int, Image.Image, tuple[int, int, int, int], int]] = []
    for slot in range(n_objects):
        flag = int(stray and slot == 0)
        k = int(rng.choice(strangers if flag else typical))
        for attempt in range(40):
            side = rng.uniform(*SIDE_RANGE) * s * 0.98**attempt
            aspect = rng.uniform(*KINDS[k].aspect)
            sprite = render_sprite(
                KINDS[k], rng, side * math.sqrt(aspect), side / math.sqrt(aspect)
            )
            w, h = min(sprite.width, s), min(sprite.height, s)
            x, y = place(rng, layout, w, h, s)
            box = (x, y, x + w, y + h)
            if all(box_iou(box, other) <= MAX_BOX_IOU for _, _, other, _ in placed):
                placed.append((k, sprite.crop((0, 0, w, h)), box, flag))
                break
            if attempt >= 10 and len(placed) >= 2:
                break  # crowded: fewer objects
    for j in rng.permutation(len(placed)):  # drawing order: who covers whom
        _, sprite, box, _ = placed[j]
        image.paste(sprite, box[:2], sprite)
    foreground(image, layout.get("front"), rng)
    return image, [(k, box, flag) for k, _, box, flag in placed]


def coco_entries(
    i: int, name: str, size: int, context: int, objects: list[Obj], first_id: int
) -> tuple[dict, list[dict]]:
    """The COCO image entry of scene ``i`` and its annotations, numbered from ``first_id``."""
    image = {"id": i + 1, "file_name": name, "width": size, "height": size}
    image.update(num_objects=len(objects), context=SETTINGS[context].name, context_id=context + 1)
    annotations = []
    for n, (k, (x0, y0, x1, y1), flag) in enumerate(objects):
        w, h = x1 - x0, y1 - y0
        annotations.append(
            {"id": first_id + n, "image_id": i + 1, "category_id": KINDS[k].category_id}
            | {"bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0, "out_of_context": flag}
        )
    return image, annotations


def dataset_info() -> dict[str, list[dict]]:
    """The ``categories`` (grouped by context) and ``contexts`` of the COCO file."""
    typical = [[KINDS[KIND_INDEX[name]] for name in setting.kinds] for setting in SETTINGS]
    return {
        "categories": [
            {"id": k.category_id, "name": k.name, "supercategory": setting.name}
            for setting, kinds in zip(SETTINGS, typical, strict=True)
            for k in kinds
        ],
        "contexts": [
            {"id": c + 1, "name": setting.name, "background": setting.description}
            | {"category_ids": [k.category_id for k in kinds]}
            for c, (setting, kinds) in enumerate(zip(SETTINGS, typical, strict=True))
        ],
    }


def already_written(root: Path, meta: dict, names: Sequence[str]) -> bool:
    """Whether ``root`` holds the complete set ``meta`` describes (``meta.json`` is
    written last)."""
    try:
        recorded = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    files = ["annotations.json", *(f"images/{name}" for name in names)]
    return recorded == meta and all((root / f).is_file() for f in files)


def make_heldout_scenes(
    root: str | Path,
    n_images: int = 200,
    image_size: int = 96,
    seed: int = 0,
    ooc_fraction: float = 0.15,
    min_objects: int = 2,
    max_objects: int = 6,
) -> tuple[Path, Path]:
    """Writes (or reuses) a held-out scene set in COCO format under ``root`` (images in
    ``images/``, ``annotations.json``, ``meta.json``); returns ``(image_dir, ann_file)``.
    See the module docstring."""
    if n_images < 1 or image_size < 32 or not 2 <= min_objects <= max_objects:
        raise ValueError(
            f"need n_images >= 1, image_size >= 32 and 2 <= min_objects <= max_objects; "
            f"got {n_images}, {image_size}, {min_objects}, {max_objects}"
        )
    if not 0 <= ooc_fraction <= 1:
        raise ValueError(f"ooc_fraction must be in [0, 1], got {ooc_fraction}")
    root = Path(root)
    names = [f"scene_{i:05d}.jpg" for i in range(n_images)]
    meta = {"family": FAMILY, "n_images": n_images, "image_size": image_size, "seed": seed}
    meta.update(ooc_fraction=ooc_fraction, objects=[min_objects, max_objects])
    if already_written(root, meta, names):
        return root / "images", root / "annotations.json"
    (root / "meta.json").unlink(missing_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng([seed, RNG_TAG, n_images]).permutation(n_images)
    strays = set(order[: round(ooc_fraction * n_images)].tolist())
    images, annotations = [], []
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, RNG_TAG, i, 1])
        context = int(rng.integers(len(SETTINGS)))
        n = int(rng.integers(min_objects, max_objects + 1))
        image, objects = make_scene(rng, image_size, SETTINGS[context], n, i in strays)
        image.save(root / "images" / name, quality=90)
        entry, anns = coco_entries(i, name, image_size, context, objects, len(annotations) + 1)
        images.append(entry)
        annotations += anns
    coco = {"images": images, "annotations": annotations, **dataset_info()}
    (root / "annotations.json").write_text(json.dumps(coco))
    (root / "meta.json").write_text(json.dumps(meta))
    return root / "images", root / "annotations.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--images", type=int, default=200, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (>= 32)")
    parser.add_argument(
        "--ooc-fraction", type=float, default=0.15, help="images with one stray object"
    )
    parser.add_argument("--max-objects", type=int, default=6)
    args = parser.parse_args(argv)
    try:
        image_dir, ann_file = make_heldout_scenes(
            args.out,
            args.images,
            args.size,
            args.seed,
            args.ooc_fraction,
            max_objects=args.max_objects,
        )
    except ValueError as error:
        parser.error(str(error))
    print(f"image_dir={image_dir}\nann_file={ann_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
