"""Smoke runs of the benchmark scripts (``--quick``), so they cannot rot unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "flags", "expected"),
    [
        ("bench_loss.py", [], ["time ours/euclidean = "]),
        ("bench_step.py", [], ["HCL/MoCo step time = "]),
        ("bench_data.py", [], ["HCL/MoCo-v2"]),
        (
            "reproduce.py",
            ["--random-colours", "--appearance", "instance"],
            ["| hcl (λ=0.1) | ", "objects in random colours", "each object its own look"],
        ),
        (
            "reproduce.py",
            ["--family", "heldout"],
            ["| moco_v2 (λ=0) | ", "benchmarks/heldout_scenes.py"],
        ),
    ],
)
def test_quick_benchmark_prints_its_ratios(
    script: str, flags: list[str], expected: list[str], tmp_path: Path
) -> None:
    extra = [] if script == "bench_loss.py" else ["--data-root", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-W", "ignore", str(BENCHMARKS / script), "--quick", *extra, *flags],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(text in result.stdout for text in expected), result.stdout[-2000:]
    assert "| " in result.stdout  # the markdown table
