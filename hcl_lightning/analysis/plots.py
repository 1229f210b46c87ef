"""Pictures of embeddings: a 2-D map (UMAP or t-SNE) and the Poincaré disk.

- :func:`map_2d`: 2-D coordinates of feature vectors, by UMAP when ``umap-learn`` is
  installed (``pip install "hcl-lightning[umap]"``), else by scikit-learn's t-SNE;
- :func:`disk_projection`: ball points projected to the unit disk with their norms
  kept (the radial position is the hyperbolic signal; only the direction is reduced);
- :func:`plot_map` and :func:`plot_disk`: the PNGs of ``hcl-analyze embed plot=true``,
  points coloured by class, out-of-context objects marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["disk_projection", "map_2d", "plot_disk", "plot_map", "pyplot"]

#: Methods of :func:`map_2d`.
MAP_METHODS = ("auto", "umap", "tsne")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def map_2d(x: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows of ``x`` (N, F) and the method used.

    ``method="umap"``: UMAP (cosine metric, ``n_neighbors`` min(15, N - 1)); needs
    ``umap-learn``. ``"tsne"``: scikit-learn's t-SNE (PCA initialisation, cosine metric,
    perplexity min(30, (N - 1) / 3)). ``"auto"``: UMAP when ``umap-learn`` imports, else
    t-SNE. Seeded by ``seed``.

    Raises:
        ValueError: for an unknown method or fewer than 3 rows.
        ImportError: for ``method="umap"`` without ``umap-learn``.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"method must be one of {MAP_METHODS}, got {method!r}")
    x = np.asarray(x, np.float32)
    if len(x) < 3:
        raise ValueError(f"a 2-D map needs at least 3 points, got {len(x)}")
    if method in ("auto", "umap"):
        try:
            import umap
        except ImportError:
            if method == "umap":
                raise ImportError(
                    'method="umap" needs umap-learn: pip install "hcl-lightning[umap]"'
                ) from None
        else:
            reducer = umap.UMAP(n_neighbors=min(15, len(x) - 1), metric="cosine", random_state=seed)
            return np.asarray(reducer.fit_transform(x)), "umap"
    from sklearn.manifold import TSNE

    tsne = TSNE(
        perplexity=min(30.0, (len(x) - 1) / 3),
        init="pca",
        metric="cosine",
        random_state=seed,
    )
    return tsne.fit_transform(x), "tsne"


def _directions(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1), 1e-12)[:, None]


def disk_projection(
    ball: np.ndarray, curvature: float, reference: np.ndarray | None = None
) -> np.ndarray:
    """Points of a Poincaré ball of curvature ``-curvature`` in the unit disk, norms kept.

    Each point ``x`` goes to ``r * u``: ``r = sqrt(c) * |x|`` its norm as a fraction of
    the radius (what the HCL analyses read), ``u`` the unit direction of ``x``'s
    projection onto the first two principal axes of the directions ``y / |y|`` of the
    ``reference`` points (default: ``ball`` itself; e.g. the objects alone, so that
    their classes spread over the disk rather than the scene/object contrast). A point
    whose projected direction vanishes (or the origin) goes to ``(r, 0)``.

    Returns:
        (N, 2) float64 points with norms ``sqrt(c) * |x|`` < 1.
    """
    ball = np.asarray(ball, np.float64)
    reference = ball if reference is None else np.asarray(reference, np.float64)
    centred = _directions(reference) - _directions(reference).mean(0)
    axes = np.eye(ball.shape[1], 2)
    if len(reference) > 1 and ball.shape[1] > 1:
        vt = np.linalg.svd(centred, full_matrices=False)[2]
        if vt.shape[0] >= 2:
            axes = vt[:2].T
    flat = _directions(ball) @ axes
    length = np.linalg.norm(flat, axis=1, keepdims=True)
    unit = np.where(length > 1e-12, flat / np.maximum(length, 1e-12), [1.0, 0.0])
    return unit * (np.linalg.norm(ball, axis=1) * np.sqrt(curvature))[:, None]


def _scatter_classes(ax, points: np.ndarray, classes: Sequence[str], ooc: np.ndarray | None):
    """Points coloured by class (legend), out-of-context ones ringed in black."""
    plt = pyplot()
    names = sorted(set(classes))
    # tab10 without its grey (the scenes' colour), tab20 for more classes
    colours = [plt.get_cmap("tab10")(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
    if len(names) > len(colours):
        colours = [plt.get_cmap("tab20")(i) for i in range(20)]
    classes = np.asarray(classes)
    for i, name in enumerate(names):
        sel = classes == name
        colour = colours[i % len(colours)]
        ax.scatter(*points[sel].T, s=14, color=colour, alpha=0.8, label=name)
    if ooc is not None and ooc.any():
        ax.scatter(
            *points[ooc.astype(bool)].T,
            s=45,
            facecolors="none",
            edgecolors="black",
            linewidths=0.8,
            label=f"out of context ({int(ooc.sum())})",
        )


def _save(fig, ax, path: Path) -> Path:
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


def plot_map(
    coords: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    title: str,
    ooc: np.ndarray | None = None,
) -> Path:
    """Scatter plot of 2-D ``coords`` (e.g. of :func:`map_2d`) coloured by ``classes``,
    with the ``ooc`` (0/1) points ringed; written to ``path`` (PNG)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    _scatter_classes(ax, np.asarray(coords), classes, ooc)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, ax, Path(path))


def plot_disk(
    objects: np.ndarray,
    classes: Sequence[str],
    path: str | Path,
    title: str,
    ooc: np.ndarray | None = None,
    scenes: np.ndarray | None = None,
) -> Path:
    """The unit Poincaré disk with :func:`disk_projection` points: ``objects`` coloured
    by ``classes`` (``ooc`` ringed), ``scenes`` (whole images) as grey crosses, and
    dotted circles at norm fractions 0.25, 0.5, 0.75; written to ``path`` (PNG)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 6))
    angles = np.linspace(0, 2 * np.pi, 361)
    ax.plot(np.cos(angles), np.sin(angles), color="black", linewidth=1)
    for r in (0.25, 0.5, 0.75):
        ax.plot(r * np.cos(angles), r * np.sin(angles), ":", color="grey", linewidth=0.7)
    if scenes is not None and len(scenes):
        ax.scatter(
            *np.asarray(scenes).T,
            s=18,
            marker="x",
            color="silver",
            alpha=0.9,
            label=f"scenes ({len(scenes)})",
        )
    _scatter_classes(ax, np.asarray(objects), classes, ooc)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return _save(fig, ax, Path(path))
