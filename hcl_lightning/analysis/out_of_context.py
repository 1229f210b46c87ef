"""Out-of-context objects by their hyperbolic distance to the scene (Figure 5 of HCL).

HCL trains an object's key embedding to lie close to the embeddings of scenes that
contain it, so an object unusual for its scene ends up far from it. For each image the
whole image is embedded with the online encoder (the scene) and each annotated object
crop with the key encoder (momentum encoder, as in training); the score of an object is
the Poincaré distance between the two (:func:`hcl_lightning.poincare_distance`, the
head's curvature). When annotations carry ``out_of_context: 1`` flags, the AUROC of the
score for finding the flagged objects is reported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from scipy.stats import rankdata

from hcl_lightning.analysis.embed import (
    AnnotatedImage,
    curvature_of,
    embed_crops,
    embed_images,
    output_dir,
    write_csv,
)
from hcl_lightning.data.images import load_image
from hcl_lightning.hyperbolic.geometry import poincare_distance

__all__ = ["OOC_COLUMNS", "auroc", "out_of_context_scores"]

#: Columns of ``ooc_scores.csv`` (one row per object).
OOC_COLUMNS = (
    "file_name",
    "image_id",
    "ann_id",
    "category_id",
    "category",
    "x1",
    "y1",
    "x2",
    "y2",
    "distance",
    "rank_in_image",
    "scene_norm_fraction",
    "object_norm_fraction",
    "out_of_context",
)


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the positives ``labels == 1``.

    The Mann-Whitney form with average ranks for ties (equal to scikit-learn's
    ``roc_auc_score``): ``(sum of positive ranks - P(P+1)/2) / (P N)``. NaN when
    either class is absent.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)  # average ranks for ties, 1-based
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _grid(
    path: Path,
    images: Sequence[AnnotatedImage],
    rows: list[dict[str, Any]],
    max_images: int,
    columns: int = 4,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patches

    shown = [im for im in images if im.n_objects][:max_images]
    n = max(len(shown), 1)
    ncols = min(columns, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows), squeeze=False)
    distances = [r["distance"] for r in rows] or [0.0, 1.0]
    norm = matplotlib.colors.Normalize(min(distances), max(max(distances), min(distances) + 1e-6))
    cmap = matplotlib.colormaps["viridis"]
    by_image: dict[int, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image_id"], []).append(r)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image in zip(axes.flat, shown, strict=False):
        try:
            ax.imshow(load_image(image.path))
        except Exception:  # an unreadable image is shown as an empty tile
            ax.set_title(f"{image.file_name} (unreadable)", fontsize=7)
            continue
        for r in by_image.get(image.image_id, []):
            ooc = r["out_of_context"] == 1
            colour = "red" if ooc else cmap(norm(r["distance"]))
            ax.add_patch(
                patches.Rectangle(
                    (r["x1"], r["y1"]),
                    r["x2"] - r["x1"],
                    r["y2"] - r["y1"],
                    fill=False,
                    linewidth=2 if ooc else 1.2,
                    linestyle="--" if ooc else "-",
                    edgecolor=colour,
                )
            )
            label = f"{r['distance']:.2f}" + (" OOC" if ooc else "")
            background = {"facecolor": colour, "alpha": 0.7, "pad": 1, "linewidth": 0}
            ax.text(
                r["x1"], r["y1"], label, fontsize=6, color="white", va="bottom", bbox=background
            )
        ax.set_title(image.file_name, fontsize=7)
    fig.colorbar(
        matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap),
        ax=axes.ravel().tolist(),
        shrink=0.6,
        label="hyperbolic distance object → scene",
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def out_of_context_scores(
    model: pl.LightningModule,
    images: Sequence[AnnotatedImage],
    out_dir: str | Path,
    image_size: int = 224,
    object_size: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    max_grid_images: int = 16,
) -> dict[str, Any]:
    """Scores every annotated object by its hyperbolic distance to its scene.

    Writes ``ooc_scores.csv`` (:data:`OOC_COLUMNS`; ``rank_in_image`` is 1 for the
    object farthest from its scene; ``out_of_context`` is empty when the annotations
    carry no flags), ``ooc_scores.json`` (the same rows plus a summary) and
    ``ooc_grid.png`` (the first ``max_grid_images`` images with boxes labelled by
    distance; flagged objects dashed red) into ``out_dir``. Objects of unreadable
    images are left out.

    Args:
        model: HCL module in eval mode.
        images: images with their boxes (e.g. :func:`~hcl_lightning.analysis.read_coco`).
        out_dir: output folder (created).
        image_size: side the whole images (scenes) are resized to.
        object_size: side the object crops are resized to (default ``image_size``).
        batch_size: regions per forward pass.
        num_workers: DataLoader workers.
        max_grid_images: images drawn in the grid.

    Returns:
        ``ooc_auroc`` (None without flags, NaN with one class only), ``n_objects``,
        ``n_images``, ``mean_distance`` and the output paths.
    """
    out_dir = output_dir(out_dir)
    object_size = object_size or image_size
    with_objects = [im for im in images if im.n_objects]
    scenes = embed_images(
        model, with_objects, image_size=image_size, batch_size=batch_size, num_workers=num_workers
    )
    owner = np.array([i for i, im in enumerate(with_objects) for _ in range(im.n_objects)], int)
    objects = embed_crops(
        model,
        [(im.path, tuple(box)) for im in with_objects for box in im.boxes],
        image_size=object_size,
        batch_size=batch_size,
        encoder="key",
        num_workers=num_workers,
    )
    c = curvature_of(model)
    scene_points = torch.from_numpy(scenes["ball"][owner] if len(owner) else scenes["ball"][:0])
    object_points = torch.from_numpy(objects["ball"])
    distance = poincare_distance(object_points, scene_points, c=c).numpy().astype(np.float64)
    scene_norm = scene_points.double().norm(dim=1).numpy() * math.sqrt(c)
    object_norm = object_points.double().norm(dim=1).numpy() * math.sqrt(c)
    flagged = any(im.out_of_context is not None for im in with_objects)

    rows: list[dict[str, Any]] = []
    k = 0
    for i, im in enumerate(with_objects):
        ok = bool(scenes["ok"][i])
        idx = np.arange(k, k + im.n_objects)
        k += im.n_objects
        if not ok:
            continue
        order = np.argsort(-distance[idx], kind="stable")
        rank = np.empty(len(idx), int)
        rank[order] = np.arange(1, len(idx) + 1)
        for j, row_idx in enumerate(idx):
            x1, y1, x2, y2 = (float(v) for v in im.boxes[j])
            ooc = im.out_of_context
            rows.append(
                {
                    "file_name": im.file_name,
                    "image_id": im.image_id,
                    "ann_id": int(im.ann_ids[j]),
                    "category_id": int(im.category_ids[j]),
                    "category": im.category_names[j],
                    "x1": x1,
                    "y1": y1,
                    "x2": x2,
                    "y2": y2,
                    "distance": float(distance[row_idx]),
                    "rank_in_image": int(rank[j]),
                    "scene_norm_fraction": float(scene_norm[row_idx]),
                    "object_norm_fraction": float(object_norm[row_idx]),
                    "out_of_context": int(ooc[j]) if ooc is not None else "",
                }
            )
    score = None
    if flagged:
        score = auroc([r["distance"] for r in rows], [r["out_of_context"] == 1 for r in rows])
    paths = {
        "csv": out_dir / "ooc_scores.csv",
        "json": out_dir / "ooc_scores.json",
        "grid": out_dir / "ooc_grid.png",
    }
    write_csv(paths["csv"], OOC_COLUMNS, rows)
    summary = {
        "ooc_auroc": score,
        "n_objects": len(rows),
        "n_images": len({r["image_id"] for r in rows}),
        "n_failed_images": int((~scenes["ok"]).sum()),
        "n_flagged": sum(r["out_of_context"] == 1 for r in rows),
        "mean_distance": float(np.mean([r["distance"] for r in rows])) if rows else math.nan,
        "curvature": c,
    }
    paths["json"].write_text(
        json.dumps({"summary": _json_safe(summary), "objects": rows}, indent=1)
    )
    _grid(paths["grid"], with_objects, rows, max_grid_images)
    return {**summary, **{k: str(v) for k, v in paths.items()}}


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf as None (JSON has no NaN)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}
