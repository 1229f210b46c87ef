"""Representation norm vs. number of objects (Figure 3 of Ge et al., CVPR 2023).

HCL places scenes far from the origin of the Poincaré ball and objects near it, so the
norm of an image's embedding should grow with the number of objects it shows. For each
image (resized whole), and optionally for random scene crops whose object count is
known from the boxes, the online encoder + Poincaré head gives a ball point; its norm
(as a fraction of the radius ``1/sqrt(c)``, and as the hyperbolic distance to the
origin) is grouped by the number of objects, plotted, and correlated with it
(Spearman's rho over the per-item values).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from scipy import stats

from hcl_lightning.analysis.embed import (
    AnnotatedImage,
    curvature_of,
    embed_crops,
    output_dir,
    write_csv,
)
from hcl_lightning.data.crops import count_objects_inside

__all__ = ["NORM_COLUMNS", "GROUP_COLUMNS", "norms_vs_objects", "random_scene_crops"]

#: Columns of ``norms.csv`` (one row per embedded image or crop).
NORM_COLUMNS = (
    "file_name",
    "image_id",
    "kind",
    "x1",
    "y1",
    "x2",
    "y2",
    "n_objects",
    "norm",
    "norm_fraction",
    "dist0",
)
#: Columns of ``norms_by_objects.csv`` (one row per object count).
GROUP_COLUMNS = ("n_objects", "count", "mean", "std", "median", "p10", "p90")


def random_scene_crops(
    image: AnnotatedImage, k: int, rng: np.random.Generator, min_side: float = 0.3
) -> list[tuple[tuple[int, int, int, int], int]]:
    """``k`` random square-ish crops of an image with their object counts.

    Each crop's sides are uniform fractions in ``[min_side, 1]`` of the image's sides;
    its object count is the number of boxes lying at least half inside it (the rule of
    :class:`~hcl_lightning.data.SceneObjectSampler`).
    """
    if image.width is None or image.height is None:
        raise ValueError(f"{image.file_name}: scene crops need the image size")
    crops = []
    for _ in range(k):
        w = max(1, int(round(rng.uniform(min_side, 1.0) * image.width)))
        h = max(1, int(round(rng.uniform(min_side, 1.0) * image.height)))
        x1 = int(rng.integers(0, image.width - w + 1))
        y1 = int(rng.integers(0, image.height - h + 1))
        box = (x1, y1, x1 + w, y1 + h)
        crops.append((box, count_objects_inside(image.boxes, box)))
    return crops


def _spearman(n_objects: np.ndarray, norms: np.ndarray) -> tuple[float, float]:
    if len(norms) < 2 or np.ptp(n_objects) == 0 or np.ptp(norms) == 0:
        return math.nan, math.nan
    result = stats.spearmanr(n_objects, norms)
    return float(result.statistic), float(result.pvalue)


def _group(n_objects: np.ndarray, values: np.ndarray) -> list[dict[str, float]]:
    rows = []
    for n in np.unique(n_objects):
        v = values[n_objects == n]
        rows.append(
            {
                "n_objects": int(n),
                "count": len(v),
                "mean": float(v.mean()),
                "std": float(v.std()),
                "median": float(np.median(v)),
                "p10": float(np.quantile(v, 0.1)),
                "p90": float(np.quantile(v, 0.9)),
            }
        )
    return rows


def _plot(path: Path, rows: list[dict], groups: list[dict], rho: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    rng = np.random.default_rng(0)
    for kind, marker, colour in (("image", "o", "tab:blue"), ("crop", ".", "tab:gray")):
        sub = [r for r in rows if r["kind"] == kind]
        if sub:
            x = np.array([r["n_objects"] for r in sub], float) + rng.uniform(-0.15, 0.15, len(sub))
            y = [r["norm_fraction"] for r in sub]
            label = f"{kind}s ({len(sub)})"
            ax.scatter(x, y, s=10, marker=marker, color=colour, alpha=0.4, label=label)
    ax.errorbar(
        [g["n_objects"] for g in groups],
        [g["mean"] for g in groups],
        yerr=[g["std"] for g in groups],
        color="tab:red",
        marker="s",
        capsize=3,
        label="mean ± std",
    )
    ax.set_xlabel("number of objects")
    ax.set_ylabel("ball norm / radius")
    ax.set_title(f"{title} (Spearman ρ = {rho:.3f})")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def norms_vs_objects(
    model: pl.LightningModule,
    images: Sequence[AnnotatedImage],
    out_dir: str | Path,
    image_size: int = 224,
    batch_size: int = 64,
    scene_crops: int = 0,
    seed: int = 0,
    num_workers: int = 0,
    title: str = "Representation norm vs. objects",
) -> dict[str, Any]:
    """Embeds images (and scene crops), writes the Figure-3 plot and CSVs.

    Writes ``norms.csv`` (:data:`NORM_COLUMNS`, one row per image, then per crop),
    ``norms_by_objects.csv`` (:data:`GROUP_COLUMNS`) and ``norms_vs_objects.png`` into
    ``out_dir``. Unreadable images are left out (counted in the result).

    Args:
        model: HCL module in eval mode (see :func:`~hcl_lightning.analysis.load_model`).
        images: images with their boxes (e.g. :func:`~hcl_lightning.analysis.read_coco`).
        out_dir: output folder (created).
        image_size: side images and crops are resized to.
        batch_size: regions per forward pass.
        scene_crops: random scene crops per image, besides the whole image (0: none).
        seed: seed of the crops.
        num_workers: DataLoader workers.
        title: plot title.

    Returns:
        ``spearman_rho``, ``spearman_p`` (NaN when undefined, e.g. one object count),
        ``n_items``, ``n_failed`` and the output paths.
    """
    out_dir = output_dir(out_dir)
    rng = np.random.default_rng(seed)
    meta: list[dict[str, Any]] = []
    items = []
    for image in images:
        regions = [(None, image.n_objects)]
        if scene_crops:
            regions += random_scene_crops(image, scene_crops, rng)
        for box, n in regions:
            items.append((image.path, box))
            x1, y1, x2, y2 = box if box is not None else (0, 0, image.width, image.height)
            meta.append(
                {
                    "file_name": image.file_name,
                    "image_id": image.image_id,
                    "kind": "image" if box is None else "crop",
                    "x1": x1,
                    "y1": y1,
                    "x2": x2,
                    "y2": y2,
                    "n_objects": n,
                }
            )
    result = embed_crops(
        model, items, image_size=image_size, batch_size=batch_size, num_workers=num_workers
    )
    c = curvature_of(model)
    norm = np.linalg.norm(result["ball"].astype(np.float64), axis=1)
    fraction = norm * math.sqrt(c)
    dist0 = 2 / math.sqrt(c) * np.arctanh(np.clip(fraction, 0, 1 - 1e-12))
    rows = [
        {**m, "norm": float(n), "norm_fraction": float(f), "dist0": float(d)}
        for m, n, f, d, ok in zip(meta, norm, fraction, dist0, result["ok"], strict=True)
        if ok
    ]
    counts = np.array([r["n_objects"] for r in rows], np.int64)
    values = np.array([r["norm_fraction"] for r in rows], np.float64)
    rho, p = _spearman(counts, values)
    groups = _group(counts, values)
    paths = {
        "norms_csv": out_dir / "norms.csv",
        "groups_csv": out_dir / "norms_by_objects.csv",
        "plot": out_dir / "norms_vs_objects.png",
    }
    write_csv(paths["norms_csv"], NORM_COLUMNS, rows)
    write_csv(paths["groups_csv"], GROUP_COLUMNS, groups)
    _plot(paths["plot"], rows, groups, rho, title)
    return {
        "spearman_rho": rho,
        "spearman_p": p,
        "n_items": len(rows),
        "n_failed": int((~result["ok"]).sum()),
        "curvature": c,
        **{k: str(v) for k, v in paths.items()},
    }
