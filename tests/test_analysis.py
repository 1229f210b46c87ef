"""hcl-analyze: norms vs #objects, out-of-context scores, embeddings, export; AUROC."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hcl_lightning.analysis import auroc, read_coco
from hcl_lightning.analysis.cli import main
from hcl_lightning.analysis.embed import AnnotatedImage
from hcl_lightning.analysis.norms import GROUP_COLUMNS, NORM_COLUMNS, random_scene_crops
from hcl_lightning.analysis.out_of_context import OOC_COLUMNS
from tests.tiny_fit import N_IMAGES, tiny_fit


@pytest.fixture(scope="module")
def fit(tmp_path_factory):
    return tiny_fit(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def ooc_ann_file(fit, tmp_path_factory) -> Path:
    """The synthetic annotations with every 4th object flagged out of context."""
    data = json.loads(fit.ann_file.read_text())
    for i, ann in enumerate(data["annotations"]):
        if i % 4 == 0:
            ann["out_of_context"] = 1
    path = tmp_path_factory.mktemp("ooc") / "annotations_ooc.json"
    path.write_text(json.dumps(data))
    return path


def common(fit, out: Path, ann_file: Path | None = None) -> list[str]:
    return [
        "--checkpoint", str(fit.checkpoint),
        "--image-dir", str(fit.image_dir),
        "--ann-file", str(ann_file or fit.ann_file),
        "--out", str(out),
        "--image-size", "32",
        "--batch-size", "16",
        "--device", "cpu",
    ]  # fmt: skip


def run(argv: list[str], capsys) -> dict[str, str]:
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def n_annotations(ann_file: Path) -> int:
    return len(json.loads(ann_file.read_text())["annotations"])


def test_norms_command(fit, tmp_path, capsys):
    out = tmp_path / "norms"
    printed = run(["norms", *common(fit, out), "--scene-crops", "1"], capsys)
    rho = float(printed["spearman_rho"])
    assert -1.0 <= rho <= 1.0
    columns, rows = read_csv(out / "norms.csv")
    assert columns == list(NORM_COLUMNS)
    assert len(rows) == 2 * N_IMAGES
    assert sum(r["kind"] == "image" for r in rows) == N_IMAGES
    images = [r for r in rows if r["kind"] == "image"]
    expected = {
        im["file_name"]: im["num_objects"] for im in json.loads(fit.ann_file.read_text())["images"]
    }
    assert {r["file_name"]: int(r["n_objects"]) for r in images} == expected
    assert all(0 <= float(r["norm_fraction"]) < 1 for r in rows)
    columns, groups = read_csv(out / "norms_by_objects.csv")
    assert columns == list(GROUP_COLUMNS)
    assert sum(int(g["count"]) for g in groups) == len(rows)
    assert (out / "norms_vs_objects.png").stat().st_size > 1000
    from scipy.stats import spearmanr

    check = spearmanr(
        [int(r["n_objects"]) for r in rows], [float(r["norm_fraction"]) for r in rows]
    )
    assert rho == pytest.approx(check.statistic, abs=1e-5)


def test_out_of_context_command_with_flags(fit, ooc_ann_file, tmp_path, capsys):
    out = tmp_path / "ooc"
    printed = run(["out-of-context", *common(fit, out, ooc_ann_file), "--grid-images", "4"], capsys)
    score = float(printed["ooc_auroc"])
    assert 0.0 <= score <= 1.0
    columns, rows = read_csv(out / "ooc_scores.csv")
    assert columns == list(OOC_COLUMNS)
    assert len(rows) == n_annotations(ooc_ann_file) == int(printed["n_objects"])
    distances = np.array([float(r["distance"]) for r in rows])
    flags = np.array([int(r["out_of_context"]) for r in rows])
    assert (distances >= 0).all() and np.isfinite(distances).all()
    assert score == pytest.approx(auroc(distances, flags), abs=1e-6)
    for image_rows in _by_image(rows).values():  # rank 1 = farthest object of the image
        best = max(image_rows, key=lambda r: float(r["distance"]))
        assert int(best["rank_in_image"]) == 1
    data = json.loads((out / "ooc_scores.json").read_text())
    assert len(data["objects"]) == len(rows) and data["summary"]["n_flagged"] == flags.sum()
    assert (out / "ooc_grid.png").stat().st_size > 1000


def _by_image(rows):
    grouped: dict[str, list] = {}
    for r in rows:
        grouped.setdefault(r["image_id"], []).append(r)
    return grouped


def test_out_of_context_without_flags_prints_no_auroc(fit, tmp_path, capsys):
    printed = run(["out-of-context", *common(fit, tmp_path), "--max-images", "3"], capsys)
    assert "ooc_auroc" not in printed
    _, rows = read_csv(tmp_path / "ooc_scores.csv")
    assert {r["out_of_context"] for r in rows} == {""}
    assert len({r["image_id"] for r in rows}) == 3


def test_ooc_distance_is_poincare_distance_of_key_and_scene(fit):
    from hcl_lightning import poincare_distance
    from hcl_lightning.analysis import embed_crops, load_model

    model = load_model(fit.checkpoint, device="cpu")
    image = read_coco(fit.image_dir, fit.ann_file)[0]
    scene = embed_crops(model, [(image.path, None)], image_size=32)["ball"]
    obj = embed_crops(model, [(image.path, tuple(image.boxes[0]))], image_size=32, encoder="key")
    d = poincare_distance(torch.from_numpy(obj["ball"]), torch.from_numpy(scene), c=0.05)
    ref = model.hcl_head.ball.dist(torch.from_numpy(obj["ball"]), torch.from_numpy(scene))
    assert float(d) == pytest.approx(float(ref), rel=1e-4)


@pytest.mark.parametrize("fmt", ["npy", "pt"])
def test_embed_command(fit, tmp_path, capsys, fmt):
    argv = ["embed", *common(fit, tmp_path), "--format", fmt]
    if fmt == "pt":  # without annotations: every image of the folder
        i = argv.index("--ann-file")
        del argv[i : i + 2]
    printed = run(argv, capsys)
    assert int(printed["n_images"]) == N_IMAGES
    if fmt == "npy":
        features, ball = np.load(tmp_path / "features.npy"), np.load(tmp_path / "ball.npy")
        files = (tmp_path / "files.txt").read_text().splitlines()
    else:
        data = torch.load(tmp_path / "embeddings.pt")
        features, ball, files = data["features"].numpy(), data["ball"].numpy(), data["files"]
    assert features.shape == (N_IMAGES, 512) and ball.shape == (N_IMAGES, 16)
    assert files == [f"{i:06d}.jpg" for i in range(N_IMAGES)]
    assert (np.linalg.norm(ball, axis=1) * math.sqrt(0.05) < 1).all()


def test_export_command(fit, tmp_path, capsys):
    printed = run(
        [
            "export",
            "--checkpoint",
            str(fit.checkpoint),
            "--out",
            str(tmp_path),
            "--format",
            "detectron2",
        ],
        capsys,
    )
    assert Path(printed["out"]) == tmp_path / "backbone.pkl"
    assert (tmp_path / "backbone.pkl").is_file()


def test_missing_checkpoint_is_an_error(fit, tmp_path, capsys):
    argv = common(fit, tmp_path)
    argv[1] = str(tmp_path / "missing.ckpt")
    assert main(["norms", *argv]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_auroc_hand_computed():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # ties count one half: positive 0.5 vs negatives 0.5, 0.2 -> (0.5 + 1) / 2
    assert auroc([0.5, 0.5, 0.2], [1, 0, 0]) == pytest.approx(0.75)
    assert auroc([1, 2, 3], [0, 0, 1]) == 1.0 and auroc([3, 2, 1], [0, 0, 1]) == 0.0
    assert math.isnan(auroc([1, 2], [0, 0]))
    with pytest.raises(ValueError):
        auroc([1, 2], [0])


def test_random_scene_crops_count_objects():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    image = AnnotatedImage(Path("x.jpg"), "x.jpg", 1, width=64, height=64, boxes=boxes)
    crops = random_scene_crops(image, 20, np.random.default_rng(0), min_side=0.3)
    for (x1, y1, x2, y2), n in crops:
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        inside = [
            max(0, min(x2, b[2]) - max(x1, b[0])) * max(0, min(y2, b[3]) - max(y1, b[1])) >= 50
            for b in boxes
        ]
        assert n == sum(inside)


def test_read_coco_keeps_ids_and_flags(fit, ooc_ann_file):
    images = read_coco(fit.image_dir, ooc_ann_file)
    assert len(images) == N_IMAGES
    first = images[0]
    assert first.out_of_context is not None and first.out_of_context[0] == 1
    assert len(first.ann_ids) == len(first.boxes) == len(first.category_names)
    assert read_coco(fit.image_dir, fit.ann_file)[0].out_of_context is None


@pytest.mark.skipif(
    shutil.which("hcl-analyze", path=str(Path(sys.executable).parent)) is None,
    reason="hcl-analyze console script not installed",
)
def test_console_script_help():
    exe = shutil.which("hcl-analyze", path=str(Path(sys.executable).parent))
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("norms", "out-of-context", "embed", "export"):
        assert command in result.stdout
