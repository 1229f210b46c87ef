"""The held-out scene family of ``benchmarks/heldout_scenes.py`` (evaluation only)."""

from __future__ import annotations

import importlib
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from hcl_lightning.analysis.embed import read_coco
from hcl_lightning.data import CocoBoxSource, CropOptions, HCLDataModule
from hcl_lightning.data.synthetic import CATEGORY_IDS

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
heldout = importlib.import_module("heldout_scenes")

ARGS = {"n_images": 8, "image_size": 64, "seed": 3, "ooc_fraction": 0.25}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, Path, dict]:
    image_dir, ann_file = heldout.make_heldout_scenes(tmp_path_factory.mktemp("heldout"), **ARGS)
    return image_dir, ann_file, json.loads(ann_file.read_text())


def snapshot(image_dir: Path, ann_file: Path) -> tuple[bytes, dict[str, bytes]]:
    return ann_file.read_bytes(), {p.name: p.read_bytes() for p in sorted(image_dir.iterdir())}


def test_same_seed_same_bytes_other_seed_other_scenes(scenes, tmp_path) -> None:
    first = snapshot(*scenes[:2])
    again = snapshot(*heldout.make_heldout_scenes(tmp_path / "again", **ARGS))
    other = snapshot(*heldout.make_heldout_scenes(tmp_path / "other", **{**ARGS, "seed": 4}))
    assert first == again
    assert first[0] != other[0] and first[1] != other[1]


def test_boxes_inside_and_objects_per_image(scenes) -> None:
    _, _, coco = scenes
    size = ARGS["image_size"]
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    assert len(coco["images"]) == ARGS["n_images"]
    for image in coco["images"]:
        assert 2 <= image["num_objects"] == per_image[image["id"]] <= 6
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert w >= 3 and h >= 3 and a["area"] == w * h
        assert x >= 0 and y >= 0 and x + w <= size and y + h <= size


def test_out_of_context_flags(scenes) -> None:
    _, _, coco = scenes
    typical = {c["id"]: set(c["category_ids"]) for c in coco["contexts"]}
    context = {im["id"]: im["context_id"] for im in coco["images"]}
    flagged = Counter()
    for a in coco["annotations"]:
        is_typical = a["category_id"] in typical[context[a["image_id"]]]
        assert a["out_of_context"] == (not is_typical)
        flagged[a["image_id"]] += a["out_of_context"]
    assert sorted(n for n in flagged.values() if n) == [1, 1]  # round(0.25 * 8) images, one each


def test_categories_disjoint_from_the_training_family(scenes) -> None:
    _, _, coco = scenes
    ids = [c["id"] for c in coco["categories"]]
    assert ids == sorted(ids) and len(ids) == 15 and not set(ids) & set(CATEGORY_IDS)
    assert {a["category_id"] for a in coco["annotations"]} <= set(ids)
    assert len(coco["contexts"]) == 5
    source = (BENCHMARKS / "heldout_scenes.py").read_text()
    assert "from hcl_lightning" not in source and "import hcl_lightning" not in source


def test_reads_as_coco_data(scenes) -> None:
    image_dir, ann_file, coco = scenes
    images = read_coco(image_dir, ann_file)
    assert sum(len(im.boxes) for im in images) == len(coco["annotations"])
    assert sum(int(im.out_of_context.sum()) for im in images) == 2
    assert CocoBoxSource(image_dir, ann_file).category_ids == [c["id"] for c in coco["categories"]]
    datamodule = HCLDataModule(
        image_dir,
        ann_file=ann_file,
        batch_size=4,
        object_size=32,
        scene_size=32,
        crops=CropOptions(min_object_size=4),
    )
    assert datamodule.num_classes == 15
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["labels"].shape[0] == 4 and (batch["n_objects"] >= 2).all()


def test_cli(tmp_path, capsys) -> None:
    assert (
        heldout.main(["--out", str(tmp_path), "--images", "2", "--size", "32", "--seed", "1"]) == 0
    )
    assert len(list((tmp_path / "images").iterdir())) == 2
    assert "ann_file=" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        heldout.main(["--out", str(tmp_path), "--ooc-fraction", "2"])


def test_reproduce_family_option(tmp_path) -> None:
    reproduce = importlib.import_module("reproduce")
    args = reproduce.parse_args(["--family", "heldout", "--quick", "--data-root", str(tmp_path)])
    assert args.family == "heldout" and reproduce.parse_args([]).family == "synthetic"
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--family", "heldout", "--random-colours"])
    args.train_images = 4
    overrides = reproduce.data_overrides(args)
    assert overrides[:2] == ["~data.synthetic", "~data.val_synthetic"]
    assert f"data.image_dir={(tmp_path / 'heldout-train' / 'images').resolve()}" in overrides
