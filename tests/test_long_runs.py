"""Long CPU runs of the demo configuration (``-m slow``; minutes each)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from hcl_lightning.train import train
from tests.helpers import compose_config

pytestmark = pytest.mark.slow


def ball_rows(run: Path) -> list[dict[str, str]]:
    (metrics,) = run.rglob("metrics.csv")
    with metrics.open() as handle:
        return [row for row in csv.DictReader(handle) if row.get("train/ball/boundary_fraction")]


def test_separate_head_does_not_collapse_onto_the_boundary(tmp_path: Path) -> None:
    """100 demo steps with an own head: fewer than 5 % of the points at the guard (the
    learnt scale used to carry every point there within 50 steps)."""
    cfg = compose_config(
        [
            "hcl.head=separate",
            "trainer.max_steps=100",
            f"data.synthetic.root={tmp_path / 'data'}",
            f"output_dir={tmp_path / 'run'}",
        ]
    )
    train(cfg)
    rows = ball_rows(tmp_path / "run")
    assert len(rows) >= 9
    for row in rows:
        assert float(row["train/ball/boundary_fraction"]) < 0.05
        assert float(row["train/ball/clipped_fraction"]) < 0.05
        assert float(row["train/ball/scene_norm_p90"]) < 0.9
