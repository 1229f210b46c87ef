import json

import numpy as np
import pytest
from PIL import Image

from hcl_lightning.data import (
    BoxOptions,
    CropOptions,
    HCLDataModule,
    JsonBoxSource,
    SelectiveSearchBoxSource,
    build_box_source,
    make_synthetic_scenes,
)
from hcl_lightning.data import selective_search as ss_module
from hcl_lightning.data.selective_search import DEFAULT_CACHE_NAME, filter_proposals

IMAGE_SIZE = 96
BATCH_KEYS = {"views", "scene", "object", "n_objects", "labels", "scene_labels", "index"}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    pytest.importorskip("cv2.ximgproc")
    root = tmp_path_factory.mktemp("ss")
    images, _ = make_synthetic_scenes(root, n_images=4, image_size=IMAGE_SIZE)
    return images


def forbid_opencv(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("selective search ran although the cache exists")

    monkeypatch.setattr(ss_module, "selective_search", fail)
    monkeypatch.setattr(ss_module, "_import_ximgproc", fail)


def test_boxes_cache_and_reuse(image_dir, tmp_path, monkeypatch):
    cache = tmp_path / "props.jsonl"
    source = SelectiveSearchBoxSource(image_dir, cache_file=cache, max_boxes=5, min_size=8)
    assert source.computed and cache.is_file()
    assert len(source) == 4
    assert sum(len(r.boxes) for r in source.records) > 0
    for record in source.records:
        boxes = record.boxes
        assert record.path.is_file()
        assert boxes.shape[1] == 4 and len(boxes) <= 5
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= IMAGE_SIZE).all()
        assert ((boxes[:, 2] - boxes[:, 0]) >= 8).all()
        assert ((boxes[:, 3] - boxes[:, 1]) >= 8).all()
        assert (record.labels == -1).all()
    # The cache is a plain proposals file.
    entries = [json.loads(line) for line in cache.read_text().splitlines()]
    assert {"file", "boxes"} <= set(entries[0])
    assert len(JsonBoxSource(image_dir, cache)) == 4

    mtime = cache.stat().st_mtime_ns
    forbid_opencv(monkeypatch)
    again = SelectiveSearchBoxSource(image_dir, cache_file=cache, max_boxes=5, min_size=8)
    assert not again.computed and cache.stat().st_mtime_ns == mtime
    for a, b in zip(source.records, again.records, strict=True):
        assert a.path == b.path
        np.testing.assert_array_equal(a.boxes, b.boxes)


def test_datamodule_selective_search_batch(image_dir, monkeypatch):
    datamodule = HCLDataModule(
        image_dir,
        boxes=BoxOptions(
            method="selective_search", selective_search={"max_boxes": 8, "min_size": 8}
        ),
        batch_size=2,
        object_size=32,
        scene_size=32,
        crops=CropOptions(min_object_size=4),
    )
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == BATCH_KEYS
    assert batch["object"].shape == (2, 3, 32, 32)
    assert (image_dir / DEFAULT_CACHE_NAME).is_file()
    # Default cache is reused by a later datamodule, and by build_box_source.
    forbid_opencv(monkeypatch)
    source = build_box_source(image_dir, box_method="selective_search")
    assert not source.computed and len(source) == 4


def test_filter_proposals():
    boxes = np.array(
        [
            [0, 0, 100, 100],  # whole image: too large
            [10, 10, 20, 20],  # ok
            [10, 10, 20, 20],  # duplicate
            [0, 0, 90, 5],  # too thin / elongated
            [-5, -5, 30, 30],  # clipped, ok
            [50, 50, 53, 53],  # too small
            [40, 40, 70, 60],  # ok but beyond max_boxes
        ],
        np.float32,
    )
    kept = filter_proposals(boxes, 100, 100, 2, 8, 4.0, max_area_fraction=0.9)
    np.testing.assert_array_equal(kept, [[10, 10, 20, 20], [0, 0, 30, 30]])


def test_missing_opencv_message(tmp_path, monkeypatch):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    import builtins

    real_import = builtins.__import__

    def no_cv2(name, *args, **kwargs):
        if name == "cv2" or name.startswith("cv2."):
            raise ImportError("no cv2")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cv2)
    with pytest.raises(ImportError, match="opencv-contrib-python-headless"):
        SelectiveSearchBoxSource(tmp_path)
    with pytest.raises(ValueError, match="box_method"):
        build_box_source(tmp_path, box_method="edge_boxes")
