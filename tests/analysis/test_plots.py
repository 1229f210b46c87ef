"""Embedding pictures: the norm-keeping disk projection, the 2-D map, and
``hcl-analyze embed plot=true`` on COCO boxes (objects, OOC flags) and on class folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from hcl_lightning.analysis.cli import main
from hcl_lightning.analysis.plots import disk_projection, map_2d
from tests.analysis.test_cli import common
from tests.helpers import write_image_folder


def test_disk_projection_keeps_norm_fractions():
    rng = np.random.default_rng(0)
    ball = rng.normal(size=(50, 16))
    ball *= (rng.uniform(0.05, 0.95, 50) / np.linalg.norm(ball, axis=1))[:, None] / math.sqrt(0.2)
    disk = disk_projection(ball, 0.2)
    assert disk.shape == (50, 2)
    np.testing.assert_allclose(
        np.linalg.norm(disk, axis=1), np.linalg.norm(ball, axis=1) * math.sqrt(0.2)
    )
    # points already in a plane keep their angles (up to the PCA's rotation/reflection)
    angles = rng.uniform(0, 2 * np.pi, 20)
    flat = np.zeros((20, 8))
    flat[:, 0], flat[:, 1] = 0.5 * np.cos(angles), 0.5 * np.sin(angles)
    disk = disk_projection(flat, 1.0)
    np.testing.assert_allclose(disk @ disk.T, flat @ flat.T, atol=1e-9)
    assert np.isfinite(disk_projection(np.zeros((3, 4)), 1.0)).all()  # the origin


def test_map_2d_separates_clusters_with_tsne():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(20, 8)) + 10 * np.eye(8)[i] for i in range(2)])
    coords, method = map_2d(x, "tsne")
    assert method == "tsne" and coords.shape == (40, 2)
    first, second = coords[:20], coords[20:]
    between = np.linalg.norm(first.mean(0) - second.mean(0))
    within = max(first.std(0).max(), second.std(0).max())
    assert between > 2 * within
    with pytest.raises(ValueError, match="at least 3"):
        map_2d(x[:2])
    with pytest.raises(ValueError, match="method"):
        map_2d(x, "pca")


def test_embed_plot_on_coco_marks_out_of_context(tiny_fit, ooc_ann_file, tmp_path, capsys):
    argv = ["embed", *common(tiny_fit, tmp_path, ooc_ann_file), "plot=true", "map_method=tsne"]
    assert main(argv) == 0
    printed = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert printed["map_method"] == "tsne"
    plots = printed["plots"].split(",")
    assert [p.rsplit("/", 1)[-1] for p in plots] == ["map.png", "poincare_disk.png"]
    for path in plots:
        with Image.open(path) as image:
            assert image.size[0] > 300 and image.size[1] > 300
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["plots"] == plots and meta["map_method"] == "tsne"


def test_embed_plot_on_class_folders(tiny_fit, tmp_path, capsys):
    root = write_image_folder(tmp_path / "set")
    argv = [
        "embed",
        f"checkpoint={tiny_fit.checkpoint}",
        "data=folder",
        f"data.image_dir={root}",
        f"out={tmp_path / 'out'}",
        "image_size=32",
        "device=cpu",
        "plot=true",
    ]
    assert main(argv) == 0
    assert (tmp_path / "out" / "map.png").is_file()
    assert (tmp_path / "out" / "poincare_disk.png").is_file()
