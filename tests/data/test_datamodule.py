import json
from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

import hcl_lightning.conf
from hcl_lightning.data import (
    BoxOptions,
    CocoBoxSource,
    CropOptions,
    HCLDataModule,
    HCLDataset,
    HCLTransform,
    ImageOptions,
    ImageRecord,
    LoaderOptions,
    SceneObjectSampler,
    make_synthetic_scenes,
)
from hcl_lightning.data.dataset import MAX_SCENE_LABELS, TooManyBadImagesError
from hcl_lightning.data.images import DEFAULT_MAX_IMAGE_PIXELS, load_image
from hcl_lightning.data.synthetic import prepare_synthetic_data
from tests.helpers import compose_config, tiny_overrides

N_IMAGES = 24


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_scenes(
        tmp_path_factory.mktemp("synthetic"), n_images=N_IMAGES, image_size=64
    )


def make_dataset(records, **kwargs):
    transform = HCLTransform(object_size=32, scene_size=40)
    return HCLDataset(records, SceneObjectSampler(min_object_size=4), transform, **kwargs)


def check_batch(batch, batch_size, object_size, scene_size):
    keys = {"views", "scene", "object", "n_objects", "labels", "scene_labels", "index"}
    assert set(batch) == keys
    assert batch["scene_labels"].shape == (batch_size, MAX_SCENE_LABELS)
    # the object's own class is among its scene's classes; -1 pads past n_objects
    for row, label, n in zip(
        batch["scene_labels"], batch["labels"], batch["n_objects"], strict=True
    ):
        assert (row[n:] == -1).all()
        assert label < 0 or label in row[:n].tolist()
    assert isinstance(batch["views"], list) and len(batch["views"]) == 2
    for view in batch["views"]:
        assert view.shape == (batch_size, 3, object_size, object_size)
        assert view.dtype == torch.float32
    assert batch["object"].shape == (batch_size, 3, object_size, object_size)
    assert batch["scene"].shape == (batch_size, 3, scene_size, scene_size)
    for key in ("n_objects", "labels", "index"):
        assert batch[key].shape == (batch_size,) and batch[key].dtype == torch.int64


def test_dataset_item_and_default_collate(synthetic):
    source = CocoBoxSource(*synthetic)
    dataset = make_dataset(source.records)
    item = dataset[5]
    assert item["index"].item() == 5
    assert item["n_objects"].item() >= 1
    assert 0 <= item["labels"].item() < source.num_classes
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    check_batch(batch, 4, 32, 40)
    assert batch["index"].tolist() == [0, 1, 2, 3]
    assert not dataset.unreadable()


def test_dataset_skips_and_counts_bad_images(synthetic, tmp_path):
    records = CocoBoxSource(*synthetic).records
    truncated, garbage, missing = tmp_path / "t.jpg", tmp_path / "g.jpg", tmp_path / "m.jpg"
    truncated.write_bytes(records[3].path.read_bytes()[:300])
    garbage.write_bytes(b"this is not a jpeg" * 10)
    for i, path in ((3, truncated), (7, garbage), (10, missing)):
        records[i] = ImageRecord(path, 64, 64, records[i].boxes, records[i].labels)
    dataset = make_dataset(records, max_bad_fraction=0.5)

    items = [dataset[i] for i in range(len(dataset))]
    assert dataset.unreadable() == [
        (truncated, "corrupt"),
        (garbage, "corrupt"),
        (missing, "missing"),
    ]
    assert {item["index"].item() for item in items}.isdisjoint({3, 7, 10})  # replaced


def test_dataset_gives_up_when_too_many_images_are_bad(synthetic, tmp_path):
    good = CocoBoxSource(*synthetic).records
    records = [
        ImageRecord(tmp_path / f"missing_{i}.jpg") if i % 3 == 0 else good[i % len(good)]
        for i in range(30)
    ]
    dataset = make_dataset(records, max_bad_fraction=0.1)
    with pytest.raises(RuntimeError, match="missing_0.jpg"):
        for i in range(len(dataset)):
            dataset[i]

    all_bad = make_dataset([ImageRecord(tmp_path / "gone.jpg")] * 3, max_bad_fraction=1.0)
    with pytest.raises(TooManyBadImagesError, match="none readable; first: .*gone.jpg"):
        all_bad[0]


def test_load_image_applies_exif_orientation_and_rgb(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    Image.new("L", (40, 20), 128).save(path, exif=exif)
    image = load_image(path)
    assert image.size == (20, 40) and image.mode == "RGB"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_datamodule_batch_from_coco(synthetic, num_workers):
    image_dir, ann_file = synthetic
    datamodule = HCLDataModule(
        image_dir,
        ann_file=ann_file,
        batch_size=8,
        object_size=32,
        scene_size=48,
        loader=LoaderOptions(num_workers=num_workers),
        crops=CropOptions(min_object_size=4),
    )
    assert datamodule.batch_size == 8
    assert datamodule.num_classes == 8 and len(datamodule.class_names) == 8
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert loader.drop_last and len(loader) == N_IMAGES // 8
    assert loader.persistent_workers == (num_workers > 0)
    batch = next(iter(loader))
    check_batch(batch, 8, 32, 48)
    assert (batch["n_objects"] >= 1).all()
    assert ((batch["labels"] >= 0) & (batch["labels"] < 8)).all()
    assert len(set(batch["index"].tolist())) == 8


def test_datamodule_with_random_boxes_and_proposals(synthetic, tmp_path):
    image_dir, _ = synthetic
    random_boxes = HCLDataModule(image_dir, batch_size=4, object_size=32, scene_size=32)
    assert random_boxes.num_classes is None and random_boxes.class_names is None
    batch = next(iter(random_boxes.train_dataloader()))
    check_batch(batch, 4, 32, 32)
    assert (batch["labels"] == -1).all()

    proposals = tmp_path / "proposals.jsonl"
    lines = [
        {"file": f"{i:06d}.jpg", "boxes": [[4, 4, 30, 30], [30, 30, 60, 60]]} for i in range(6)
    ]
    proposals.write_text("\n".join(json.dumps(line) for line in lines))
    from_proposals = HCLDataModule(image_dir, proposals=proposals, batch_size=6, object_size=32)
    batch = next(iter(from_proposals.train_dataloader()))
    check_batch(batch, 6, 32, 64)
    assert ((batch["n_objects"] >= 1) & (batch["n_objects"] <= 2)).all()


def test_datamodule_validates_arguments(synthetic, tmp_path):
    image_dir, ann_file = synthetic
    with pytest.raises(FileNotFoundError, match="image_dir.*no_such_dir"):
        HCLDataModule(tmp_path / "no_such_dir")
    with pytest.raises(FileNotFoundError, match="ann_file.*no_such.json"):
        HCLDataModule(image_dir, ann_file=tmp_path / "no_such.json")
    for name, value in [("batch_size", 0), ("object_size", 0)]:
        with pytest.raises(ValueError, match=f"{name} must be an integer >= "):
            HCLDataModule(image_dir, ann_file=ann_file, **{name: value})
    with pytest.raises(ValueError, match="num_workers must be an integer >= "):
        HCLDataModule(image_dir, ann_file=ann_file, loader={"num_workers": -1})
    with pytest.raises(ValueError, match="max_bad_fraction"):
        HCLDataModule(image_dir, images=ImageOptions(max_bad_fraction=1.5))
    with pytest.raises(ValueError, match="ann_file and proposals"):
        HCLDataModule(image_dir, ann_file=ann_file, proposals=ann_file)
    with pytest.raises(ValueError, match="fused_color_jitter must be True or False, got 'yes'"):
        HCLDataModule(image_dir, ann_file=ann_file, crops={"fused_color_jitter": "yes"})
    with pytest.raises(ValueError, match="method must be one of"):
        HCLDataModule(image_dir, boxes=BoxOptions(method="edge_boxes"))
    with pytest.raises(TypeError, match="LoaderOptions or a mapping"):
        HCLDataModule(image_dir, loader=4)
    too_big = HCLDataModule(image_dir, ann_file=ann_file, batch_size=N_IMAGES + 1)
    with pytest.raises(ValueError, match="batch_size"):
        too_big.setup("fit")


def test_samples_are_reproducible_with_seed_everything(synthetic):
    dataset = make_dataset(CocoBoxSource(*synthetic).records)
    samples = []
    for _ in range(2):
        pl.seed_everything(3, verbose=False)
        samples.append([dataset[i] for i in range(4)])
    for first, again in zip(*samples, strict=True):
        for key in ("scene", "object", "n_objects", "labels", "index"):
            assert torch.equal(first[key], again[key])
        assert all(torch.equal(a, b) for a, b in zip(first["views"], again["views"], strict=True))


@pytest.mark.parametrize(
    ("overrides", "pin_memory", "persistent_workers"),
    [
        ([], torch.cuda.is_available(), False),  # null: CUDA; no workers: not persistent
        (
            [
                "data.loader.pin_memory=true",
                "data.loader.persistent_workers=false",
                "data.loader.num_workers=2",
            ],
            True,
            False,
        ),
        (["data.loader.pin_memory=false", "data.loader.num_workers=2"], False, True),
    ],
)
def test_config_sets_pin_memory_and_persistent_workers(
    tmp_path, monkeypatch, overrides, pin_memory, persistent_workers
):
    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_config([*tiny_overrides(tmp_path), *overrides])
    prepare_synthetic_data(cfg)
    loader = hydra.utils.instantiate(cfg.data, _convert_="all").train_dataloader()
    assert loader.pin_memory is pin_memory
    assert loader.persistent_workers is persistent_workers


@pytest.mark.parametrize("name", ["coco", "folder", "synthetic"])
def test_data_configs_expose_loader_settings(name):
    conf = OmegaConf.load(Path(hcl_lightning.conf.__file__).parent / "data" / f"{name}.yaml")
    assert conf.loader.pin_memory is None and conf.loader.persistent_workers is True
    assert conf.crops.fused_color_jitter is False
    assert conf.images.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS


def test_config_switches_the_scene_and_object_jitter(tmp_path, monkeypatch):
    from hcl_lightning.data.color import FusedColorJitter

    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_config([*tiny_overrides(tmp_path), "data.crops.fused_color_jitter=true"])
    prepare_synthetic_data(cfg)
    transform = hydra.utils.instantiate(cfg.data, _convert_="all").transform
    assert isinstance(transform.scene.color_jitter, FusedColorJitter)
    assert isinstance(transform.object.color_jitter, FusedColorJitter)
    views = transform.views.transforms[0].transform.transforms  # lightly's, untouched
    assert any("ColorJitter(" in repr(step) for step in views)
    assert not any("Fused" in repr(step) for step in views)
