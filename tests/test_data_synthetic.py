import json
from collections import Counter

import numpy as np
from PIL import Image

from hcl_lightning.data import CocoBoxSource, make_synthetic_scenes
from hcl_lightning.data.synthetic import CATEGORY_IDS, SHAPES

PARAMS = {"n_images": 16, "image_size": 48, "max_objects": 5}


def snapshot(image_dir, ann_file):
    return ann_file.read_bytes(), {p.name: p.read_bytes() for p in sorted(image_dir.iterdir())}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = snapshot(*make_synthetic_scenes(tmp_path / "a", seed=1, **PARAMS))
    second = snapshot(*make_synthetic_scenes(tmp_path / "b", seed=1, **PARAMS))
    other = snapshot(*make_synthetic_scenes(tmp_path / "c", seed=2, **PARAMS))
    assert first == second
    assert first[0] != other[0]
    assert first[1]["000000.jpg"] != other[1]["000000.jpg"]


def test_annotations_are_coco_like(tmp_path):
    image_dir, ann_file = make_synthetic_scenes(tmp_path, **PARAMS)
    coco = json.loads(ann_file.read_text())

    category_ids = [c["id"] for c in coco["categories"]]
    assert len(category_ids) >= 6
    assert category_ids != list(range(len(category_ids)))  # deliberately non-contiguous
    assert len({c["name"] for c in coco["categories"]}) == len(category_ids)

    per_image = Counter(a["image_id"] for a in coco["annotations"])
    assert len(coco["images"]) == PARAMS["n_images"]
    for image in coco["images"]:
        assert 1 <= image["num_objects"] <= PARAMS["max_objects"]
        assert per_image[image["id"]] == image["num_objects"]
        with Image.open(image_dir / image["file_name"]) as im:
            assert im.size == (image["width"], image["height"]) == (48, 48)
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert ann["category_id"] in category_ids and ann["iscrowd"] == 0
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 48 and y + h <= 48
    assert len({a["category_id"] for a in coco["annotations"]}) > 3  # several classes used


def test_objects_are_drawn_in_their_class_colour(tmp_path):
    """The last object of an image is on top: a solid one shows its colour at its centre."""
    image_dir, ann_file = make_synthetic_scenes(tmp_path, **PARAMS)
    coco = json.loads(ann_file.read_text())
    colour_of = {
        cid: colour
        for cid, (name, colour, texture) in zip(CATEGORY_IDS, SHAPES, strict=True)
        if texture == "solid" and name != "ring"
    }
    last = {a["image_id"]: a for a in coco["annotations"]}
    checked = 0
    for image in coco["images"]:
        ann = last[image["id"]]
        if ann["category_id"] not in colour_of:
            continue
        x, y, w, h = ann["bbox"]
        pixels = np.asarray(Image.open(image_dir / image["file_name"]), dtype=float)
        centre = pixels[y + h // 2 - 1 : y + h // 2 + 2, x + w // 2 - 1 : x + w // 2 + 2]
        assert np.abs(centre.mean(axis=(0, 1)) - colour_of[ann["category_id"]]).max() < 45
        checked += 1
    assert checked >= 3


def test_cached_when_complete_regenerated_otherwise(tmp_path):
    image_dir, ann_file = make_synthetic_scenes(tmp_path, **PARAMS)
    image = image_dir / "000003.jpg"
    stamps = (ann_file.stat().st_mtime_ns, image.stat().st_mtime_ns)

    assert make_synthetic_scenes(tmp_path, **PARAMS) == (image_dir, ann_file)
    assert (ann_file.stat().st_mtime_ns, image.stat().st_mtime_ns) == stamps

    original = image.read_bytes()
    image.unlink()  # incomplete: regenerated identically
    make_synthetic_scenes(tmp_path, **PARAMS)
    assert image.read_bytes() == original

    make_synthetic_scenes(tmp_path, **{**PARAMS, "n_images": 20})  # other parameters
    assert len(json.loads(ann_file.read_text())["images"]) == 20
    assert json.loads((tmp_path / "meta.json").read_text())["n_images"] == 20


def test_goes_through_the_coco_reader(tmp_path):
    image_dir, ann_file = make_synthetic_scenes(tmp_path, **PARAMS)
    source = CocoBoxSource(image_dir, ann_file)
    coco = json.loads(ann_file.read_text())
    assert len(source) == PARAMS["n_images"]
    assert source.num_classes == len(coco["categories"])
    assert sum(source.stats.values()) == 0
    assert sum(len(r.boxes) for r in source.records) == len(coco["annotations"])
    labels = np.concatenate([r.labels for r in source.records])
    assert labels.min() >= 0 and labels.max() < source.num_classes
