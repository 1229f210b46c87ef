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
import timm
import torch

from hcl_lightning.analysis import auroc, read_coco
from hcl_lightning.analysis.cli import compose_config, main
from hcl_lightning.analysis.embed import AnnotatedImage
from hcl_lightning.analysis.norms import GROUP_COLUMNS, NORM_COLUMNS, random_scene_crops
from hcl_lightning.analysis.out_of_context import OOC_COLUMNS
from tests.helpers import N_IMAGES


def common(tiny_fit, out: Path, ann_file: Path | None = None) -> list[str]:
    """Overrides analysing the tiny tiny_fit's checkpoint on its images (data=coco)."""
    return [
        f"checkpoint={tiny_fit.checkpoint}",
        "data=coco",
        f"data.image_dir={tiny_fit.image_dir}",
        f"data.ann_file={ann_file or tiny_fit.ann_file}",
        f"out={out}",
        "image_size=32",
        "batch_size=16",
        "device=cpu",
    ]


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


def test_norms_command(tiny_fit, tmp_path, capsys):
    out = tmp_path / "norms"
    printed = run(["norms", *common(tiny_fit, out), "scene_crops=1"], capsys)
    rho = float(printed["spearman_rho"])
    assert -1.0 <= rho <= 1.0
    columns, rows = read_csv(out / "norms.csv")
    assert columns == list(NORM_COLUMNS)
    assert len(rows) == 2 * N_IMAGES
    assert sum(r["kind"] == "image" for r in rows) == N_IMAGES
    images = [r for r in rows if r["kind"] == "image"]
    expected = {
        im["file_name"]: im["num_objects"]
        for im in json.loads(tiny_fit.ann_file.read_text())["images"]
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


def test_out_of_context_command_with_flags(tiny_fit, ooc_ann_file, tmp_path, capsys):
    out = tmp_path / "ooc"
    printed = run(["out-of-context", *common(tiny_fit, out, ooc_ann_file), "grid_images=4"], capsys)
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


def test_out_of_context_without_flags_prints_no_auroc(tiny_fit, tmp_path, capsys):
    printed = run(["out-of-context", *common(tiny_fit, tmp_path), "max_images=3"], capsys)
    assert "ooc_auroc" not in printed
    _, rows = read_csv(tmp_path / "ooc_scores.csv")
    assert {r["out_of_context"] for r in rows} == {""}
    assert len({r["image_id"] for r in rows}) == 3


def test_ooc_distance_is_poincare_distance_of_key_and_scene(tiny_fit):
    from hcl_lightning import poincare_distance
    from hcl_lightning.analysis import embed_crops, load_model

    model = load_model(tiny_fit.checkpoint, device="cpu")
    image = read_coco(tiny_fit.image_dir, tiny_fit.ann_file)[0]
    scene = embed_crops(model, [(image.path, None)], image_size=32)["ball"]
    obj = embed_crops(model, [(image.path, tuple(image.boxes[0]))], image_size=32, encoder="key")
    d = poincare_distance(torch.from_numpy(obj["ball"]), torch.from_numpy(scene), c=0.05)
    ref = model.hcl_head.ball.dist(torch.from_numpy(obj["ball"]), torch.from_numpy(scene))
    assert float(d) == pytest.approx(float(ref), rel=1e-4)


@pytest.mark.parametrize("fmt", ["npy", "pt"])
def test_embed_command(tiny_fit, tmp_path, capsys, fmt):
    argv = ["embed", *common(tiny_fit, tmp_path), f"format={fmt}"]
    if fmt == "pt":  # without annotations: every image of the folder
        argv = [a for a in argv if not a.startswith(("data=", "data.ann_file="))]
        argv.append("data=folder")
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


def test_export_command(tiny_fit, tmp_path, capsys):
    printed = run(
        ["export", f"checkpoint={tiny_fit.checkpoint}", f"out={tmp_path}", "format=detectron2"],
        capsys,
    )
    assert Path(printed["out"]) == tmp_path / "backbone.pkl"
    assert (tmp_path / "backbone.pkl").is_file()
    printed = run(
        ["export", f"checkpoint={tiny_fit.checkpoint}", f"out={tmp_path}", "format=timm"],
        capsys,
    )
    assert Path(printed["out"]) == tmp_path / "backbone_timm.pth"
    assert printed["architecture"] == "resnet18"
    model = timm.create_model(printed["architecture"], pretrained=False)
    result = model.load_state_dict(torch.load(printed["out"]), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys


def test_missing_checkpoint_is_an_error(tiny_fit, tmp_path, capsys):
    argv = common(tiny_fit, tmp_path)
    argv[0] = f"checkpoint={tmp_path / 'missing.ckpt'}"
    assert main(["norms", *argv]) == 2
    assert "missing.ckpt: file not found" in capsys.readouterr().err


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


def test_read_coco_keeps_ids_and_flags(tiny_fit, ooc_ann_file):
    images = read_coco(tiny_fit.image_dir, ooc_ann_file)
    assert len(images) == N_IMAGES
    first = images[0]
    assert first.out_of_context is not None and first.out_of_context[0] == 1
    assert len(first.ann_ids) == len(first.boxes) == len(first.category_names)
    assert read_coco(tiny_fit.image_dir, tiny_fit.ann_file)[0].out_of_context is None


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


# -- the Hydra command line: data=coco / data=synthetic overrides, errors, help -------
def write_coco(root: Path) -> tuple[Path, Path]:
    """Two 64-px images and a COCO file: 2 usable boxes (one flagged out of context), a
    crowd box and a 3-px box (kept by the default min_box_size=1)."""
    from PIL import Image

    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        pixels = np.full((64, 64, 3), 90, np.uint8)
        pixels[8:40, 10:50] = colour
        Image.fromarray(pixels).save(image_dir / f"im{i}.png")
    boxes = [
        (1, [10, 8, 40, 32], 0, 0),
        (2, [5, 5, 30, 30], 0, 1),
        (2, [0, 0, 64, 64], 1, 0),  # crowd
        (1, [50, 50, 3, 3], 0, 0),  # smaller than data.boxes.min_box_size
    ]
    coco = {
        "images": [
            {"id": i + 1, "file_name": f"im{i}.png", "width": 64, "height": 64} for i in range(2)
        ],
        "annotations": [
            {
                "id": k + 1,
                "image_id": image,
                "category_id": 7,
                "bbox": bbox,
                "iscrowd": crowd,
                "out_of_context": flag,
            }
            for k, (image, bbox, crowd, flag) in enumerate(boxes)
        ],  # fmt: skip
        "categories": [{"id": 7, "name": "thing"}],
    }
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps(coco))
    return image_dir, ann_file


def test_data_coco_overrides(tiny_fit, tmp_path, capsys):
    image_dir, ann_file = write_coco(tmp_path)
    data = ["data=coco", f"data.image_dir={image_dir}", f"data.ann_file={ann_file}"]
    base = [f"checkpoint={tiny_fit.checkpoint}", "device=cpu", *data, "data.object_size=40"]
    # min_box_size follows data.boxes.min_box_size (default 1: the 3-px box would be kept)
    assert compose_config(data).min_box_size == 1.0
    printed = run(
        ["out-of-context", *base, f"out={tmp_path / 'ooc'}", "data.boxes.min_box_size=4"], capsys
    )
    _, rows = read_csv(tmp_path / "ooc" / "ooc_scores.csv")
    assert [(r["file_name"], r["ann_id"], r["out_of_context"]) for r in rows] == [
        ("im0.png", "1", "0"),
        ("im1.png", "2", "1"),
    ]
    assert [float(rows[0][k]) for k in ("x1", "y1", "x2", "y2")] == [10, 8, 50, 40]
    expected = auroc([float(r["distance"]) for r in rows], [0, 1])
    assert float(printed["ooc_auroc"]) == pytest.approx(expected, abs=1e-6)
    # image_size defaults to data.object_size
    run(["embed", *base, f"out={tmp_path / 'emb'}"], capsys)
    assert json.loads((tmp_path / "emb" / "meta.json").read_text())["image_size"] == 40


def test_data_synthetic_with_out_of_context_objects(tiny_fit, tmp_path, capsys, monkeypatch):
    from hcl_lightning.train import prepare_synthetic_data
    from tests.helpers import compose_config as compose_train_config

    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path / "cache"))
    data = [
        "data.synthetic.n_images=12",
        "data.synthetic.image_size=48",
        "data.synthetic.contexts=true",
        "data.synthetic.ooc_fraction=0.25",
    ]
    argv = [f"checkpoint={tiny_fit.checkpoint}", *data, f"out={tmp_path / 'ooc'}", "device=cpu"]
    printed = run(["out-of-context", *argv, "image_size=32"], capsys)
    assert 0.0 <= float(printed["ooc_auroc"]) <= 1.0
    summary = json.loads((tmp_path / "ooc" / "ooc_scores.json").read_text())["summary"]
    assert summary["n_images"] == 12 and summary["n_flagged"] == 3
    # hcl-train with these overrides reuses the very dataset (same folder, not rewritten)
    (generated,) = (tmp_path / "cache").glob("synthetic-n12-*/annotations.json")
    stamp = generated.stat().st_mtime_ns
    train_cfg = compose_train_config(data)
    prepare_synthetic_data(train_cfg)
    assert Path(train_cfg.data.ann_file) == generated and generated.stat().st_mtime_ns == stamp
    assert "ctxTrue-ooc0.25" in generated.parent.name
    assert n_annotations(generated) == int(printed["n_objects"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["norms"], "checkpoint is required: pass checkpoint="),
        (["norms", "CKPT", "foo=1"], "unknown key 'foo'"),
        (["norms", "CKPT", "+foo=1"], "unknown key 'foo'"),
        (["norms", "CKPT", "data.foo=1"], "unknown key 'data.foo'"),
        (["norms", "--checkpoint", "x.ckpt"], "--checkpoint: options are key=value overrides"),
        (["norms", "CKPT", "image_size=0"], "image_size=0: must be an integer >= 1"),
        (["norms", "CKPT", "data=coco"], "data.image_dir is required"),
        (["norms", "CKPT", "data=folder", "data.image_dir=."], "needs object boxes"),
        (["norms", "CKPT", "data=nope"], "Could not find 'data/nope'"),
        (["norms", "CKPT", "data.synthetic.n_images=abc"], "data.synthetic.n_images='abc'"),
        (
            ["out-of-context", "CKPT", "data.synthetic.ooc_fraction=0.5"],
            "data.synthetic.ooc_fraction=0.5 needs contexts=True",
        ),
        (["embed", "CKPT", "format=torchvision"], "format='torchvision': must be one of npy, pt"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tiny_fit, capsys, argv, message):
    argv = [f"checkpoint={tiny_fit.checkpoint}" if a == "CKPT" else a for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and message in captured.err


def test_help_lists_commands_keys_and_defaults(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("norms", "out-of-context", "embed", "export"))
    assert main(["norms", "--help"]) == 0
    out = capsys.readouterr().out
    for line in ("checkpoint=???", "scene_crops=0", "image_size=${data.object_size}",
                 "data.synthetic.ooc_fraction=0.0"):  # fmt: skip
        assert line in out
    assert "grid_images" not in out
    assert main(["export", "data=coco", "-h"]) == 0
    out = capsys.readouterr().out
    assert "format=null" in out and "torchvision | timm | detectron2" in out and "data." not in out
    assert main([]) == 2 and "usage:" in capsys.readouterr().err


def test_every_config_key_is_documented():
    from hcl_lightning.analysis.cli import COMMANDS, KEYS

    assert set(compose_config([]).keys()) == {"data", *KEYS}
    assert {key for command in COMMANDS.values() for key in command.keys} == set(KEYS)


# -- self-describing checkpoints -----------------------------------------------------------
#: The class each shipped model group builds.
HCL_CLASSES = {"moco_v2": "HCLMoCoV2", "densecl": "HCLDenseCL", "orl": "HCLORL"}


@pytest.mark.parametrize("model", list(HCL_CLASSES))
def test_every_shipped_model_is_analysed_on_its_training_data_without_being_told(
    model, tmp_path, capsys, monkeypatch
):
    from hcl_lightning.train import train
    from tests.helpers import compose_config as compose_train_config
    from tests.helpers import tiny_overrides

    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path / "cache"))
    overrides = [f"model={model}", *tiny_overrides(tmp_path), f"output_dir={tmp_path / 'run'}"]
    if model == "orl":  # BYOL: no baseline queue; a tiny predictor
        overrides = [o for o in overrides if not o.startswith("model.queue_size")]
        overrides.append("model.pred_hidden_dim=32")
    checkpoint = train(compose_train_config(overrides))["checkpoint"]
    capsys.readouterr()
    trained_on = str(tmp_path / "synthetic" / "images")  # 16 images, not the default 2000

    for command in ("norms", "out-of-context", "embed"):
        out = tmp_path / command
        printed = run([command, f"checkpoint={checkpoint}", f"out={out}", "device=cpu"], capsys)
        assert printed["data_from_checkpoint"] == trained_on, command
    assert int(printed["n_images"]) == 16  # embed: every training image
    printed = run(["export", f"checkpoint={checkpoint}", f"out={tmp_path / 'export'}"], capsys)
    assert int(printed["n_tensors"]) > 0 and Path(printed["out"]).is_file()

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module, _, name = saved["hcl_model"]["class"].rpartition(".")
    assert module.startswith("hcl_lightning.baselines.") and name == HCL_CLASSES[model]
    assert saved["hcl_config"]["data"]["image_dir"] == trained_on
    assert saved["hcl_config"]["hcl"]["queue_size"] == 16


def test_a_user_subclass_checkpoint_loads_without_model_class(tiny_fit, tmp_path, capsys):
    import pytorch_lightning as pl

    from hcl_lightning.analysis import load_model
    from tests.helpers import load_example, quiet_trainer, tiny_datamodule

    HCLSimCLR = load_example("custom_module").HCLSimCLR  # noqa: N806
    model = HCLSimCLR(hcl_lambda=0.3, hcl_queue_size=16, hcl_head_mode="separate", hcl_dim=8)
    pl.seed_everything(0, verbose=False)
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(model, datamodule=tiny_datamodule(tiny_fit.image_dir, tiny_fit.ann_file))
    trainer.save_checkpoint(tmp_path / "simclr.ckpt")

    loaded = load_model(tmp_path / "simclr.ckpt", device="cpu")
    assert type(loaded) is HCLSimCLR  # the class the checkpoint names, its hcl_* arguments
    assert (loaded.hcl_lambda, loaded.hcl_head_mode, loaded.hcl_head.output_dim) == (
        0.3,
        "separate",
        8,
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    printed = run(
        ["norms", *common(tiny_fit, tmp_path), "checkpoint=" + str(tmp_path / "simclr.ckpt")],
        capsys,
    )
    assert -1 <= float(printed["spearman_rho"]) <= 1
