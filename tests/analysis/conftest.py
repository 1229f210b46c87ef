"""Fixtures of the analysis tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ooc_ann_file(tiny_fit, tmp_path_factory) -> Path:
    """The synthetic annotations with every 4th object flagged out of context."""
    data = json.loads(tiny_fit.ann_file.read_text())
    for i, ann in enumerate(data["annotations"]):
        if i % 4 == 0:
            ann["out_of_context"] = 1
    path = tmp_path_factory.mktemp("ooc") / "annotations_ooc.json"
    path.write_text(json.dumps(data))
    return path
