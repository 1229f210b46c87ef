import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcl_lightning.data import CropSpec, ImageRecord, SceneObjectSampler


def brute_force_count(boxes, width, height, scene):
    """n_objects by definition: clipped non-empty boxes at least half inside the scene."""
    count = 0
    for x1, y1, x2, y2 in boxes:
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            continue
        x1, x2 = min(max(x1, 0), width), min(max(x2, 0), width)
        y1, y2 = min(max(y1, 0), height), min(max(y2, 0), height)
        area = (x2 - x1) * (y2 - y1)
        if x2 <= x1 or y2 <= y1:
            continue
        inter_w = max(0.0, min(x2, scene[2]) - max(x1, scene[0]))
        inter_h = max(0.0, min(y2, scene[3]) - max(y1, scene[1]))
        count += inter_w * inter_h >= 0.5 * area
    return count


def contains(outer, inner):
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and outer[2] >= inner[2]
        and outer[3] >= inner[3]
    )


def check_box(box, width, height):
    assert all(isinstance(v, int) for v in box)
    x1, y1, x2, y2 = box
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


coord = st.one_of(
    st.floats(-50, 350, allow_nan=False),
    st.sampled_from([math.nan, math.inf, 0.0, 10.0]),
)


@st.composite
def records(draw):
    width = draw(st.integers(1, 300))
    height = draw(st.integers(1, 300))
    n = draw(st.integers(0, 8))
    boxes = []
    for _ in range(n):
        x1, y1 = draw(coord), draw(coord)
        kind = draw(st.sampled_from(["normal", "degenerate", "any"]))
        if kind == "normal" and math.isfinite(x1) and math.isfinite(y1):
            boxes.append([x1, y1, x1 + draw(st.floats(0.5, 200)), y1 + draw(st.floats(0.5, 200))])
        elif kind == "degenerate":
            boxes.append([x1, y1, x1, y1 + 5])
        else:
            boxes.append([x1, y1, draw(coord), draw(coord)])
    labels = list(range(n))
    return ImageRecord("x.jpg", width, height, np.array(boxes, dtype=np.float32), labels)


@settings(max_examples=300, deadline=None)
@given(
    record=records(),
    seed=st.integers(0, 2**32 - 1),
    min_object_size=st.sampled_from([0.0, 1.0, 8.0, 32.0]),
    jitter=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_sampler_invariants(record, seed, min_object_size, jitter):
    sampler = SceneObjectSampler(min_object_size=min_object_size, context_jitter=jitter)
    crop = sampler.sample(record, np.random.default_rng(seed))
    width, height = record.width, record.height

    check_box(crop.object_box, width, height)
    check_box(crop.scene_box, width, height)
    assert contains(crop.scene_box, crop.object_box)
    boxes = record.boxes.astype(np.float64).tolist()
    assert crop.n_objects == brute_force_count(boxes, width, height, crop.scene_box)
    if crop.box_index >= 0:
        assert crop.label == record.labels[crop.box_index]
        assert crop.n_objects >= 1
        x1, y1, x2, y2 = np.clip(boxes[crop.box_index], 0, [width, height, width, height])
        assert x2 - x1 >= min_object_size and y2 - y1 >= min_object_size
        assert contains(crop.object_box, (x1, y1, x2, y2))
    else:
        assert crop.label == -1


def test_sampler_is_deterministic_given_rng():
    record = ImageRecord(
        "x.jpg", 200, 100, [[0, 0, 20, 20], [50, 50, 90, 90], [100, 0, 150, 30]], [0, 1, 2]
    )
    sampler = SceneObjectSampler()
    a = [sampler.sample(record, np.random.default_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert isinstance(a[0], CropSpec)


def test_scene_is_union_of_object_and_other_boxes():
    boxes = [[10, 10, 20, 20], [50, 40, 60, 70], [100, 5, 120, 15]]
    record = ImageRecord("x.jpg", 200, 100, boxes, [0, 1, 2])
    sampler = SceneObjectSampler(min_object_size=1, context_jitter=0.0, scene_extra_boxes=(5, 5))
    for seed in range(20):
        crop = sampler.sample(record, np.random.default_rng(seed))
        assert crop.object_box == tuple(boxes[crop.box_index])
        assert crop.scene_box == (10, 5, 120, 70)  # capped: all 2 other boxes are used
        assert crop.n_objects == 3 and sorted(crop.scene_labels) == [0, 1, 2]


def test_single_box_scene_is_a_larger_region_around_it():
    record = ImageRecord("x.jpg", 400, 400, [[180, 180, 200, 210]], [4])
    sampler = SceneObjectSampler(context_jitter=0.0, scene_fallback_scale=(2.0, 2.5))
    for seed in range(20):
        crop = sampler.sample(record, np.random.default_rng(seed))
        assert crop.object_box == (180, 180, 200, 210) and crop.label == 4
        scene_w = crop.scene_box[2] - crop.scene_box[0]
        scene_h = crop.scene_box[3] - crop.scene_box[1]
        assert 40 <= scene_w <= 51 and 60 <= scene_h <= 76
        assert contains(crop.scene_box, crop.object_box)
        assert crop.n_objects == 1 and crop.scene_labels == (4,)


def test_small_boxes_are_not_objects_but_are_counted():
    record = ImageRecord("x.jpg", 100, 100, [[10, 10, 12, 12], [40, 40, 80, 80]], [0, 1])
    sampler = SceneObjectSampler(min_object_size=8, context_jitter=0.0, scene_extra_boxes=(1, 1))
    crop = sampler.sample(record, np.random.default_rng(0))
    assert crop.box_index == 1 and crop.label == 1


@pytest.mark.parametrize("size", [(1, 1), (3, 200), (64, 48), (500, 300)])
def test_image_without_usable_box_gets_random_object_region(size):
    width, height = size
    record = ImageRecord("x.jpg", width, height)
    sampler = SceneObjectSampler()
    for seed in range(30):
        crop = sampler.sample(record, np.random.default_rng(seed))
        assert (crop.label, crop.box_index, crop.n_objects) == (-1, -1, 0)
        check_box(crop.object_box, width, height)
        check_box(crop.scene_box, width, height)
        assert contains(crop.scene_box, crop.object_box)
        if min(width, height) >= 48:
            area = (crop.object_box[2] - crop.object_box[0]) * (
                crop.object_box[3] - crop.object_box[1]
            )
            assert 0.08 <= area / (width * height) <= 0.55


def test_sampler_rejects_unknown_size_and_bad_arguments():
    with pytest.raises(ValueError, match="resolve"):
        SceneObjectSampler().sample(ImageRecord("x.jpg"), np.random.default_rng(0))
    with pytest.raises(ValueError, match="min_object_size"):
        SceneObjectSampler(min_object_size=-1)
    with pytest.raises(ValueError, match="scene_extra_boxes"):
        SceneObjectSampler(scene_extra_boxes=(3, 1))
    with pytest.raises(ValueError, match="scene_fallback_scale"):
        SceneObjectSampler(scene_fallback_scale=(0.5, 2.0))


def test_to_pixels_rounds_outwards_inside_the_image() -> None:
    from hcl_lightning.data.crops import to_pixels

    assert to_pixels(np.array([1.2, 2.7, 5.1, 6.0]), 10, 10) == (1, 2, 6, 6)
    assert to_pixels(np.array([-3.0, 4.5, 12.4, 4.6]), 10, 8) == (0, 4, 10, 5)  # >= 1 px
    assert to_pixels(np.array([10.0, 8.0, 10.0, 8.0]), 10, 8) == (9, 7, 10, 8)
