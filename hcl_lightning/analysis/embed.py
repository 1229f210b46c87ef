"""Loading a trained model and embedding images, whole or cropped, into its Poincaré ball.

Shared by the analyses (:mod:`~hcl_lightning.analysis.norms`,
:mod:`~hcl_lightning.analysis.out_of_context`) and the ``embed`` command, which writes
Euclidean (backbone) and ball embeddings of a dataset to ``.npy`` (or ``.pt``) files.
"""

from __future__ import annotations

import csv
import importlib
import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hcl_lightning.data.boxes import CocoBoxSource, list_images
from hcl_lightning.data.eval_crops import Box, RegionCropDataset, eval_transform
from hcl_lightning.mixin import MODEL_KEY

__all__ = [
    "DEFAULT_MODEL_CLASS",
    "AnnotatedImage",
    "CropDataset",
    "embed_crops",
    "embed_dataset",
    "eval_transform",
    "load_model",
    "read_checkpoint",
    "read_coco",
    "read_folder",
    "resolve_device",
]

#: Class that rebuilds a model from a checkpoint that names none (written before
#: checkpoints recorded their class).
DEFAULT_MODEL_CLASS = "hcl_lightning.baselines.HCLMoCoV2"


# -- model ----------------------------------------------------------------------------
def _import_class(spec: str | type) -> type:
    """A class from ``"pkg.module:Class"`` or ``"pkg.module.Class"``."""
    if isinstance(spec, type):
        return spec
    module_name, _, name = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not name:
        raise ValueError(f"model class must look like 'package.module.Class', got {spec!r}")
    return getattr(importlib.import_module(module_name), name)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) picks CUDA when available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def read_checkpoint(checkpoint: str | Path) -> tuple[dict[str, Any], bool]:
    """The checkpoint's dict, and whether ``torch.load(weights_only=True)`` read it.

    Lightning checkpoints may also pickle hyperparameters of a datamodule (paths,
    OmegaConf containers): those are loaded in full, as Lightning would, which unpickles
    code (trusted files only).

    Raises:
        FileNotFoundError: If the file does not exist.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True), True
    except pickle.UnpicklingError:
        return torch.load(checkpoint, map_location="cpu", weights_only=False), False


def load_model(
    checkpoint: str | Path,
    model_class: str | type | None = None,
    device: str | torch.device | None = "auto",
) -> pl.LightningModule:
    """Rebuilds an HCL LightningModule from a Lightning checkpoint, in eval mode.

    The class is ``model_class`` if given, else the one the checkpoint names (every
    HCL module records its class and ``hcl_*`` arguments, see
    :meth:`~hcl_lightning.HCLMixin.on_save_checkpoint`), else, for checkpoints written
    before that, :data:`DEFAULT_MODEL_CLASS`. The saved hyperparameters and the
    recorded ``hcl_*`` arguments rebuild the module (see :func:`read_checkpoint` on
    how the file is read).

    Raises:
        FileNotFoundError: If the checkpoint does not exist.
        TypeError: If the class is not an HCL module.
    """
    saved, weights_only = read_checkpoint(checkpoint)
    recorded = saved.get(MODEL_KEY) or {}
    spec = model_class or recorded.get("class") or DEFAULT_MODEL_CLASS
    cls = _import_class(spec)
    hcl_arguments = recorded.get("hcl_arguments", {}) if spec == recorded.get("class") else {}
    model = cls.load_from_checkpoint(
        checkpoint, map_location="cpu", weights_only=weights_only, **hcl_arguments
    )
    if not (hasattr(model, "hcl_head") and hasattr(model, "hcl_query")):
        raise TypeError(f"{cls.__name__} is not an HCL module (no hcl_head / hcl_query)")
    return model.to(resolve_device(device)).eval()


# -- images ---------------------------------------------------------------------------
@dataclass
class AnnotatedImage:
    """One image and its annotated objects, as the analyses need them.

    Attributes:
        path: image file.
        file_name: name relative to the image folder.
        image_id: id in the annotation file (or the index in the folder).
        boxes: float32 (M, 4) xyxy pixel boxes, clipped to the image.
        ann_ids: (M,) annotation ids (-1 when unknown).
        category_ids: (M,) category ids of the annotation file (-1 when unknown).
        category_names: M names ("" when unknown).
        out_of_context: (M,) 0/1 flags when the annotations carry ``out_of_context``
            (missing flags count as 0), else None.
    """

    path: Path
    file_name: str
    image_id: int
    width: int | None = None
    height: int | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    ann_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    category_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    category_names: list[str] = field(default_factory=list)
    out_of_context: np.ndarray | None = None

    @property
    def n_objects(self) -> int:
        return len(self.boxes)


def read_coco(
    image_dir: str | Path, ann_file: str | Path, min_box_size: float = 1.0
) -> list[AnnotatedImage]:
    """Images and non-crowd boxes of a COCO instances file, read by
    :class:`~hcl_lightning.data.CocoBoxSource` (boxes clipped, tiny ones dropped), with
    what the analyses need besides: annotation ids, category ids and names, and the
    optional ``out_of_context`` flag.

    Raises:
        FileNotFoundError, ValueError: as :class:`~hcl_lightning.data.CocoBoxSource`.
    """
    source = CocoBoxSource(
        image_dir, ann_file, min_box_size, annotation_fields={"id": -1, "out_of_context": 0}
    )
    flagged = "out_of_context" in source.annotation_fields_seen
    category_ids = np.asarray(source.category_ids, np.int64)
    image_dir = Path(image_dir)
    images = []
    for record in source.records:
        images.append(
            AnnotatedImage(
                path=record.path,
                file_name=(
                    record.path.relative_to(image_dir).as_posix()
                    if record.path.is_relative_to(image_dir)
                    else str(record.path)
                ),
                image_id=int(record.image_id),
                width=record.width,
                height=record.height,
                boxes=record.boxes,
                ann_ids=record.annotations["id"],
                category_ids=category_ids[record.labels],
                category_names=[source.class_names[label] for label in record.labels],
                out_of_context=record.annotations["out_of_context"] if flagged else None,
            )
        )
    return images


def read_folder(image_dir: str | Path) -> list[AnnotatedImage]:
    """Every image under a folder (recursively, sorted), without boxes."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image_dir not found: {image_dir}")
    return [
        AnnotatedImage(path=p, file_name=str(p.relative_to(image_dir)), image_id=i)
        for i, p in enumerate(list_images(image_dir))
    ]


#: Former name of :class:`~hcl_lightning.data.eval_crops.RegionCropDataset`.
CropDataset = RegionCropDataset


# -- embedding ------------------------------------------------------------------------
@torch.no_grad()
def embed_crops(
    model: pl.LightningModule,
    items: Sequence[tuple[Path, Box | None]],
    image_size: int = 224,
    batch_size: int = 64,
    encoder: str = "online",
    num_workers: int = 0,
    features: bool = False,
) -> dict[str, np.ndarray]:
    """Embeds image regions into the model's Poincaré ball.

    Args:
        model: an HCL module (``hcl_head``, ``hcl_query``, ``hcl_key``) in eval mode.
        items: ``(image path, xyxy box or None for the whole image)``.
        image_size: side the regions are resized to.
        batch_size: regions per forward pass.
        encoder: ``"online"`` (``hcl_query``: scenes) or ``"key"`` (``hcl_key``: the
            momentum encoder, for objects).
        num_workers: DataLoader workers.
        features: also return the backbone's Euclidean features (captured by a forward
            hook on ``model.backbone`` / ``model.backbone_momentum``).

    Returns:
        ``ball`` (N, D) float32 ball points, ``ok`` (N,) bool (False: unreadable
        image, zero input), and with ``features=True`` ``features`` (N, F).
    """
    if encoder not in ("online", "key"):
        raise ValueError(f"encoder must be 'online' or 'key', got {encoder!r}")
    device = next(model.parameters()).device
    encode = model.hcl_query if encoder == "online" else model.hcl_key
    captured: list[Tensor] = []
    hook = None
    backbone = getattr(model, "backbone", None)
    if encoder == "key" and isinstance(getattr(model, "backbone_momentum", None), nn.Module):
        backbone = model.backbone_momentum
    if features and isinstance(backbone, nn.Module):
        hook = backbone.register_forward_hook(
            lambda _m, _i, out: captured.append(out.flatten(start_dim=1))
        )
    loader = DataLoader(
        RegionCropDataset(items, image_size), batch_size=batch_size, num_workers=num_workers
    )
    balls, feats, oks = [], [], []
    try:
        for x, ok in loader:
            captured.clear()
            x = x.to(device)
            ball = model.hcl_head(encode(x))
            if features:
                if not captured:  # the module does not route through `backbone`
                    if not isinstance(backbone, nn.Module):
                        raise AttributeError(f"{type(model).__name__} has no `backbone`")
                    captured.append(backbone(x).flatten(start_dim=1))
                feats.append(captured[-1].float().cpu())
            balls.append(ball.float().cpu())
            oks.append(ok)
    finally:
        if hook is not None:
            hook.remove()
    dim = model.hcl_head.output_dim
    out = {
        "ball": torch.cat(balls).numpy() if balls else np.zeros((0, dim), np.float32),
        "ok": torch.cat(oks).numpy().astype(bool) if oks else np.zeros((0,), bool),
    }
    if features:
        out["features"] = torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32)
    return out


def embed_images(
    model: pl.LightningModule,
    images: Sequence[AnnotatedImage],
    image_size: int = 224,
    batch_size: int = 64,
    num_workers: int = 0,
    features: bool = False,
) -> dict[str, np.ndarray]:
    """:func:`embed_crops` of the whole ``images`` (scenes) by the online encoder."""
    return embed_crops(
        model,
        [(im.path, None) for im in images],
        image_size=image_size,
        batch_size=batch_size,
        num_workers=num_workers,
        features=features,
    )


def curvature_of(model: pl.LightningModule) -> float:
    """The (current) curvature magnitude ``c`` of the model's ball."""
    return float(model.hcl_head.curvature.detach())


# -- outputs --------------------------------------------------------------------------
def output_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a :class:`~pathlib.Path`, created (with its parents) if missing."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` as a CSV file with a header of ``columns``."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def embed_dataset(
    model: pl.LightningModule,
    images: Sequence[AnnotatedImage],
    out_dir: str | Path,
    image_size: int = 224,
    batch_size: int = 64,
    num_workers: int = 0,
    fmt: str = "npy",
    plot: bool = False,
    map_method: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Writes whole-image embeddings of ``images`` to ``out_dir`` (and, with ``plot``,
    the pictures of :func:`plot_embeddings`).

    Files (``fmt="npy"``): ``features.npy`` (N, F) backbone features of the online
    encoder, ``ball.npy`` (N, D) Poincaré points, ``norms.npy`` (N,) ball norms as a
    fraction of the radius, ``files.txt`` (one file name a line, in row order) and
    ``meta.json`` (curvature, dims, failed files). ``fmt="pt"`` writes one
    ``embeddings.pt`` dict with the same entries (``files`` a list) instead of the arrays.

    Returns:
        The summary written to ``meta.json`` (with ``plot``: also ``map_method`` and
        ``plots``, the PNG files).
    """
    if fmt not in ("npy", "pt"):
        raise ValueError(f"fmt must be 'npy' or 'pt', got {fmt!r}")
    out_dir = output_dir(out_dir)
    result = embed_images(
        model,
        images,
        image_size=image_size,
        batch_size=batch_size,
        num_workers=num_workers,
        features=True,
    )
    c = curvature_of(model)
    norms = np.linalg.norm(result["ball"], axis=1) * np.sqrt(c)
    files = [im.file_name for im in images]
    meta = {
        "n_images": len(files),
        "curvature": c,
        "feature_dim": int(result["features"].shape[1]),
        "ball_dim": int(result["ball"].shape[1]),
        "image_size": image_size,
        "failed": [f for f, ok in zip(files, result["ok"], strict=True) if not ok],
    }
    if fmt == "npy":
        np.save(out_dir / "features.npy", result["features"])
        np.save(out_dir / "ball.npy", result["ball"])
        np.save(out_dir / "norms.npy", norms.astype(np.float32))
        (out_dir / "files.txt").write_text("".join(f + "\n" for f in files))
    else:
        torch.save(
            {
                "features": torch.from_numpy(result["features"]),
                "ball": torch.from_numpy(result["ball"]),
                "norms": torch.from_numpy(norms.astype(np.float32)),
                "files": files,
                "curvature": c,
            },
            out_dir / "embeddings.pt",
        )
    if plot:
        meta.update(
            plot_embeddings(
                model,
                images,
                result,
                out_dir,
                image_size,
                batch_size,
                num_workers,
                map_method,
                seed,
            )
        )
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def _folder_class(file_name: str) -> str:
    """Class of an image of a folder: its first sub-folder (ImageFolder layout)."""
    parts = Path(file_name).parts
    return parts[0] if len(parts) > 1 else "images"


def plot_embeddings(
    model: pl.LightningModule,
    images: Sequence[AnnotatedImage],
    scenes: dict[str, np.ndarray],
    out_dir: Path,
    image_size: int = 224,
    batch_size: int = 64,
    num_workers: int = 0,
    map_method: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Draws ``map.png`` and ``poincare_disk.png`` into ``out_dir``.

    With object boxes (e.g. :func:`read_coco`), the points are the objects, cropped and
    embedded by the key encoder as in training, coloured by category and ringed when
    flagged ``out_of_context``: ``map.png`` is the 2-D map (:func:`~hcl_lightning.
    analysis.plots.map_2d`, UMAP or t-SNE) of their backbone features,
    ``poincare_disk.png`` their ball points with the whole images (``scenes``, the
    :func:`embed_images` result) as grey crosses, projected together by
    :func:`~hcl_lightning.analysis.plots.disk_projection` (norms kept) onto the principal
    axes of the objects' directions. Without boxes
    the points are the whole images, coloured by their sub-folder (the ImageFolder
    class). Unreadable images and crops are left out.

    Returns:
        ``{"map_method": "umap" | "tsne", "plots": [map.png, poincare_disk.png]}``.
    """
    from hcl_lightning.analysis.plots import disk_projection, map_2d, plot_disk, plot_map

    c = curvature_of(model)
    with_boxes = [im for im in images if im.n_objects]
    scene_ball = scenes["ball"][scenes["ok"]]
    if with_boxes:
        items = [(im.path, tuple(map(float, box))) for im in with_boxes for box in im.boxes]
        points = embed_crops(model, items, image_size, batch_size, "key", num_workers, True)
        classes = [name or "?" for im in with_boxes for name in im.category_names]
        flags = [im.out_of_context for im in with_boxes]
        ooc = (
            None
            if all(f is None for f in flags)
            else np.concatenate(
                [
                    f if f is not None else np.zeros(im.n_objects, np.int64)
                    for f, im in zip(flags, with_boxes, strict=True)
                ]
            )
        )
        what = "objects"
    else:
        points = scenes
        classes = [_folder_class(im.file_name) for im in images]
        ooc, what = None, "images"
    ok = points["ok"]
    classes = [name for name, keep in zip(classes, ok, strict=True) if keep]
    ooc = None if ooc is None else ooc[ok]
    coords, method = map_2d(points["features"][ok], map_method, seed)
    name = "UMAP" if method == "umap" else "t-SNE"
    plots = [
        plot_map(coords, classes, out_dir / "map.png", f"{name} of backbone features ({what})", ooc)
    ]
    ball = points["ball"][ok]
    others = scene_ball if with_boxes else np.zeros((0, ball.shape[1]), ball.dtype)
    disk = disk_projection(np.concatenate([ball, others]), c, reference=ball)
    plots.append(
        plot_disk(
            disk[: len(ball)],
            classes,
            out_dir / "poincare_disk.png",
            f"Poincaré disk, c = {c:.3g} (norm / radius kept)",
            ooc,
            scenes=disk[len(ball) :] if with_boxes else None,
        )
    )
    return {"map_method": method, "plots": [str(path) for path in plots]}
