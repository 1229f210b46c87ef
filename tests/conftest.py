"""Shared fixtures: a deterministic seed for every test, and the tiny HCL fit of
:mod:`tests.helpers` (run once per session). Helpers that are not fixtures live in
:mod:`tests.helpers`."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TinyFit, run_tiny_fit


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_fit(tmp_path_factory: pytest.TempPathFactory) -> TinyFit:
    """The tiny HCL fit (checkpoint, data, logs), made once per session."""
    return run_tiny_fit(tmp_path_factory.getbasetemp())
