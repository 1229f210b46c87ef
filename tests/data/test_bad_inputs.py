"""Bad input, each written into tmp_path by the test: images, annotations, skip policy."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from hcl_lightning.data import (
    BAD_IMAGE_REASONS,
    CocoBoxSource,
    DataHygieneMonitor,
    HCLDataModule,
    HCLDataset,
    HCLTransform,
    ImageOptions,
    ImageRecord,
    SceneObjectSampler,
    decode_image,
)
from hcl_lightning.data import dataset as dataset_module
from hcl_lightning.data.boxes import DROPPED_BOX_REASONS
from hcl_lightning.data.dataset import describe_unreadable
from hcl_lightning.data.images import TRANSPARENT_BACKGROUND, BadImageError, bad_image_reason
from tests.helpers import quiet_trainer

SIZE = 16  # crop side of the datasets here


def make_dataset(records, **kwargs) -> HCLDataset:
    transform = HCLTransform(object_size=SIZE, scene_size=SIZE)
    return HCLDataset(records, SceneObjectSampler(min_object_size=2), transform, **kwargs)


def good_jpeg(path, size=(48, 40), colour=(200, 30, 30)):
    Image.new("RGB", size, colour).save(path, quality=95)
    return path


def reason_of(path, **kwargs) -> str:
    with pytest.raises(Exception) as info:
        decode_image(path, **kwargs)
    return bad_image_reason(info.value)


# -- images -----------------------------------------------------------------------------
def test_unusable_files_raise_with_their_reason(tmp_path):
    assert reason_of(tmp_path / "missing.jpg") == "missing"

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert reason_of(empty) == "empty"

    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good_jpeg(tmp_path / "full.jpg", (64, 64)).read_bytes()[:400])
    assert reason_of(truncated) == "corrupt"

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    assert reason_of(garbage) == "corrupt"

    directory = tmp_path / "dir.jpg"
    directory.mkdir()
    assert reason_of(directory) == "unreadable"


def test_greyscale_cmyk_palette_and_alpha_become_rgb(tmp_path):
    grey = tmp_path / "grey.png"
    Image.new("L", (8, 6), 77).save(grey)
    image, scale = decode_image(grey)
    assert image.mode == "RGB" and image.getpixel((3, 3)) == (77, 77, 77) and scale == (1, 1)

    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(cmyk, quality=100)  # pure red
    red = np.asarray(decode_image(cmyk)[0]).reshape(-1, 3).mean(axis=0)
    assert red[0] > 230 and red[1] < 25 and red[2] < 25

    rgba = tmp_path / "rgba.png"
    pixels = Image.new("RGBA", (4, 1), (10, 250, 10, 255))
    pixels.putpixel((0, 0), (255, 255, 255, 0))  # transparent white
    pixels.save(rgba)
    image = decode_image(rgba)[0]
    assert image.getpixel((0, 0)) == TRANSPARENT_BACKGROUND
    assert image.getpixel((1, 0)) == (10, 250, 10)

    palette = tmp_path / "palette.png"
    p_image = Image.new("P", (4, 1), 1)
    p_image.putpalette([0, 0, 0, 250, 20, 20] + [0] * 762)
    p_image.putpixel((0, 0), 0)
    p_image.save(palette, transparency=0)  # index 0 is transparent
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL "palette with transparency" warning
        image = decode_image(palette)[0]
    assert image.getpixel((0, 0)) == TRANSPARENT_BACKGROUND
    assert image.getpixel((2, 0)) == (250, 20, 20)

    grey_alpha = tmp_path / "la.png"
    Image.new("LA", (3, 3), (200, 255)).save(grey_alpha)
    assert decode_image(grey_alpha)[0].getpixel((1, 1)) == (200, 200, 200)


def test_16_bit_png_is_scaled_not_white(tmp_path):
    path = tmp_path / "deep.png"
    ramp = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    naive = np.asarray(Image.open(path).convert("RGB"))[0, :, 0]
    assert naive.tolist()[1:] == [255, 255, 255]  # the bug this guards against
    image = decode_image(path)[0]
    assert np.asarray(image)[0, :, 0].tolist() == [0, 4, 128, 255]


def test_exif_rotation_is_applied_and_boxes_stay_in_the_rotated_frame(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.new("RGB", (60, 30), (0, 0, 200)).save(path, exif=exif)
    image, scale = decode_image(path)
    assert image.size == (30, 60) and scale == (1.0, 1.0)


def test_huge_png_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (10000, 10000)).save(path)  # 100 Mpx, a few kB on disk
    start = time.perf_counter()
    with pytest.raises(BadImageError) as info:
        decode_image(path)  # default budget 40 Mpx; PIL's own warning is not raised
    assert info.value.reason == "too_large" and "10000x10000" in str(info.value)
    assert time.perf_counter() - start < 2.0  # no pixel was decoded


def test_large_jpeg_is_decoded_at_reduced_scale_and_boxes_follow(tmp_path):
    path = tmp_path / "large.jpg"
    image = Image.new("RGB", (800, 400), (0, 0, 0))
    image.paste((255, 255, 255), (400, 200, 600, 300))  # white object
    image.save(path, quality=95)
    small, (sx, sy) = decode_image(path, max_pixels=20_000)
    assert small.width * small.height <= 20_000
    assert sx == pytest.approx(small.width / 800) and sy == pytest.approx(small.height / 400)

    record = ImageRecord(path, 800, 400, [[400, 200, 600, 300]], [3])
    dataset = make_dataset([record], max_image_pixels=20_000)
    sampler = dataset.sampler
    resolved = record.resolve(*small.size, scale=(sx, sy))
    np.testing.assert_allclose(
        resolved.boxes, [[400 * sx, 200 * sy, 600 * sx, 300 * sy]], rtol=1e-5
    )
    crop = sampler.sample(resolved, np.random.default_rng(0))
    region = np.asarray(small.crop(crop.object_box))
    assert region.mean() > 200  # the object region is the white object, not black
    item = dataset[0]
    assert item["object"].shape == (3, SIZE, SIZE) and item["labels"].item() == 3


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (7, 5)])
def test_tiny_images_are_upscaled_to_the_crop_size(tmp_path, size):
    path = good_jpeg(tmp_path / "tiny.png", size)
    dataset = make_dataset([ImageRecord(path, *size, [[0, 0, size[0], size[1]]], [0])])
    item = dataset[0]
    for tensor in (*item["views"], item["scene"], item["object"]):
        assert tensor.shape == (3, SIZE, SIZE) and torch.isfinite(tensor).all()
    assert not dataset.unreadable()


# -- skip policy --------------------------------------------------------------------------
def bad_folder(tmp_path):
    """12 records: 9 good images and a truncated, an empty and a missing one."""
    good = [good_jpeg(tmp_path / f"good{i}.jpg") for i in range(9)]
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:300])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    paths = [good[0], truncated, good[1], empty, tmp_path / "missing.jpg", *good[2:]]
    box = [[4, 4, 30, 30], [20, 10, 44, 36]]
    return [ImageRecord(p, 48, 40, box, [0, 1]) for p in paths]


BAD = {1: "corrupt", 3: "empty", 4: "missing"}  # indices of bad_folder's bad files


def test_a_bad_file_is_decoded_once_and_replaced_by_a_random_good_image(tmp_path, monkeypatch):
    records = bad_folder(tmp_path)
    dataset = make_dataset(records, max_bad_fraction=0.5)
    decoded = []
    real_decode = dataset_module.decode_image
    monkeypatch.setattr(
        dataset_module,
        "decode_image",
        lambda path, *a: decoded.append(path) or real_decode(path, *a),
    )
    torch.manual_seed(0)
    used = [dataset[i]["index"].item() for i in list(BAD) * 20]
    assert not set(used) & set(BAD)
    assert len(set(used)) >= 6  # drawn at random from the 9 good images, not the next one
    assert sorted(p.name for p in decoded if p in {records[i].path for i in BAD}) == [
        "empty.jpg",
        "missing.jpg",
        "truncated.jpg",
    ]  # 60 visits, one decode each
    assert [(p.name, r) for p, r in dataset.unreadable()] == [
        ("truncated.jpg", "corrupt"),
        ("empty.jpg", "empty"),
        ("missing.jpg", "missing"),
    ]


def test_workers_share_the_record_of_bad_files(tmp_path):
    dataset = make_dataset(bad_folder(tmp_path), max_bad_fraction=0.5)
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    indices = torch.cat([batch["index"] for batch in loader])
    assert len(indices) == 12 and not set(indices.tolist()) & set(BAD)
    # found in the worker processes, seen by the main process (shared memory)
    assert {
        i: BAD_IMAGE_REASONS[c - 1] for i, c in enumerate(dataset.bad_codes.tolist()) if c
    } == BAD


def test_scan_finds_bad_files_and_stops_a_mostly_bad_set_before_any_item(tmp_path):
    dataset = make_dataset(bad_folder(tmp_path), max_bad_fraction=0.25)
    dataset.scan()  # 3 of 12 = 0.25: tolerated
    assert len(dataset.unreadable()) == 3
    good = good_jpeg(tmp_path / "good.jpg")
    records = [ImageRecord(good if i % 4 == 0 else tmp_path / f"gone{i}.jpg") for i in range(40)]
    with pytest.raises(RuntimeError, match=r"30 of 40 images unreadable \(30 missing\).*gone1.jpg"):
        make_dataset(records, max_bad_fraction=0.2).scan()


def test_a_sampled_scan_stops_only_a_set_clearly_above_the_threshold(tmp_path):
    good = good_jpeg(tmp_path / "good.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image" * 10)
    at_threshold = [ImageRecord(corrupt if i % 10 == 0 else good) for i in range(200)]
    dataset = make_dataset(at_threshold, max_bad_fraction=0.1)
    dataset.scan(sample=50)  # 10 % bad: passes, the sampled bad ones are recorded
    assert 0 < len(dataset.unreadable()) < 20
    half_bad = [ImageRecord(corrupt if i % 2 else good) for i in range(1000)]
    with pytest.raises(RuntimeError, match="of a sample of 50 images were bad"):
        make_dataset(half_bad, max_bad_fraction=0.1).scan(sample=50)


class MeanModel(pl.LightningModule):
    """A tiny module that trains on the HCL batch (mean of the scene crop) and counts the
    images it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        self.seen += batch["index"].tolist()
        return self.layer(batch["scene"].mean(dim=(2, 3))).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def write_coco(path, images, annotations, categories=({"id": 1, "name": "thing"},)):
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": list(categories)})
    )
    return path


def test_adjacent_bad_files_train_with_workers_counted_once_and_not_oversampled(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    names = [f"img{i:02d}.jpg" for i in range(40)]
    for i, name in enumerate(names):
        good_jpeg(tmp_path / name, colour=(6 * i, 100, 50))
    (tmp_path / names[11]).write_bytes(b"")
    (tmp_path / names[12]).write_bytes((tmp_path / names[0]).read_bytes()[:300])
    (tmp_path / names[13]).unlink()  # listed, missing
    images = [{"id": i, "file_name": n, "width": 48, "height": 40} for i, n in enumerate(names)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 30, 30]} for i in range(40)]
    datamodule = HCLDataModule(
        tmp_path,
        ann_file=write_coco(tmp_path / "ann.json", images, anns),
        batch_size=8,
        object_size=SIZE,
        scene_size=SIZE,
        loader={"num_workers": 2, "persistent_workers": False},
    )
    monitor, model = DataHygieneMonitor(), MeanModel()
    pl.seed_everything(0, verbose=False)
    trainer = quiet_trainer(max_epochs=3, callbacks=[monitor])
    trainer.fit(model, datamodule=datamodule)

    assert trainer.current_epoch == 3 and len(model.seen) == 3 * 40
    counts = Counter(model.seen)
    assert not set(counts) & {11, 12, 13}
    # each good image: once per epoch, plus its share of the 9 replaced visits (3 x 3
    # bad files, drawn uniformly from the 37 good ones); with "the next index" img14
    # would have been drawn 12 times
    assert max(counts.values()) <= 3 + 2 and len(counts) == 37
    first = ", ".join(
        f"{tmp_path / names[i]} ({r})" for i, r in ((11, "empty"), (12, "corrupt"), (13, "missing"))
    )
    assert monitor.summary == (
        f"3 of 40 images unreadable (1 missing, 1 empty, 1 corrupt), skipped; first: {first}"
    )
    assert caplog.text.count("images unreadable") == 1
    assert trainer.callback_metrics["data/unreadable"] == 3


def test_monitor_summarises_dropped_boxes(tmp_path):
    good = [good_jpeg(tmp_path / f"g{i}.jpg") for i in range(6)]
    (tmp_path / "c.jpg").write_bytes(b"not an image at all")
    names = ["g0.jpg", "g1.jpg", "g2.jpg", "c.jpg", "g3.jpg", "g4.jpg", "g5.jpg"]
    images = [{"id": i, "file_name": n, "width": 48, "height": 40} for i, n in enumerate(names)]
    anns = [
        {"id": 1, "image_id": 0, "category_id": 1, "bbox": [2, 2, 20, 20], "iscrowd": 1},
        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [2, 2, 20, 20]},
        {"id": 3, "image_id": 3, "category_id": 1, "bbox": [2, 2, 20, 20]},
    ]
    datamodule = HCLDataModule(
        tmp_path,
        ann_file=write_coco(tmp_path / "ann.json", images, anns),
        batch_size=3,
        object_size=SIZE,
        scene_size=SIZE,
        images=ImageOptions(max_bad_fraction=0.5),
    )
    monitor = DataHygieneMonitor()
    quiet_trainer(max_steps=2, callbacks=[monitor]).fit(MeanModel(), datamodule=datamodule)
    assert good and monitor.summary == (
        f"1 of 7 images unreadable (1 corrupt), skipped; first: {tmp_path / 'c.jpg'} (corrupt); "
        "dropped 2 annotation boxes: 1 crowd, 1 unknown_category"
    )


def test_summary_format():
    bad = [
        (Path(f"/d/{i}.jpg"), r) for i, r in enumerate(["corrupt", "missing", "corrupt", "empty"])
    ]
    assert describe_unreadable(bad, 1200) == (
        "4 of 1200 images unreadable (1 missing, 1 empty, 2 corrupt), skipped; "
        "first: /d/0.jpg (corrupt), /d/1.jpg (missing), /d/2.jpg (corrupt)"
    )
    assert describe_unreadable([], 10) == "0 of 10 images unreadable"


# -- annotations ----------------------------------------------------------------------------
def test_bad_annotations_are_dropped_and_counted(tmp_path):
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
        {"id": 2, "file_name": "b.jpg", "width": 50, "height": 50},
        {"id": 1, "file_name": "dup.jpg", "width": 10, "height": 10},  # duplicate id
    ]
    box = {"image_id": 1, "category_id": 1}
    anns = [
        {**box, "id": 1, "bbox": [10, 10, 30, 30]},  # good
        {**box, "id": 2, "bbox": [10, 10, 0, 30]},  # zero width
        {**box, "id": 3, "bbox": [10, 10, 20, -5]},  # negative height
        {**box, "id": 4, "bbox": [90, 70, 30, 30]},  # partly outside: clipped
        {**box, "id": 5, "bbox": [150, 10, 10, 10]},  # wholly outside
        {**box, "id": 6, "bbox": [-40, -40, 10, 10]},  # wholly outside (negative)
        {**box, "id": 7, "bbox": [math.nan, 1, 5, 5]},
        {**box, "id": 8, "bbox": [1, 1, math.inf, 5]},
        {**box, "id": 9, "bbox": [1, 1, None, 5]},  # null -> NaN
        {**box, "id": 10, "bbox": [1, 1, 40, 40], "iscrowd": 1},
        {**box, "id": 11, "bbox": [1, 1, 40, 40], "category_id": 42},  # unknown category
        {**box, "id": 12, "bbox": [1, 1, 40, 40], "image_id": 77},  # unknown image
    ]
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]})
    )
    with pytest.warns(UserWarning, match="duplicate image ids.*\\[1\\]"):
        source = CocoBoxSource(tmp_path, ann_file)
    assert [r.path.name for r in source.records] == ["a.jpg", "b.jpg"]
    assert source.duplicate_image_ids == [1]
    np.testing.assert_allclose(source.records[0].boxes, [[10, 10, 40, 40], [90, 70, 100, 80]])
    assert source.stats == {
        "crowd": 1,
        "non_finite": 3,
        "empty": 2,
        "outside": 2,
        "too_small": 0,
        "unknown_image": 1,
        "unknown_category": 1,
        "clipped": 1,
        "duplicate_image": 1,
    }
    assert source.dropped_boxes == 10 == len(anns) - 2  # every dropped box is counted


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("this is { not json", "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object"),
        (json.dumps({"annotations": []}), "'images'"),
        (json.dumps({"images": []}), "'annotations'"),
        (json.dumps({"images": {}, "annotations": []}), "'images' must be a list"),
        (
            json.dumps(
                {
                    "images": [{"id": "x", "file_name": "a", "width": 1, "height": 1}],
                    "annotations": [],
                }
            ),
            "non-integer 'id'",
        ),
        (
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "a", "width": 0, "height": 1}],
                    "annotations": [],
                }
            ),
            "image 1 has size 0x1",
        ),
        (
            json.dumps(
                {
                    "images": [],
                    "annotations": [{"image_id": 1, "category_id": None, "bbox": [0, 0, 1, 1]}],
                }
            ),
            "non-integer 'category_id'",
        ),
        (
            json.dumps(
                {"images": [], "annotations": [{"image_id": 1, "category_id": 1, "bbox": "0011"}]}
            ),
            "'bbox' must be",
        ),
    ],
)
def test_malformed_annotation_files_name_file_and_problem(tmp_path, content, match):
    ann_file = tmp_path / "broken.json"
    ann_file.write_text(content)
    with pytest.raises(ValueError, match=f"broken.json.*{match}"):
        CocoBoxSource(tmp_path, ann_file)


@pytest.mark.parametrize("n_boxes", [0, 1])
def test_images_with_zero_or_one_usable_box_fall_back(tmp_path, n_boxes):
    path = good_jpeg(tmp_path / "img.jpg", (64, 48))
    boxes = [[10, 10, 30, 30]][:n_boxes] + [[0, 0, 0.5, 0.5]]  # the second is too small
    record = ImageRecord(path, 64, 48, boxes, [5] * len(boxes))
    dataset = make_dataset([record])
    for _ in range(5):
        item = dataset[0]
        assert item["scene"].shape == (3, SIZE, SIZE)
        if n_boxes == 0:  # random object region, unknown label
            assert item["labels"].item() == -1
        else:  # the box, in a larger random scene around it
            assert item["labels"].item() == 5 and item["n_objects"].item() >= 1


# -- fuzzing the COCO reader -> resolve -> sampler ------------------------------------------
number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-(10**6), 10**6),
    st.sampled_from([None, "3", True, [1]]),
)
plausible = st.tuples(
    st.floats(-20, 400), st.floats(-20, 400), st.floats(0.5, 300), st.floats(0.5, 300)
).map(list)
special = st.lists(
    st.one_of(st.floats(-50, 450), st.sampled_from([0.0, -1.0, math.nan, math.inf, 1e30])),
    min_size=4,
    max_size=4,
)
garbage = st.one_of(st.lists(number, min_size=0, max_size=5), number)


@st.composite
def coco_files(draw):
    n_images = draw(st.integers(1, 4))
    ids = draw(st.lists(st.integers(0, 5), min_size=n_images, max_size=n_images))
    images = [
        {
            "id": i,
            "file_name": f"{k}.jpg",
            "width": draw(st.integers(1, 400)),
            "height": draw(st.integers(1, 400)),
        }
        for k, i in enumerate(ids)
    ]
    # a third of the files may hold malformed boxes; the others only readable ones
    bbox = (
        st.one_of(plausible, special, garbage)
        if draw(st.integers(0, 2)) == 0
        else (st.one_of(plausible, plausible, special))
    )
    image_id = st.one_of(st.sampled_from(ids), st.integers(0, 6)) if ids else st.integers(0, 6)
    anns = [
        {
            "id": k,
            "image_id": draw(image_id),
            "category_id": draw(st.integers(0, 3)),
            "bbox": draw(bbox),
            "iscrowd": draw(st.sampled_from([0, 0, 0, 1])),
        }
        for k in range(draw(st.integers(0, 10)))
    ]
    categories = [{"id": c, "name": str(c)} for c in range(draw(st.integers(1, 3)))]
    return {"images": images, "annotations": anns, "categories": categories}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    coco=coco_files(),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([(1.0, 1.0), (0.5, 0.5), (0.13, 0.2)]),
)
def test_coco_reader_and_sampler_fuzz(tmp_path_factory, coco, seed, scale):
    directory = tmp_path_factory.mktemp("fuzz", numbered=True)
    ann_file = directory / "ann.json"
    ann_file.write_text(json.dumps(coco))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # duplicate ids
            source = CocoBoxSource(directory, ann_file)
    except ValueError as err:  # the only documented error for a readable file
        assert "ann.json" in str(err)
        event("ValueError")
        return
    n_boxes = sum(len(r.boxes) for r in source.records)
    event("read, with boxes" if n_boxes else "read, no box kept")
    n_counted = sum(source.stats[r] for r in DROPPED_BOX_REASONS)
    assert n_boxes + n_counted == len(coco["annotations"])  # nothing silently dropped
    sampler = SceneObjectSampler(min_object_size=4)
    rng = np.random.default_rng(seed)
    for record in source.records:
        width = max(1, round(record.width * scale[0]))
        height = max(1, round(record.height * scale[1]))
        resolved = record.resolve(width, height, scale=scale)
        assert np.isfinite(resolved.boxes).all()
        crop = sampler.sample(resolved, rng)
        (ox1, oy1, ox2, oy2), (sx1, sy1, sx2, sy2) = crop.object_box, crop.scene_box
        assert 0 <= sx1 <= ox1 < ox2 <= sx2 <= width and 0 <= sy1 <= oy1 < oy2 <= sy2 <= height
        assert crop.n_objects >= (1 if crop.box_index >= 0 else 0)
