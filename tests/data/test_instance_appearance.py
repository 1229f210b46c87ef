"""appearance="instance" of the synthetic scenes: each object instance its own look."""

from __future__ import annotations

import colorsys
import inspect
import json
import re

import numpy as np
import pytest

from hcl_lightning.data import instance_appearance as looks
from hcl_lightning.data import make_synthetic_scenes
from hcl_lightning.data.synthetic import (
    MAX_COVERED,
    SHAPES,
    _instance_textures,
    _outline_mask,
    _paint,
    _shape_mask,
)

PARAMS = {"n_images": 24, "image_size": 64, "max_objects": 6}
SIZE, BOX = 48, (8, 8, 40, 40)


def _mean_colours(cls: int, appearance: str, seeds: range) -> np.ndarray:
    """Mean RGB over the pixels of one object of class ``cls`` in ``BOX``, per seed."""
    name, colour, _ = SHAPES[cls]
    means = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        if appearance == "class":
            pixels = _paint(np.zeros((SIZE, SIZE, 3)), cls, BOX, rng)
            mask = _shape_mask(name, BOX, SIZE)
        else:
            look = looks.sample_look(rng, colour, _instance_textures(cls))
            pixels, mask = looks.fill(look, BOX, SIZE), _outline_mask(name, look, BOX, SIZE)
        means.append(pixels[mask].mean(axis=0))
    return np.asarray(means)


@pytest.mark.parametrize("cls", range(len(SHAPES)))
def test_instances_of_a_class_differ_in_colour_only_with_instance_appearance(cls):
    """Pairs of instances of one class: in "class" look their mean colours differ by the
    class colour's jitter only (±20 per channel); in "instance" look by far more."""
    pairs = {}
    for appearance in ("class", "instance"):
        means = _mean_colours(cls, appearance, range(40))
        pairs[appearance] = np.abs(means[0::2] - means[1::2]).max(axis=1)
    assert pairs["class"].max() <= 40, pairs["class"]
    assert np.median(pairs["instance"]) > 45, pairs["instance"]
    assert np.mean(pairs["instance"] > 30) >= 0.8, pairs["instance"]


def test_looks_are_deterministic_and_in_range():
    first = [looks.sample_look(np.random.default_rng(k), (220, 40, 40)) for k in range(200)]
    again = [looks.sample_look(np.random.default_rng(k), (220, 40, 40)) for k in range(200)]
    assert first == again
    assert {look.texture for look in first} == set(looks.TEXTURES)
    aspects = np.array([look.aspect for look in first])
    assert looks.ASPECT_RANGE[0] <= aspects.min() < 0.7 and 1.4 < aspects.max() <= 1.6
    tilts = np.rad2deg([look.tilt for look in first])
    assert -looks.MAX_TILT <= tilts.min() < -15 and 15 < tilts.max() <= looks.MAX_TILT
    hues = [(360 * _hue(look.colour) + 180) % 360 - 180 for look in first]  # red: 0
    assert -looks.MAX_HUE_SHIFT - 1 <= min(hues) < -30 and 30 < max(hues) <= 41


def _hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255))[0]


def test_textures_keep_the_rectangle_classes_apart():
    """Striped rectangles and checkerboards keep their pattern; squares take neither."""
    textures = {name: set(_instance_textures(cls)) for cls, (name, _, _) in enumerate(SHAPES)}
    assert textures["striped_rectangle"] == {"stripes"}
    assert textures["checkerboard"] == {"checker"}
    assert textures["square"] == {"solid", "dots", "gradient"}
    assert textures["circle"] == set(looks.TEXTURES)


def _covered(box, later) -> float:
    x1, y1, x2, y2 = box
    covered = np.zeros((y2 - y1, x2 - x1), bool)
    for a1, b1, a2, b2 in later:
        covered[max(b1 - y1, 0) : max(b2 - y1, 0), max(a1 - x1, 0) : max(a2 - x1, 0)] = True
    return covered.mean()


@pytest.mark.parametrize("contexts", [False, True])
def test_boxes_are_tight_valid_and_at_most_partly_covered(tmp_path, contexts):
    """Boxes lie in the image; each is covered at most MAX_COVERED by the boxes drawn
    after it (an out-of-context object, annotated first, is drawn last), and some are
    partly covered; aspect ratios spread over 0.6-1.6; the format is unchanged."""
    params = {**PARAMS, "contexts": contexts, "ooc_fraction": 0.5 * contexts}
    _, ann_file = make_synthetic_scenes(tmp_path, **params)
    coco = json.loads(ann_file.read_text())
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    size = PARAMS["image_size"]
    coverages, ratios = [], []
    for image in coco["images"]:
        anns = by_image[image["id"]]
        assert image["num_objects"] == len(anns) >= 1
        drawn = sorted(anns, key=lambda a: a.get("out_of_context", 0))  # stable: ooc last
        boxes = []
        for ann in drawn:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and w >= 4 and h >= 4 and x + w <= size and y + h <= size
            assert ann["area"] == w * h and ann["iscrowd"] == 0
            assert ("out_of_context" in ann) == contexts
            boxes.append((x, y, x + w, y + h))
            ratios.append(w / h)
        for i, box in enumerate(boxes):
            coverages.append(_covered(box, boxes[i + 1 :]))
    assert max(coverages) <= MAX_COVERED
    assert sum(c > 0.05 for c in coverages) >= 3  # partial occlusion happens
    assert min(ratios) < 0.75 and max(ratios) > 1.33
    if contexts:
        flags = [a["out_of_context"] for a in coco["annotations"]]
        assert sum(flags) == 12


def test_instance_scenes_are_deterministic_and_recorded(tmp_path):
    def snapshot(root, appearance="instance"):
        image_dir, ann_file = make_synthetic_scenes(root, **PARAMS, appearance=appearance)
        return ann_file.read_bytes(), [p.read_bytes() for p in sorted(image_dir.iterdir())]

    first = snapshot(tmp_path / "a")
    assert first == snapshot(tmp_path / "b")
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["appearance"] == "instance"
    # the class look in the same folder: regenerated, and recorded as before (no key)
    assert snapshot(tmp_path / "a", "class")[1] != first[1]
    assert "appearance" not in json.loads((tmp_path / "a" / "meta.json").read_text())


def test_instance_is_the_default(tmp_path, monkeypatch):
    from tests.helpers import compose_config

    default = inspect.signature(make_synthetic_scenes).parameters["appearance"].default
    assert default == "instance"
    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path))
    cfg = compose_config([])
    assert cfg.data.synthetic.appearance == cfg.data.val_synthetic.appearance == "instance"
    other = compose_config(["data.synthetic.appearance=class"])
    assert other.data.val_synthetic.appearance == "class"
    assert cfg.data.synthetic.root != other.data.synthetic.root  # cache folders differ
    assert cfg.data.synthetic.root.endswith("-appinstance")


def test_appearance_is_checked_naming_the_value_and_the_choices(tmp_path, monkeypatch):
    from hcl_lightning.config import ConfigError, validate_config
    from tests.helpers import compose_config, tiny_overrides

    message = "appearance must be one of ('class', 'instance'), got 'photo'"
    with pytest.raises(ValueError, match=re.escape(message)):
        make_synthetic_scenes(tmp_path, n_images=2, image_size=32, appearance="photo")
    assert not (tmp_path / "meta.json").exists()
    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_config(
        [*tiny_overrides(tmp_path), "data.synthetic.appearance=photo", f"output_dir={tmp_path}"]
    )
    with pytest.raises(ConfigError, match=re.escape(f"data.synthetic.{message}")):
        validate_config(cfg)
