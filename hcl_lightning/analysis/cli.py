"""``hcl-analyze``: analyses of a trained HCL checkpoint from the command line.

``hcl-analyze COMMAND key=value ...``: the keys are Hydra overrides of
``hcl_lightning/conf/analyze.yaml``, whose ``data`` group is ``hcl-train``'s
(``data=synthetic``, the default, ``data=coco`` or ``data=folder``, with the same
``data.*`` keys)::

    hcl-analyze norms checkpoint=last.ckpt scene_crops=4      # on its training data
    hcl-analyze norms checkpoint=last.ckpt data=coco data.image_dir=DIR data.ann_file=FILE
    hcl-analyze out-of-context checkpoint=last.ckpt data.synthetic.contexts=true \\
        data.synthetic.ooc_fraction=0.2 out=out/ooc
    hcl-analyze embed checkpoint=last.ckpt data=folder data.image_dir=DIR format=pt
    hcl-analyze embed checkpoint=last.ckpt plot=true             # + map.png, poincare_disk.png
    hcl-analyze linear checkpoint=last.ckpt data=coco data.image_dir=DIR data.ann_file=FILE
    hcl-analyze knn checkpoint=last.ckpt data=folder data.image_dir=ROOT k=20 temperature=0.1
    hcl-analyze export checkpoint=last.ckpt format=detectron2 out=r50.pkl
    hcl-analyze export checkpoint=last.ckpt format=timm out=r50_timm.pth
    hcl-analyze norms --help                                   # the command's keys

Without any ``data=`` or ``data.*`` key, a checkpoint written by ``hcl-train`` is
analysed on the data it was trained on (its recorded ``data`` group; the command prints
``data_from_checkpoint=<image_dir>``), and the model's class is the one the checkpoint
names, unless ``model_class=`` says otherwise. For ``data=synthetic`` the scenes are
generated (or reused) exactly as ``hcl-train`` does (:func:`~hcl_lightning.data.synthetic.prepare_synthetic_data`). Each command
prints ``key=value`` lines (``spearman_rho=``, ``ooc_auroc=``, ...) that scripts can
grep, and the files it wrote. An invalid key or value exits with status 2, a failed
analysis with status 1. ``python -m hcl_lightning.analysis`` is the same program.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, OmegaConfBaseException

from hcl_lightning.analysis.embed import (
    embed_dataset,
    load_model,
    output_dir,
    read_checkpoint,
    read_coco,
    read_folder,
    resolve_device,
)
from hcl_lightning.analysis.evaluate import (
    OPTIMIZERS,
    LabelledSplit,
    cached_features,
    coco_crop_split,
    folder_split,
    train_linear,
)
from hcl_lightning.analysis.norms import norms_vs_objects
from hcl_lightning.analysis.out_of_context import out_of_context_scores
from hcl_lightning.analysis.plots import MAP_METHODS
from hcl_lightning.analysis.probes import knn_accuracy
from hcl_lightning.callbacks.run_config import CONFIG_KEY
from hcl_lightning.config import (
    ConfigError,
    check_choice,
    check_number,
    check_path,
    check_synthetic_node,
    require,
)
from hcl_lightning.data.synthetic import prepare_synthetic_data
from hcl_lightning.export import export_detectron2, export_timm, export_torchvision, resnet_name

__all__ = ["COMMANDS", "KEYS", "compose_config", "main"]

PROG = "hcl-analyze"

#: The analysis keys of ``analyze.yaml`` (besides ``data``) and what they mean.
KEYS = {
    "checkpoint": "Lightning .ckpt file (required)",
    "model_class": "class that rebuilds the model (package.module.Class); null: the checkpoint's",
    "out": "output folder (export: file or folder); null: analysis/<command>",
    "image_size": "side of the model input",
    "batch_size": "images per forward pass",
    "num_workers": "DataLoader workers",
    "device": "auto, cpu, cuda, cuda:1, ...",
    "min_box_size": "smallest box side kept, in pixels",
    "max_images": "analyse only the first N images; null: all",
    "seed": "seed of the scene crops (and of the data config)",
    "scene_crops": "random scene crops per image",
    "object_size": "side of the object crops; null: image_size",
    "grid_images": "images drawn in ooc_grid.png",
    "format": "output format",
    "encoder": "encoder used: online or momentum",
    "val_fraction": "images held out for val when there is no separate val set",
    "val_dir": "data=folder: class folders of the val images; null: a held-out part",
    "cache": "reuse the backbone features of an earlier run (out/features.pt)",
    "k": "neighbours of the kNN vote",
    "temperature": "temperature of the kNN vote weights exp(cos / t)",
    "epochs": "epochs of the linear classifier",
    "optimizer": "sgd (cosine schedule) or lbfgs (full batch)",
    "lr": "learning rate (lbfgs: initial step)",
    "weight_decay": "L2 penalty of the linear weights",
    "progress_bar": "show Lightning's progress bar",
    "plot": "also draw map.png (UMAP or t-SNE) and poincare_disk.png",
    "map_method": "2-D map: auto (UMAP if umap-learn is installed, else t-SNE), umap, tsne",
}
_KNOWN = (
    f"keys: {', '.join(KEYS)}; data=synthetic|coco|folder and its data.* keys "
    f"({PROG} COMMAND --help lists them)"
)
#: Integer keys: (smallest value, whether null is allowed).
INTEGER_KEYS = {
    "image_size": (1, False),
    "batch_size": (1, False),
    "num_workers": (0, False),
    "max_images": (1, True),
    "seed": (0, False),
    "scene_crops": (0, False),
    "object_size": (1, True),
    "grid_images": (0, False),
    "k": (1, False),
    "epochs": (1, False),
}
#: Float keys: the condition they must meet and its text.
FLOAT_KEYS = {
    "val_fraction": ("in (0, 1)", lambda v: 0 < v < 1),
    "temperature": ("> 0", lambda v: v > 0),
    "lr": ("> 0", lambda v: v > 0),
    "weight_decay": (">= 0", lambda v: v >= 0),
}
#: Integer keys of ``data.synthetic``: (key, smallest value, meaning).
SYNTHETIC_KEYS = (
    ("n_images", 1, "images generated"),
    ("image_size", 32, "side of the generated images"),
    ("max_objects", 1, "objects per generated image"),
)
#: Keys of every command that runs the model on images.
MODEL_KEYS = (
    "checkpoint",
    "model_class",
    "out",
    "image_size",
    "batch_size",
    "num_workers",
    "device",
    "min_box_size",
)
#: Keys of the analyses of unlabelled images (norms, out-of-context, embed).
IMAGE_KEYS = (*MODEL_KEYS, "max_images")
#: Keys of the frozen-backbone evaluations (linear, knn) besides their own.
EVAL_KEYS = (*MODEL_KEYS, "seed", "encoder", "val_fraction", "val_dir", "cache")


def _fmt(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.6f}"


def _out(cfg: DictConfig, command: str) -> Path:
    return Path(str(cfg.out)) if cfg.out is not None else Path("analysis") / command


def _images(cfg: DictConfig) -> list:
    """The images of ``cfg.data`` (generated first for ``data=synthetic``)."""
    prepare_synthetic_data(cfg)
    ann_file = OmegaConf.select(cfg, "data.ann_file")
    if ann_file is not None:
        images = read_coco(cfg.data.image_dir, ann_file, min_box_size=cfg.min_box_size)
    else:
        images = read_folder(cfg.data.image_dir)
    if cfg.max_images is not None:
        images = images[: cfg.max_images]
    if not images:
        raise FileNotFoundError(f"no images found in {cfg.data.image_dir}")
    return images


def _analyse(cfg: DictConfig, command: str, analysis, **kwargs) -> dict:
    """``analysis`` of the checkpoint's model on the images of ``cfg.data``.

    Passes the output folder, the shared keys (``image_size``, ``batch_size``,
    ``num_workers``) and ``kwargs``; returns what ``analysis`` returns.
    """
    images = _images(cfg)
    model = load_model(cfg.checkpoint, cfg.model_class, device=cfg.device)
    return analysis(
        model,
        images,
        _out(cfg, command),
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        **kwargs,
    )


def _print_values(result: dict, keys: Sequence[str]) -> None:
    for key in keys:
        print(f"{key}={result[key]}")


def _run_norms(cfg: DictConfig) -> None:
    result = _analyse(cfg, "norms", norms_vs_objects, scene_crops=cfg.scene_crops, seed=cfg.seed)
    print(f"spearman_rho={_fmt(result['spearman_rho'])}")
    print(f"spearman_p={_fmt(result['spearman_p'])}")
    _print_values(result, ("n_items", "norms_csv", "groups_csv", "plot"))


def _run_ooc(cfg: DictConfig) -> None:
    result = _analyse(
        cfg,
        "out-of-context",
        out_of_context_scores,
        object_size=cfg.object_size,
        max_grid_images=cfg.grid_images,
    )
    if result["ooc_auroc"] is not None:
        print(f"ooc_auroc={_fmt(result['ooc_auroc'])}")
    print(f"n_objects={result['n_objects']}")
    print(f"mean_distance={_fmt(result['mean_distance'])}")
    _print_values(result, ("csv", "json", "grid"))


def _run_embed(cfg: DictConfig) -> None:
    meta = _analyse(
        cfg,
        "embed",
        embed_dataset,
        fmt=cfg.format or "npy",
        plot=cfg.plot,
        map_method=cfg.map_method,
        seed=cfg.seed,
    )
    _print_values(meta, ("n_images", "feature_dim", "ball_dim"))
    if cfg.plot:
        _print_values(meta, ("map_method",))
        print(f"plots={','.join(meta['plots'])}")
    print(f"out={_out(cfg, 'embed')}")


def _labelled_split(cfg: DictConfig) -> LabelledSplit:
    """The labelled train/val images of ``cfg.data``: object crops of the boxes for data
    with an annotation file (val: ``data.validation`` when set), else class folders
    (val: ``val_dir`` when set); otherwise a seeded hold-out of ``val_fraction``."""
    prepare_synthetic_data(cfg)
    ann_file = OmegaConf.select(cfg, "data.ann_file")
    if ann_file is not None:
        return coco_crop_split(
            cfg.data.image_dir,
            ann_file,
            cfg.image_size,
            val_image_dir=OmegaConf.select(cfg, "data.validation.image_dir"),
            val_ann_file=OmegaConf.select(cfg, "data.validation.ann_file"),
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            min_box_size=cfg.min_box_size,
        )
    return folder_split(
        cfg.data.image_dir, cfg.image_size, cfg.val_dir, cfg.val_fraction, seed=cfg.seed
    )


def _evaluate(cfg: DictConfig, command: str, settings: dict, evaluation) -> None:
    """Features of the labelled split (cached), ``evaluation(features, split, out)``'s
    ``{"top1", "top5", ...}`` printed and written to ``out/<command>.json`` with
    ``settings`` and the sizes."""
    split = _labelled_split(cfg)
    out = output_dir(_out(cfg, command))
    model = load_model(cfg.checkpoint, cfg.model_class, device=cfg.device)
    features, from_cache = cached_features(
        model,
        cfg.checkpoint,
        split,
        out / "features.pt" if cfg.cache else None,
        encoder=cfg.encoder,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        settings={"image_size": cfg.image_size, "min_box_size": cfg.min_box_size},
    )
    result = evaluation(features, split, out)
    summary = {
        "command": command,
        "top1": result["top1"],
        "top5": result["top5"],
        "n_train": len(features["train_y"]),
        "n_val": len(features["val_y"]),
        "num_classes": len(split.class_names),
        "feature_dim": int(features["train_x"].shape[1]),
        "features_from_cache": from_cache,
        "checkpoint": str(Path(str(cfg.checkpoint)).resolve()),
        "encoder": cfg.encoder,
        "image_size": cfg.image_size,
        **settings,
        "class_names": split.class_names,
    }
    json_file = out / f"{command}.json"
    json_file.write_text(json.dumps(summary, indent=2))
    print(f"top1={_fmt(result['top1'])}")
    print(f"top5={_fmt(result['top5'])}")
    _print_values(summary, ("n_train", "n_val", "num_classes", "features_from_cache"))
    print(f"json={json_file}")


def _run_linear(cfg: DictConfig) -> None:
    settings = {
        key: cfg[key] for key in ("optimizer", "epochs", "lr", "weight_decay", "batch_size")
    }

    def linear(features, split, out):
        _, accuracy = train_linear(
            features,
            len(split.class_names),
            out,
            optimizer=cfg.optimizer,
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            accelerator="gpu" if resolve_device(cfg.device).type == "cuda" else "cpu",
            seed=cfg.seed,
            progress_bar=cfg.progress_bar,
        )
        return accuracy

    _evaluate(cfg, "linear", settings, linear)


def _run_knn(cfg: DictConfig) -> None:
    def knn(features, _split, _out):
        return knn_accuracy(
            features["train_x"],
            features["train_y"],
            features["val_x"],
            features["val_y"],
            k=cfg.k,
            temperature=cfg.temperature,
        )

    _evaluate(cfg, "knn", {"k": cfg.k, "temperature": cfg.temperature}, knn)


#: Default file of each export format when ``out`` is a folder.
EXPORT_FILES = {
    "torchvision": "backbone_torchvision.pth",
    "timm": "backbone_timm.pth",
    "detectron2": "backbone.pkl",
}


def _run_export(cfg: DictConfig) -> None:
    fmt = cfg.format or "torchvision"
    out = _out(cfg, "export")
    if out.is_dir() or not out.suffix:
        out = out / EXPORT_FILES[fmt]
    if fmt == "detectron2":
        n = len(export_detectron2(cfg.checkpoint, out, encoder=cfg.encoder)["model"])
    else:
        export = export_timm if fmt == "timm" else export_torchvision
        state = export(cfg.checkpoint, out, encoder=cfg.encoder)
        n = len(state)
        print(f"architecture={resnet_name(state)}")
    print(f"n_tensors={n}")
    print(f"out={out}")


@dataclass(frozen=True)
class Command:
    """A subcommand: what it runs, its help line, the keys it reads, the ``format``
    values it accepts (the first is the default), and whether it needs images
    (``data``) and their object boxes (an annotation file)."""

    run: Callable[[DictConfig], None]
    help: str
    keys: tuple[str, ...]
    formats: tuple[str, ...] = ()
    images: bool = True
    boxes: bool = True


COMMANDS = {
    "norms": Command(
        _run_norms,
        "ball norm vs. number of objects (HCL Figure 3); prints spearman_rho=",
        (*IMAGE_KEYS, "scene_crops", "seed"),
    ),
    "out-of-context": Command(
        _run_ooc,
        "object-to-scene hyperbolic distances (HCL Figure 5); prints ooc_auroc=",
        (*IMAGE_KEYS, "object_size", "grid_images"),
    ),
    "embed": Command(
        _run_embed,
        "Euclidean and ball embeddings of whole images; plot=true: UMAP/t-SNE + Poincaré disk",
        (*IMAGE_KEYS, "format", "plot", "map_method", "seed"),
        formats=("npy", "pt"),
        boxes=False,
    ),
    "linear": Command(
        _run_linear,
        "linear classifier on frozen backbone features; prints top1=, top5=",
        (*EVAL_KEYS, "epochs", "optimizer", "lr", "weight_decay", "progress_bar"),
        boxes=False,
    ),
    "knn": Command(
        _run_knn,
        "weighted kNN on frozen backbone features; prints top1=, top5=",
        (*EVAL_KEYS, "k", "temperature"),
        boxes=False,
    ),
    "export": Command(
        _run_export,
        "backbone weights for torchvision, timm or detectron2 (no data needed)",
        ("checkpoint", "model_class", "out", "format", "encoder"),
        formats=("torchvision", "timm", "detectron2"),
        images=False,
    ),
}


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """``hcl_lightning/conf/analyze.yaml`` composed with Hydra ``overrides``."""
    with initialize_config_module(config_module="hcl_lightning.conf", version_base=None):
        return compose("analyze", overrides=list(overrides))


def _check(cfg: DictConfig, command: Command) -> None:
    """Raises :class:`ConfigError` for the first key of ``command`` that cannot work."""
    unknown = sorted(set(cfg.keys()) - {"data", *KEYS})
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; {_KNOWN}")
    check_path(cfg, "checkpoint", directory=False, optional=False)
    if "format" in command.keys and require(cfg, "format") is not None:
        check_choice(cfg, "format", command.formats, f"null means {command.formats[0]}")
    if "encoder" in command.keys:
        check_choice(cfg, "encoder", ("online", "momentum"), "encoder used")
    if "map_method" in command.keys:
        check_choice(cfg, "map_method", MAP_METHODS, "2-D map of plot=true")
    if "optimizer" in command.keys:
        check_choice(cfg, "optimizer", OPTIMIZERS, KEYS["optimizer"])
    if not command.images:
        return
    for key, (low, nullable) in INTEGER_KEYS.items():
        if key not in command.keys or (nullable and require(cfg, key) is None):
            continue
        allowed = f">= {low}" + (" or null" if nullable else "")
        check_number(cfg, key, allowed, lambda v, low=low: v >= low, integer=True)
    for key, (allowed, ok) in FLOAT_KEYS.items():
        if key in command.keys:
            check_number(cfg, key, allowed, ok)
    if "val_dir" in command.keys:
        check_path(cfg, "val_dir", directory=True, optional=True)
    check_number(cfg, "min_box_size", ">= 0", lambda v: v >= 0)
    try:
        resolve_device(str(require(cfg, "device")))
    except RuntimeError as error:
        raise ConfigError(f"device={cfg.device!r}: {error}") from None
    if OmegaConf.select(cfg, "data.synthetic") is not None:
        for key, low, _what in SYNTHETIC_KEYS:
            ok = lambda v, low=low: v >= low  # noqa: E731
            check_number(cfg, f"data.synthetic.{key}", f">= {low}", ok, integer=True)
        check_synthetic_node(cfg)
        return  # generated: image_dir and ann_file are filled in later
    check_path(cfg, "data.image_dir", directory=True, optional=False)
    if "ann_file" in cfg.data:
        check_path(cfg, "data.ann_file", directory=False, optional=True)
    if command.boxes and OmegaConf.select(cfg, "data.ann_file") is None:
        raise ConfigError(
            "data.ann_file is not set: this command needs object boxes; use data=coco "
            "data.image_dir=DIR data.ann_file=FILE, or data=synthetic"
        )


def _use_training_data(cfg: DictConfig, overrides: Sequence[str]) -> str | None:
    """Replaces ``cfg.data`` by the data the checkpoint was trained on (recorded by
    ``hcl-train``) unless an override names the data (``data=...``, ``data.*``); returns
    that data's ``image_dir``, or None when ``cfg.data`` was left as composed."""
    keys = [arg.split("=", 1)[0].lstrip("+~") for arg in overrides]
    if any(key == "data" or key.startswith("data.") for key in keys):
        return None
    if OmegaConf.is_missing(cfg, "checkpoint") or not Path(str(cfg.checkpoint)).is_file():
        return None  # reported by _check
    saved, _ = read_checkpoint(cfg.checkpoint)
    data = (saved.get(CONFIG_KEY) or {}).get("data")
    if not data:
        return None
    with open_dict(cfg):
        cfg.data = OmegaConf.create(data)
    return str(cfg.data.image_dir)


def _flat(node: dict, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, value as on the command line)`` of the leaves of ``node``, without
    ``_target_``-like keys; values are unresolved (``${...}``)."""
    items = []
    for key, value in node.items():
        if str(key).startswith("_"):
            continue
        if isinstance(value, dict):
            items += _flat(value, f"{prefix}{key}.")
        else:
            shown = "null" if value is None else str(value)
            items.append((f"{prefix}{key}", shown.lower() if isinstance(value, bool) else shown))
    return items


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} COMMAND [key=value ...]",
        "",
        "Analyses of a Hyperbolic Contrastive Learning checkpoint. The keys are Hydra",
        "overrides of hcl_lightning/conf/analyze.yaml; data=synthetic (default), coco or",
        "folder chooses hcl-train's data group, with the same data.* keys.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()),
        "",
        "examples:",
        f"  {PROG} norms checkpoint=CKPT data=coco data.image_dir=DIR data.ann_file=FILE",
        f"  {PROG} out-of-context checkpoint=CKPT data.synthetic.contexts=true "
        "data.synthetic.ooc_fraction=0.2",
        f"  {PROG} embed checkpoint=CKPT data=folder data.image_dir=DIR format=pt",
        f"  {PROG} embed checkpoint=CKPT plot=true",
        f"  {PROG} linear checkpoint=CKPT data=coco data.image_dir=DIR data.ann_file=FILE",
        f"  {PROG} knn checkpoint=CKPT data=folder data.image_dir=ROOT k=20",
        f"  {PROG} export checkpoint=CKPT format=detectron2 out=r50.pkl",
        "",
        f"'{PROG} COMMAND --help' lists the command's keys and their defaults.",
    ]
    return "\n".join(lines)


def _command_help(name: str, overrides: Sequence[str]) -> str:
    """The keys of command ``name`` and of the chosen data group, with their values."""
    command = COMMANDS[name]
    cfg = OmegaConf.to_container(compose_config(overrides), resolve=False)
    values = dict(_flat(cfg))
    rows = [(f"{key}={values[key]}", KEYS[key]) for key in command.keys]
    if command.formats:
        formats = f"{KEYS['format']}: {' | '.join(command.formats)} (null: {command.formats[0]})"
        rows = [(key, formats if key.startswith("format=") else text) for key, text in rows]
    width = max(len(k) for k, _ in rows)
    lines = [
        f"usage: {PROG} {name} checkpoint=CKPT [key=value ...]",
        "",
        command.help,
        "",
        "keys (current values):",
        *(f"  {key:<{width}}  {text}" for key, text in rows),
    ]
    if command.images:
        data = [f"  {key}={value}" for key, value in _flat(cfg["data"], "data.")]
        lines += ["", "data (data=synthetic | coco | folder, as in hcl-train):", *data]
    return "\n".join(lines)


def _one_line(error: BaseException) -> str:
    """A config or Hydra error as one line (unknown keys named as such)."""
    if isinstance(error.__cause__, ConfigAttributeError):  # override of a missing key
        error = ConfigError(f"unknown key {error.__cause__.full_key!r}; {_KNOWN}")
    text = str(error).split("Config search path")[0]  # Hydra's "no such option" tail
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hcl-analyze``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, overrides = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"{PROG}: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    help_requested = any(arg in ("-h", "--help") for arg in overrides)
    overrides = [arg for arg in overrides if arg not in ("-h", "--help")]
    try:
        flags = [arg for arg in overrides if arg.startswith("-")]
        if flags:
            raise ConfigError(
                f"{flags[0]}: options are key=value overrides now, e.g. checkpoint=PATH "
                f"data=coco data.image_dir=DIR (see {PROG} {name} --help)"
            )
        if help_requested:
            print(_command_help(name, overrides))
            return 0
        cfg = compose_config(overrides)
        trained_on = _use_training_data(cfg, overrides) if COMMANDS[name].images else None
        _check(cfg, COMMANDS[name])
    except (ConfigError, HydraException, OmegaConfBaseException) as error:
        print(f"{PROG} {name}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    if trained_on is not None:
        print(f"data_from_checkpoint={trained_on}")
    try:
        COMMANDS[name].run(cfg)
    except (FileNotFoundError, ValueError) as error:
        print(f"{PROG} {name}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
