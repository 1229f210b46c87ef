"""hcl-analyze linear / knn: labelled splits, the feature cache, the Lightning linear
classifier, and both commands on COCO crops and on an ImageFolder set the test writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hcl_lightning.analysis.cli import main
from hcl_lightning.analysis.evaluate import coco_crop_split, folder_split, train_linear
from hcl_lightning.analysis.probes import knn_accuracy, topk_accuracy
from tests.helpers import write_image_folder


def run(argv: list[str], capsys) -> dict[str, str]:
    assert main(argv) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def coco_args(tiny_fit, out: Path) -> list[str]:
    return [
        f"checkpoint={tiny_fit.checkpoint}",
        "data=coco",
        f"data.image_dir={tiny_fit.image_dir}",
        f"data.ann_file={tiny_fit.ann_file}",
        f"out={out}",
        "image_size=32",
        "device=cpu",
    ]


def test_topk_accuracy_caps_k_at_the_class_count():
    ranked = torch.tensor([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    result = topk_accuracy(ranked, torch.tensor([2, 0, 1]), ks=(1, 2, 5))
    assert result == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(2 / 3), "top5": 1.0}


def test_coco_crop_split_is_by_image_and_keeps_every_box(tiny_fit):
    split = coco_crop_split(tiny_fit.image_dir, tiny_fit.ann_file, 32, val_fraction=0.25)
    assert not set(split.files["train"]) & set(split.files["val"])
    assert len(split.files["train"]) == 12 and len(split.files["val"]) == 4
    n_boxes = len(json.loads(tiny_fit.ann_file.read_text())["annotations"])
    assert split.train.num_crops + split.val.num_crops == n_boxes
    again = coco_crop_split(tiny_fit.image_dir, tiny_fit.ann_file, 32, val_fraction=0.25)
    assert again.files == split.files  # seeded
    with pytest.raises(ValueError, match="non-empty"):
        coco_crop_split(tiny_fit.image_dir, tiny_fit.ann_file, 32, val_fraction=0.01)


def test_separate_val_file_is_matched_by_category_id(tiny_fit, tmp_path):
    """A val file without the first category has other contiguous ids: its classes must
    be mapped to the training file's by COCO id."""
    data = json.loads(tiny_fit.ann_file.read_text())
    first = min(c["id"] for c in data["categories"])
    data["categories"] = [c for c in data["categories"] if c["id"] != first]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != first]
    val_file = tmp_path / "val.json"
    val_file.write_text(json.dumps(data))
    split = coco_crop_split(tiny_fit.image_dir, tiny_fit.ann_file, 32, tiny_fit.image_dir, val_file)
    ids = sorted(c["id"] for c in json.loads(tiny_fit.ann_file.read_text())["categories"])
    val_ids = {ids[label] for _, _, labels in split.val.items for label in labels}
    expected = {a["category_id"] for a in data["annotations"]}
    assert val_ids == expected and first not in val_ids


def test_folder_split_reads_the_imagefolder_layout(tmp_path):
    root = write_image_folder(tmp_path / "set")
    split = folder_split(root, 32, val_fraction=0.2)
    assert split.class_names == ["blue", "green", "red"]
    assert len(split.files["train"]) == 12 and len(split.files["val"]) == 3
    crops, labels = split.val[0]
    assert crops.shape == (1, 3, 32, 32)
    assert split.class_names[int(labels[0])] == Path(split.files["val"][0]).parent.name
    with pytest.raises(ValueError, match="class folders"):
        folder_split(root / "red", 32)


@pytest.mark.parametrize("optimizer, lr, epochs", [("sgd", 0.1, 20), ("lbfgs", 1.0, 3)])
def test_linear_classifier_learns_separable_features(tmp_path, optimizer, lr, epochs):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16)) * 3

    def blobs(n):
        y = rng.integers(6, size=n)
        x = centres[y] + 0.3 * rng.normal(size=(n, 16))
        return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)

    (train_x, train_y), (val_x, val_y) = blobs(120), blobs(60)
    features = {"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}
    model, accuracy = train_linear(
        features,
        6,
        tmp_path,
        optimizer=optimizer,
        epochs=epochs,
        lr=lr,
        batch_size=32,
        progress_bar=False,
    )
    assert accuracy == {"top1": 1.0, "top5": 1.0}
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < 0.5 * losses[0]  # it trained
    assert float([r for r in rows if r.get("val/top1")][-1]["val/top1"]) == 1.0
    noise = {**features, "val_x": torch.randn(60, 16)}  # the score is the val split's
    assert (
        train_linear(
            noise,
            6,
            tmp_path / "noise",
            optimizer=optimizer,
            epochs=epochs,
            lr=lr,
            batch_size=32,
            progress_bar=False,
        )[1]["top1"]
        < 0.5
    )


def test_knn_command_on_an_image_folder(tiny_fit, tmp_path, capsys):
    root = write_image_folder(tmp_path / "set")
    out = tmp_path / "knn"
    argv = [
        "knn",
        f"checkpoint={tiny_fit.checkpoint}",
        "data=folder",
        f"data.image_dir={root}",
        f"out={out}",
        "image_size=32",
        "device=cpu",
        "k=3",
        "temperature=0.5",
    ]
    printed = run(argv, capsys)
    assert printed["features_from_cache"] == "False"
    summary = json.loads((out / "knn.json").read_text())
    assert summary["n_train"] == 12 and summary["n_val"] == 3
    assert summary["class_names"] == ["blue", "green", "red"] and summary["k"] == 3
    cached = torch.load(out / "features.pt", weights_only=True)
    assert cached["train_x"].shape == (12, 512)
    expected = knn_accuracy(
        cached["train_x"], cached["train_y"], cached["val_x"], cached["val_y"], 3, 0.5
    )
    assert summary["top1"] == expected["top1"] == float(printed["top1"])
    assert summary["top5"] == 1.0  # 3 classes
    assert summary["top1"] == 1.0  # one colour per class: even a 3-step backbone tells them
    assert run(argv, capsys)["features_from_cache"] == "True"
    assert run([*argv, "encoder=momentum"], capsys)["features_from_cache"] == "False"


def test_linear_command_on_coco_crops(tiny_fit, tmp_path, capsys):
    out = tmp_path / "linear"
    argv = [
        "linear",
        *coco_args(tiny_fit, out),
        "val_fraction=0.25",
        "epochs=2",
        "progress_bar=false",
    ]
    printed = run(argv, capsys)
    summary = json.loads((out / "linear.json").read_text())
    n_boxes = len(json.loads(tiny_fit.ann_file.read_text())["annotations"])
    assert summary["n_train"] + summary["n_val"] == n_boxes
    assert summary["num_classes"] == 8 and summary["optimizer"] == "sgd"
    assert 0 <= summary["top1"] <= summary["top5"] <= 1
    assert float(printed["top1"]) == pytest.approx(summary["top1"], abs=1e-6)
    assert (out / "csv" / "metrics.csv").is_file() and (out / "features.pt").is_file()
    again = run([*argv, "optimizer=lbfgs", "lr=1", "epochs=1"], capsys)
    assert again["features_from_cache"] == "True"


@pytest.mark.parametrize(
    "override, message",
    [
        ("k=0", "k=0"),
        ("temperature=0", "temperature"),
        ("val_fraction=1.5", "val_fraction"),
        ("optimizer=adam", "optimizer"),
        ("val_dir=/no/such/dir", "val_dir"),
    ],
)
def test_invalid_keys_exit_2(tiny_fit, tmp_path, capsys, override, message):
    command = "linear" if override.startswith("optimizer") else "knn"
    assert main([command, *coco_args(tiny_fit, tmp_path), override]) == 2
    assert message in capsys.readouterr().err
