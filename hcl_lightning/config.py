"""Checks of an ``hcl-train`` config, run before anything heavy is built.

Each error names the key, the bad value and what is allowed, e.g.
``hcl.tau=0: must be a finite number > 0 (temperature of the hyperbolic InfoNCE)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from hcl_lightning.baselines.base import check_speed_options
from hcl_lightning.mixin import HEAD_MODES

__all__ = ["ConfigError", "validate_config"]

#: Side above which the small-input (stride-1) stem makes a ResNet needlessly slow.
SMALL_INPUT_MAX_SIZE = 96


class ConfigError(ValueError):
    """An ``hcl-train`` config value that cannot work."""


def _get(cfg: DictConfig, key: str) -> Any:
    """The value at dotted ``key``; ``ConfigError`` if it is missing (``???``)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or leaf not in node.keys():  # keys(): also `???`
        raise ConfigError(f"{key} is not set: the config has no such key")
    if OmegaConf.is_missing(node, leaf):
        raise ConfigError(f"{key} is required: pass {key}=<value> on the command line")
    return node[leaf]


def _number(cfg: DictConfig, key: str, allowed: str, ok, what: str, integer=False) -> None:
    value = _get(cfg, key)
    kind = int if integer else (int, float)
    valid = (
        isinstance(value, kind)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and ok(value)
    )
    if not valid:
        number = "an integer" if integer else "a finite number"
        raise ConfigError(f"{key}={value!r}: must be {number} {allowed} ({what})")


def _choice(cfg: DictConfig, key: str, allowed: Iterable[Any], what: str) -> None:
    value = _get(cfg, key)
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(
            f"{key}={value!r}: must be one of {', '.join(map(str, allowed))} ({what})"
        )


def _path(cfg: DictConfig, key: str, directory: bool, optional: bool) -> None:
    value = _get(cfg, key)
    if value is None:
        if optional:
            return
        raise ConfigError(f"{key} is required: pass {key}=<path>")
    path = Path(str(value)).expanduser()
    exists = path.is_dir() if directory else path.is_file()
    if not exists:
        kind = "directory" if directory else "file"
        raise ConfigError(f"{key}={value}: {kind} not found ({path.resolve()})")


def validate_config(cfg: DictConfig) -> None:
    """Raises :class:`ConfigError` (a ``ValueError``) for the first value that cannot work.

    Checks the ``hcl`` group (``lam`` >= 0, ``tau`` > 0, ``c`` > 0, ``queue_size`` >= 0,
    ``head``), ``data.batch_size`` and crop sizes, that ``data.image_dir`` /
    ``data.ann_file`` / ``data.proposals`` exist (not for generated synthetic data,
    whose paths are filled in later), the model target, ``ckpt_path`` and the speed
    options (``model.channels_last``, ``model.compile_backbone``, ``model.compile_mode``,
    ``hcl.batched_forward``). Warns when the small-input stem is combined with large
    crops (``preset=demo`` on real data).

    Args:
        cfg: the composed config of ``hcl-train``.

    Raises:
        ConfigError: naming the key, its value and what is allowed.
    """
    for group in ("model", "data", "trainer", "hcl"):
        if not isinstance(OmegaConf.select(cfg, group), DictConfig):
            raise ConfigError(f"{group}: config group missing; choose one with {group}=<option>")

    # hcl: the hyperbolic branch
    _number(cfg, "hcl.lam", ">= 0", lambda v: v >= 0, "weight λ of the hyperbolic loss")
    _number(cfg, "hcl.tau", "> 0", lambda v: v > 0, "temperature of the hyperbolic InfoNCE")
    _number(cfg, "hcl.c", "> 0", lambda v: v > 0, "curvature of the Poincaré ball")
    _number(
        cfg, "hcl.queue_size", ">= 0", lambda v: v >= 0, "hyperbolic queue length", integer=True
    )
    _choice(cfg, "hcl.head", HEAD_MODES, "projection head of the hyperbolic branch")
    if _get(cfg, "hcl.alpha") is not None:
        _number(cfg, "hcl.alpha", "> 0 or null", lambda v: v > 0, "scale before expmap0")
    if _get(cfg, "hcl.clip_r") is not None:
        _number(cfg, "hcl.clip_r", ">= 0 or null", lambda v: v >= 0, "tangent-norm guard")
    _choice(cfg, "hcl.learn_curvature", (True, False), "learn the curvature")

    # model
    target = _get(cfg, "model._target_")
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"model._target_={target!r}: must be a dotted class path")
    if "queue_size" in cfg.model:
        _number(cfg, "model.queue_size", ">= 1", lambda v: v >= 1, "MoCo queue", integer=True)

    # data
    _number(cfg, "data.batch_size", ">= 1", lambda v: v >= 1, "per-device batch", integer=True)
    for key in ("data.object_size", "data.scene_size"):
        if OmegaConf.select(cfg, key) is not None:
            _number(cfg, key, ">= 1", lambda v: v >= 1, "crop side in pixels", integer=True)
    synthetic = OmegaConf.select(cfg, "data.synthetic")
    if synthetic is not None:
        _number(
            cfg,
            "data.synthetic.n_images",
            ">= data.batch_size",
            lambda v: v >= max(1, cfg.data.batch_size),
            "images generated; one batch at least",
            integer=True,
        )
        _number(
            cfg, "data.synthetic.image_size", ">= 32", lambda v: v >= 32, "image side", integer=True
        )
    else:
        _path(cfg, "data.image_dir", directory=True, optional=False)
        for key in ("data.ann_file", "data.proposals"):
            if key.rpartition(".")[2] in cfg.data.keys():
                _path(cfg, key, directory=False, optional=True)
        if (
            OmegaConf.select(cfg, "data.ann_file") is not None
            and OmegaConf.select(cfg, "data.proposals") is not None
        ):
            raise ConfigError(
                "data.ann_file and data.proposals are both set: give at most one box source"
            )

    # resume: only ever explicit
    ckpt = _get(cfg, "ckpt_path")
    if ckpt is not None and ckpt not in ("last", "hpc", "auto"):
        _path(cfg, "ckpt_path", directory=False, optional=True)

    _check_training(cfg)
    _check_speed_options(cfg)

    size = max(
        OmegaConf.select(cfg, "data.object_size") or 0,
        OmegaConf.select(cfg, "data.scene_size") or 0,
    )
    if OmegaConf.select(cfg, "model.small_input") and size > SMALL_INPUT_MAX_SIZE:
        warnings.warn(
            f"model.small_input=true (stride-1 stem for 32-96 px) with {size}-px crops is "
            "slow and not the paper's setup; use preset=paper (ResNet-50, standard stem)",
            stacklevel=2,
        )


#: ``trainer.precision`` values Lightning accepts.
PRECISIONS = (
    "32-true",
    "32",
    32,
    "64-true",
    "64",
    64,
    "16-mixed",
    "16",
    16,
    "bf16-mixed",
    "bf16",
    "16-true",
    "bf16-true",
    "transformer-engine",
    "transformer-engine-float16",
)


def _optional_number(cfg: DictConfig, key: str, allowed: str, ok, what: str, integer=False):
    if OmegaConf.select(cfg, key, default=None) is not None:
        _number(cfg, key, allowed, ok, what, integer=integer)


def _world_size(cfg: DictConfig) -> int | None:
    """``devices x num_nodes`` when the config fixes it, else None (e.g. ``devices=auto``)."""
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        devices = len(devices)
    if not isinstance(devices, int) or devices < 1 or not isinstance(nodes, int) or nodes < 1:
        return None
    return devices * nodes


def _check_training(cfg: DictConfig) -> None:
    """Data hygiene, trainer, optimiser and queue checks, and incompatible combinations."""
    _optional_number(
        cfg,
        "data.max_bad_fraction",
        "in [0, 1]",
        lambda v: 0 <= v <= 1,
        "largest tolerated fraction of bad images",
    )
    _optional_number(
        cfg,
        "data.max_image_pixels",
        ">= 1 or null",
        lambda v: v >= 1,
        "pixel budget of a decoded image",
        integer=True,
    )
    _optional_number(
        cfg, "data.num_workers", ">= 0", lambda v: v >= 0, "DataLoader workers", integer=True
    )
    for key in ("data.min_object_size", "data.min_box_size"):
        _optional_number(cfg, key, ">= 0", lambda v: v >= 0, "box side in pixels")
    _optional_number(cfg, "model.lr", "> 0", lambda v: v > 0, "base learning rate")
    _optional_number(cfg, "model.temperature", "> 0", lambda v: v > 0, "InfoNCE temperature")
    _optional_number(
        cfg, "model.momentum", "in [0, 1]", lambda v: 0 <= v <= 1, "momentum-encoder EMA"
    )
    _optional_number(cfg, "model.weight_decay", ">= 0", lambda v: v >= 0, "weight decay")
    _optional_number(cfg, "hcl.dim", ">= 1", lambda v: v >= 1, "separate head output", integer=True)
    _optional_number(
        cfg,
        "trainer.accumulate_grad_batches",
        ">= 1",
        lambda v: v >= 1,
        "batches per optimiser step",
        integer=True,
    )
    _optional_number(
        cfg,
        "callbacks.nonfinite_guard.max_consecutive",
        ">= 1",
        lambda v: v >= 1,
        "bad steps in a row that stop training",
        integer=True,
    )

    precision = OmegaConf.select(cfg, "trainer.precision", default=None)
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision!r}: must be one of 32-true, bf16-mixed, 16-mixed, "
            "64-true, bf16-true, 16-true (Lightning's precision)"
        )
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default=None)
    if accelerator == "cpu" and str(precision) in ("16-mixed", "16"):
        raise ConfigError(
            f"trainer.precision={precision!r} with trainer.accelerator=cpu: fp16 autocast "
            "needs a GPU (Lightning would silently run bf16 instead); use "
            "trainer.precision=bf16-mixed on the CPU, or trainer=gpu"
        )

    # lightly's MoCo/DenseCL queue drops the keys of a batch that do not fit before its
    # end, as the original MoCo asserts K % batch == 0: the global batch must divide it.
    world = _world_size(cfg)
    queue = OmegaConf.select(cfg, "model.queue_size", default=None)
    batch = OmegaConf.select(cfg, "data.batch_size", default=None)
    if isinstance(queue, int) and isinstance(batch, int) and world and queue >= 1 and batch >= 1:
        global_batch = batch * world
        if queue % global_batch:
            raise ConfigError(
                f"model.queue_size={queue}: must be a multiple of the global batch "
                f"{global_batch} (data.batch_size={batch} x {world} devices x nodes), as "
                "lightly's MoCo queue drops the keys of a batch that overrun its end; e.g. "
                f"model.queue_size={max(1, queue // global_batch) * global_batch}"
            )


def _check_speed_options(cfg: DictConfig) -> None:
    """``model.channels_last`` / ``compile_backbone`` / ``compile_mode`` and
    ``hcl.batched_forward`` (a baseline with the hook, crops of one size)."""
    speed = {
        key: OmegaConf.select(cfg, f"model.{key}", default=default)
        for key, default in (
            ("channels_last", False),
            ("compile_backbone", False),
            ("compile_mode", None),
        )
    }
    try:
        check_speed_options(**speed)
    except ValueError as error:
        raise ConfigError(f"model.{error}") from None
    batched = _get(cfg, "hcl.batched_forward")
    if not isinstance(batched, bool):  # not _choice: 1 == True
        raise ConfigError(
            f"hcl.batched_forward={batched!r}: must be true or false (batched encoder passes)"
        )
    if not batched:
        return
    sizes = (
        OmegaConf.select(cfg, "data.scene_size", default=None),
        OmegaConf.select(cfg, "data.object_size", default=None),
    )
    if sizes[0] != sizes[1]:
        raise ConfigError(
            f"hcl.batched_forward=true with data.scene_size={sizes[0]} and "
            f"data.object_size={sizes[1]}: scenes are concatenated with the object views, "
            "so the sizes must be equal; set them equal or hcl.batched_forward=false"
        )
    target = _get(cfg, "model._target_")
    try:
        model_class = get_class(target)
    except (ImportError, ValueError):  # instantiating the model reports a bad target
        return
    if not hasattr(model_class, "hcl_batched_step"):
        raise ConfigError(
            f"hcl.batched_forward=true: model._target_={target} has no hcl_batched_step "
            "hook (batched encoder passes exist for model=moco_v2); use "
            "hcl.batched_forward=false"
        )
