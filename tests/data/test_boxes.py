import json
import math

import numpy as np
import pytest
from PIL import Image

from hcl_lightning.data import (
    CocoBoxSource,
    ImageRecord,
    JsonBoxSource,
    RandomBoxSource,
    build_box_source,
)


def write_coco(path, **overrides):
    coco = {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 20, "file_name": "b.jpg", "width": 50, "height": 50},  # no annotations
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 5, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 2, "bbox": [0, 0, 5, 6]},
            {"id": 3, "image_id": 10, "category_id": 2, "bbox": [1, 1, 50, 50], "iscrowd": 1},
            {"id": 4, "image_id": 10, "category_id": 5, "bbox": [5, 5, 0, 10]},  # zero width
            {"id": 5, "image_id": 10, "category_id": 5, "bbox": [5, 5, math.nan, 10]},
            {"id": 6, "image_id": 10, "category_id": 9, "bbox": [90, 70, 20, 20]},  # clipped
            {"id": 7, "image_id": 10, "category_id": 9, "bbox": [200, 200, 10, 10]},  # outside
            {"id": 8, "image_id": 99, "category_id": 9, "bbox": [1, 1, 10, 10]},
            {"id": 9, "image_id": 10, "category_id": 4, "bbox": [1, 1, 10, 10]},
        ],
        "categories": [
            {"id": 9, "name": "nine"},
            {"id": 2, "name": "two"},
            {"id": 5, "name": "five"},
        ],
    }
    coco.update(overrides)
    path.write_text(json.dumps(coco))
    return path


def test_coco_source_converts_filters_and_counts(tmp_path):
    source = CocoBoxSource(tmp_path, write_coco(tmp_path / "ann.json"))

    assert source.class_names == ["two", "five", "nine"]
    assert source.num_classes == 3
    assert [r.image_id for r in source.records] == [10, 20]
    first, second = source.records
    assert first.path == tmp_path / "a.jpg"
    assert (first.width, first.height) == (100, 80)
    np.testing.assert_allclose(first.boxes, [[10, 20, 40, 60], [0, 0, 5, 6], [90, 70, 100, 80]])
    assert first.labels.tolist() == [1, 0, 2]
    assert first.boxes.dtype == np.float32 and first.labels.dtype == np.int64
    assert second.boxes.shape == (0, 4) and second.labels.shape == (0,)
    assert source.stats == {
        "crowd": 1,
        "non_finite": 1,
        "empty": 1,
        "outside": 1,
        "too_small": 0,
        "unknown_image": 1,
        "unknown_category": 1,
        "clipped": 1,
        "duplicate_image": 0,
    }
    assert source.dropped_boxes == 6


def test_coco_min_box_size_drops_small_boxes(tmp_path):
    source = CocoBoxSource(tmp_path, write_coco(tmp_path / "ann.json"), min_box_size=8)
    np.testing.assert_allclose(source.records[0].boxes, [[10, 20, 40, 60], [90, 70, 100, 80]])
    assert (source.stats["too_small"], source.stats["empty"], source.stats["outside"]) == (1, 1, 1)


def test_coco_without_categories_derives_them_from_annotations(tmp_path):
    ann = write_coco(tmp_path / "ann.json")
    coco = json.loads(ann.read_text())
    del coco["categories"]
    ann.write_text(json.dumps(coco))
    assert CocoBoxSource(tmp_path, ann).class_names == ["2", "4", "5", "9"]


def test_coco_errors_name_the_file_and_field(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoBoxSource(tmp_path, missing)

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        CocoBoxSource(tmp_path, bad)

    no_ann = tmp_path / "no_ann.json"
    no_ann.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="no_ann.json.*'annotations'"):
        CocoBoxSource(tmp_path, no_ann)

    no_images = tmp_path / "no_images.json"
    no_images.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="no_images.json.*'images'"):
        CocoBoxSource(tmp_path, no_images)

    no_width = write_coco(tmp_path / "no_width.json", images=[{"id": 10, "file_name": "a.jpg"}])
    with pytest.raises(ValueError, match="no_width.json.*'width'"):
        CocoBoxSource(tmp_path, no_width)

    bad_bbox = write_coco(
        tmp_path / "bad_bbox.json",
        annotations=[{"id": 1, "image_id": 10, "category_id": 5, "bbox": [1, 2, 3]}],
    )
    with pytest.raises(ValueError, match="bad_bbox.json.*bbox"):
        CocoBoxSource(tmp_path, bad_bbox)


PROPOSALS = [
    {"file": "a.jpg", "boxes": [[1, 2, 30, 40], [5, 5, 5, 9]], "labels": [3, 4]},
    {"file": "sub/b.png", "boxes": [[0, 0, 200, 10], [float("nan"), 0, 1, 1]]},
    {"file": "c.jpg", "boxes": []},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".txt"])
def test_json_source_reads_list_and_jsonl(tmp_path, suffix):
    path = tmp_path / f"proposals{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(PROPOSALS))
    else:
        path.write_text("\n".join(json.dumps(e) for e in PROPOSALS) + "\n\n")
    source = JsonBoxSource(tmp_path, path)

    assert source.num_classes is None
    assert [r.path for r in source.records] == [
        tmp_path / "a.jpg",
        tmp_path / "sub/b.png",
        tmp_path / "c.jpg",
    ]
    assert source.stats == {"invalid": 2}
    a, b, c = source.records
    assert a.width is None
    np.testing.assert_allclose(a.boxes, [[1, 2, 30, 40]])
    assert a.labels.tolist() == [3]
    assert b.labels.tolist() == [-1]
    assert c.boxes.shape == (0, 4)
    # Sizes are known once the image is decoded; boxes are clipped then.
    resolved = b.resolve(64, 48)
    assert (resolved.width, resolved.height) == (64, 48)
    np.testing.assert_allclose(resolved.boxes, [[0, 0, 64, 10]])


def test_json_source_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"file": "a.jpg"}) + "\n")
    with pytest.raises(ValueError, match="p.jsonl.*entry 0.*'boxes'"):
        JsonBoxSource(tmp_path, path)
    path.write_text('{"file": "a.jpg", "boxes": []}\n{oops\n')
    with pytest.raises(ValueError, match="p.jsonl line 2"):
        JsonBoxSource(tmp_path, path)
    path.write_text(json.dumps({"file": "a.jpg", "boxes": [[0, 0, 1, 1]], "labels": [1, 2]}))
    with pytest.raises(ValueError, match="p.jsonl.*1 boxes but 2 labels"):
        JsonBoxSource(tmp_path, path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        JsonBoxSource(tmp_path, tmp_path / "missing.json")


@pytest.fixture
def image_folder(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for name in ["b.jpg", "a.PNG", "sub/c.jpeg", "sub/deeper/d.bmp", "e.webp"]:
        Image.new("RGB", (40, 30)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_random_source_is_recursive_and_deterministic(image_folder):
    source = RandomBoxSource(image_folder, boxes_per_image=(2, 4), seed=3)
    names = [r.path.relative_to(image_folder).as_posix() for r in source.records]
    assert names == ["a.PNG", "b.jpg", "e.webp", "sub/c.jpeg", "sub/deeper/d.bmp"]

    again = RandomBoxSource(image_folder, boxes_per_image=(2, 4), seed=3)
    other_seed = RandomBoxSource(image_folder, boxes_per_image=(2, 4), seed=4)
    differs = False
    for r1, r2, r3 in zip(source.records, again.records, other_seed.records, strict=True):
        b1, b2, b3 = r1.resolve(40, 30), r2.resolve(40, 30), r3.resolve(40, 30)
        np.testing.assert_array_equal(b1.boxes, b2.boxes)
        differs |= b1.boxes.shape != b3.boxes.shape or not np.array_equal(b1.boxes, b3.boxes)
        assert 2 <= len(b1.boxes) <= 4
        assert (b1.labels == -1).all()
        assert (
            (b1.boxes >= 0).all() and (b1.boxes[:, 2] <= 40).all() and (b1.boxes[:, 3] <= 30).all()
        )
        assert ((b1.boxes[:, 2:] - b1.boxes[:, :2]) > 0).all()
    assert differs


def test_random_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RandomBoxSource(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no images"):
        RandomBoxSource(tmp_path)


def test_build_box_source_chooses(image_folder):
    ann = write_coco(image_folder / "ann.json")
    proposals = image_folder / "p.jsonl"
    proposals.write_text(json.dumps(PROPOSALS[0]))
    assert isinstance(build_box_source(image_folder, ann_file=ann), CocoBoxSource)
    assert isinstance(build_box_source(image_folder, proposals=proposals), JsonBoxSource)
    assert isinstance(build_box_source(image_folder), RandomBoxSource)
    with pytest.raises(ValueError, match="ann_file and proposals"):
        build_box_source(image_folder, ann_file=ann, proposals=proposals)


def test_image_record_validates_lengths(tmp_path):
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        ImageRecord(tmp_path / "x.jpg", 10, 10, np.zeros((2, 4)), np.zeros(1))
