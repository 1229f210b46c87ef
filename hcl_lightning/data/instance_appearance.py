"""Per-instance appearance of the synthetic scenes (``appearance="instance"``).

Every object instance gets its own look, so that a crop of a scene identifies its
object beyond its class (as on photos, where no two instances look the same): a colour
jittered around the class colour in hue (any shift within ±:data:`MAX_HUE_SHIFT`
degrees), saturation and value; one of :data:`TEXTURES` with its own angle, period and
second colour; an aspect ratio in :data:`ASPECT_RANGE`; and a tilt within
±:data:`MAX_TILT` degrees. The class stays recognisable by its shape.

:func:`sample_look` draws a :class:`Look` from a numpy ``Generator``;
:func:`outline` and :func:`fill` turn it into polygons and pixels, deterministically.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

#: Textures an instance can be filled with.
TEXTURES = ("solid", "stripes", "checker", "dots", "gradient")
#: Largest hue shift from the class colour, in degrees.
MAX_HUE_SHIFT = 40.0
#: Factors of the class colour's saturation and value.
SATURATION_RANGE = (0.5, 1.0)
VALUE_RANGE = (0.55, 1.1)
#: Width / height of an instance before its tilt, drawn log-uniformly.
ASPECT_RANGE = (0.6, 1.6)
#: Largest tilt of a shape, in degrees: at most 20, so that a tilted square never passes
#: for a diamond (a square turned by 45°), and objects stay roughly upright, as on photos.
MAX_TILT = 20.0
#: Ellipses are drawn as polygons with this many vertices.
ELLIPSE_VERTICES = 48


@dataclass(frozen=True)
class Look:
    """The appearance of one object instance.

    Attributes:
        colour: main RGB colour (floats in [0, 255]).
        accent: second colour of the stripes, checks, dots or gradient.
        texture: one of :data:`TEXTURES`.
        aspect: width / height of the shape before its tilt.
        tilt: rotation of the shape, radians (positive: clockwise on screen).
        pattern_angle: direction of the stripes or gradient, radians; checks and dots
            turn with the shape.
        period: stripe width, check side or dot spacing, in pixels.
        phase: offset of the pattern, as a fraction of ``period``.
    """

    colour: tuple[float, float, float]
    accent: tuple[float, float, float]
    texture: str
    aspect: float
    tilt: float
    pattern_angle: float
    period: float
    phase: float


def jitter_colour(rng: np.random.Generator, colour: tuple[float, ...]) -> tuple[float, ...]:
    """``colour`` (RGB 0-255) with its hue shifted by up to ±:data:`MAX_HUE_SHIFT`
    degrees and its saturation and value scaled within :data:`SATURATION_RANGE` and
    :data:`VALUE_RANGE`."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(np.asarray(colour, float) / 255))
    hue = (hue + rng.uniform(-MAX_HUE_SHIFT, MAX_HUE_SHIFT) / 360) % 1.0
    saturation = min(1.0, saturation * rng.uniform(*SATURATION_RANGE))
    value = min(1.0, value * rng.uniform(*VALUE_RANGE))
    return tuple(255 * c for c in colorsys.hsv_to_rgb(hue, saturation, value))


def sample_look(
    rng: np.random.Generator, colour: tuple[float, ...], textures: tuple[str, ...] = TEXTURES
) -> Look:
    """A random look around the class colour ``colour``, its texture one of ``textures``."""
    main = np.asarray(jitter_colour(rng, colour))
    towards = 255.0 if rng.random() < 0.5 else 0.0  # accent: lighter or darker
    accent = main + rng.uniform(0.45, 0.8) * (towards - main)
    log_low, log_high = np.log(ASPECT_RANGE)
    return Look(
        colour=tuple(float(c) for c in main),
        accent=tuple(float(c) for c in accent),
        texture=textures[int(rng.integers(len(textures)))],
        aspect=float(np.exp(rng.uniform(log_low, log_high))),
        tilt=float(np.deg2rad(rng.uniform(-MAX_TILT, MAX_TILT))),
        pattern_angle=float(rng.uniform(0, np.pi)),
        period=float(rng.uniform(2.5, 6.0)),
        phase=float(rng.random()),
    )


def _unit_outline(name: str) -> list[tuple[np.ndarray, int]]:
    """Polygons ``(vertices (n, 2) in [-1, 1]², fill 255 or 0)`` of shape ``name``;
    later polygons are drawn over earlier ones (the ring's hole)."""
    t = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
    ellipse = np.stack([np.cos(t), np.sin(t)], axis=1)
    if name in ("circle", "ring"):
        return [(ellipse, 255)] + ([(ellipse * 0.6, 0)] if name == "ring" else [])
    if name == "triangle":
        return [(np.array([(-1, 1), (1, 1), (0, -1)], float), 255)]
    if name == "diamond":
        return [(np.array([(0, -1), (1, 0), (0, 1), (-1, 0)], float), 255)]
    if name == "cross":
        a = 1 / 3
        arms = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a)]
        arms += [(a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
        return [(np.array(arms, float), 255)]
    return [(np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float), 255)]  # rectangles


def outline(
    name: str, look: Look, box: tuple[int, int, int, int]
) -> list[tuple[list[tuple[float, float]], int]]:
    """Pixel polygons ``(vertices, fill)`` of shape ``name`` with ``look``'s aspect and
    tilt, scaled uniformly to fit ``box`` (x1, y1, x2, y2, exclusive end) and centred in
    it, for ``PIL.ImageDraw.polygon``. A ring keeps a band of at least 2 pixels."""
    polygons = _unit_outline(name)
    cos, sin = np.cos(look.tilt), np.sin(look.tilt)
    rotation = np.array([[cos, sin], [-sin, cos]])
    stretch = np.array([look.aspect, 1.0])
    turned = [(vertices * stretch) @ rotation for vertices, _ in polygons]
    reach = np.abs(turned[0]).max(axis=0)  # half extents of the outer polygon
    x1, y1, x2, y2 = box
    scale = min((x2 - 1 - x1) / (2 * reach[0]), (y2 - 1 - y1) / (2 * reach[1]))
    centre = np.array([(x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2])
    if name == "ring":  # the hole: a band of a fifth of the short side, >= 2 px
        short = scale * min(look.aspect, 1.0)
        hole = max(0.0, 1 - max(2.0, 0.4 * short) / short)
        turned[1] = turned[0] * hole
    return [
        ([tuple(p) for p in centre + scale * vertices], fill)
        for vertices, (_, fill) in zip(turned, polygons, strict=True)
    ]


def fill(look: Look, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The ``(size, size, 3)`` float fill of an object of ``look`` in ``box``: its
    texture, laid out from the box centre (no noise)."""
    x1, y1, x2, y2 = box
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    xx -= (x1 + x2 - 1) / 2
    yy -= (y1 + y2 - 1) / 2
    colour, accent = np.asarray(look.colour), np.asarray(look.accent)
    if look.texture == "solid":
        return np.broadcast_to(colour, (size, size, 3)).astype(float)
    if look.texture in ("stripes", "gradient"):
        angle = look.pattern_angle
    else:  # checks and dots turn with the shape
        angle = look.tilt
    u = np.cos(angle) * xx + np.sin(angle) * yy  # coordinates along the pattern's axes
    v = np.cos(angle) * yy - np.sin(angle) * xx
    if look.texture == "gradient":
        t = np.clip(0.5 + u / max(x2 - x1, y2 - y1, 1), 0, 1)
    else:
        cell_u = np.floor(u / look.period + look.phase)
        cell_v = np.floor(v / look.period + look.phase)
        if look.texture == "stripes":
            t = cell_u % 2
        elif look.texture == "checker":
            t = (cell_u + cell_v) % 2
        else:  # dots: a disc of radius 0.3 periods on a square lattice (dot period 2x)
            du = (u / (2 * look.period) + look.phase) % 1 - 0.5
            dv = (v / (2 * look.period) + look.phase) % 1 - 0.5
            t = (np.hypot(du, dv) < 0.3).astype(float)
    return colour + t[..., None] * (accent - colour)
