"""Checks of an ``hcl-train`` config, run before anything heavy is built.

The constructors own the checks of their arguments. This module maps the Hydra keys to
those constructors (:class:`~hcl_lightning.HCLMixin` and the baselines for ``model`` /
``hcl``, :class:`~hcl_lightning.data.HCLDataModule` and its option classes for
``data``, the callbacks for ``callbacks``), calls their checks without building
anything heavy, and translates their :class:`~hcl_lightning.checks.ArgumentError` into a
:class:`ConfigError` that names the key, e.g.
``hcl.tau=0: must be a finite number > 0``. What no single constructor can check stays
here: missing keys, paths, Lightning's trainer values and combinations across groups.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import InstantiationException
from hydra.utils import get_class
from lightning_fabric.connector import _PRECISION_INPUT
from omegaconf import DictConfig, OmegaConf, open_dict

from hcl_lightning import checks
from hcl_lightning.baselines.base import check_baseline_arguments, check_speed_options
from hcl_lightning.checks import ArgumentError, MissingPathError
from hcl_lightning.data.datamodule import HCLDataModule
from hcl_lightning.data.options import ValidationOptions
from hcl_lightning.data.synthetic import check_context_args
from hcl_lightning.mixin import HCLMixin, check_batched_forward, check_hcl_arguments

__all__ = [
    "PROJECT_GROUPS",
    "ConfigError",
    "check_choice",
    "check_number",
    "check_overrides",
    "check_path",
    "check_synthetic_node",
    "constructor_errors",
    "map_legacy_keys",
    "require",
    "validate_config",
]

#: Side above which the small-input (stride-1) stem makes a ResNet needlessly slow.
SMALL_INPUT_MAX_SIZE = 96
#: ``trainer.precision`` values: Lightning's own list.
PRECISIONS = tuple(value for group in get_args(_PRECISION_INPUT) for value in get_args(group))
#: ``HCLMixin``'s ``hcl_*`` arguments and their defaults, checked by
#: :func:`~hcl_lightning.mixin.check_hcl_arguments`.
HCL_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(HCLMixin.__init__).parameters.items()
    if name.startswith("hcl_")
}
#: Arguments of the model node checked by
#: :func:`~hcl_lightning.baselines.base.check_baseline_arguments`.
BASELINE_ARGUMENTS = ("lr", "momentum", "weight_decay", "temperature", "queue_size")
#: Option groups of ``data`` (instantiated from their ``_target_`` to check them).
DATA_GROUPS = ("crops", "boxes", "images", "loader", "validation")
#: Integer keys of ``trainer`` (when set) and their smallest values (-1: no limit).
TRAINER_INTEGERS = {
    "max_steps": -1,
    "max_epochs": -1,
    "min_steps": 0,
    "log_every_n_steps": 1,
    "accumulate_grad_batches": 1,
}
#: Former keys, mapped by :func:`map_legacy_keys`: old key -> new key.
LEGACY_KEYS = {
    "callbacks.hyperbolic_monitor.lambda_warmup_steps": "callbacks.lambda_warmup.warmup_steps",
    "callbacks.hyperbolic_monitor.target_lambda": "callbacks.lambda_warmup.target_lambda",
    "model.hcl_head": "model.hcl_head_mode",
}


#: The project's own config groups: a key added to them with ``+`` is refused unless the
#: constructor fed from that node takes it as an argument.
PROJECT_GROUPS = ("hcl", "model", "data")


class ConfigError(ValueError):
    """An ``hcl-train`` config value that cannot work."""


# -- keys ---------------------------------------------------------------------------
def require(cfg: DictConfig, key: str) -> Any:
    """The value at dotted ``key``.

    Raises:
        ConfigError: if the key does not exist or is missing (``???``).
    """
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or leaf not in node.keys():  # keys(): also `???`
        raise ConfigError(f"{key} is not set: the config has no such key")
    if OmegaConf.is_missing(node, leaf):
        raise ConfigError(f"{key} is required: pass {key}=<value> on the command line")
    try:
        return node[leaf]
    except Exception as error:  # an interpolation to a missing value
        raise ConfigError(f"{key} is required: {error}") from None


def _yaml(text: str) -> str:
    """Python's spelling of ``True``/``False``/``None`` in a message, as YAML's."""
    for python, yaml in (("True", "true"), ("False", "false"), ("None", "null")):
        text = re.sub(rf"\b{python}\b", yaml, text)
    return text


def _key_of(cfg: DictConfig, node: str, argument: str) -> str:
    """The Hydra key that feeds ``argument`` of the constructor of ``node``: the key an
    ``${...}`` interpolation points to (``model.hcl_tau: ${hcl.tau}``), else
    ``node.argument``."""
    parent = OmegaConf.select(cfg, node) if node else cfg
    if isinstance(parent, DictConfig) and argument in parent:
        raw = OmegaConf.to_container(parent, resolve=False).get(argument)
        match = re.fullmatch(r"\$\{([\w.]+)\}", str(raw))
        if match:
            return match.group(1)
    return f"{node}.{argument}" if node else argument


@contextlib.contextmanager
def constructor_errors(cfg: DictConfig, node: str) -> Iterator[None]:
    """Translates the ``ArgumentError`` of a constructor fed from ``node`` into a
    :class:`ConfigError` naming the Hydra key (``node`` ``""``: keys are the arguments).

    Example:
        >>> with constructor_errors(cfg, "data.loader"):
        ...     LoaderOptions(**cfg.data.loader)  # num_workers=-1 ->
        ConfigError: data.loader.num_workers=-1: must be an integer >= 0
    """
    try:
        try:
            yield
        except InstantiationException as wrapped:  # Hydra wraps the constructor's error
            cause = wrapped.__cause__
            if isinstance(cause, ArgumentError):
                raise cause from None
            raise ConfigError(f"{node}: {cause or wrapped}") from None
    except MissingPathError as error:
        key = _key_of(cfg, node, error.argument)
        resolved = Path(str(error.path)).expanduser().resolve()
        raise ConfigError(f"{key}={error.path}: {error.kind} not found ({resolved})") from None
    except ArgumentError as error:
        key = _key_of(cfg, node, error.argument)
        text = str(error)
        if text.startswith(f"{error.argument}="):  # the message names the value itself
            raise ConfigError(_yaml(key + text[len(error.argument) :])) from None
        value = OmegaConf.select(cfg, key, default=error.value)
        raise ConfigError(f"{key}={value!r}: {_yaml(error.requirement)}") from None


def check_number(cfg: DictConfig, key: str, allowed: str, ok, integer: bool = False) -> None:
    """:func:`hcl_lightning.checks.check_number` of the value at ``key``, as a ConfigError."""
    with constructor_errors(cfg, ""):
        checks.check_number(key, require(cfg, key), allowed, ok, integer=integer)


def check_choice(cfg: DictConfig, key: str, allowed: Iterable[Any], what: str) -> None:
    """Raises :class:`ConfigError` unless the value at ``key`` is one of ``allowed``."""
    value = require(cfg, key)
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(
            f"{key}={value!r}: must be one of {', '.join(map(str, allowed))} ({what})"
        )


def check_path(cfg: DictConfig, key: str, directory: bool, optional: bool) -> None:
    """Raises :class:`ConfigError` unless the value at ``key`` names an existing file or
    directory (or is null, with ``optional``)."""
    value = require(cfg, key)
    if value is None:
        if optional:
            return
        raise ConfigError(f"{key} is required: pass {key}=<path>")
    path = Path(str(value)).expanduser()
    if not (path.is_dir() if directory else path.is_file()):
        kind = "directory" if directory else "file"
        raise ConfigError(f"{key}={value}: {kind} not found ({path.resolve()})")


def _arguments(cfg: DictConfig, node: str, names: Iterable[str]) -> dict[str, Any]:
    """The values of ``names`` present in ``node`` (each via :func:`require`)."""
    parent = OmegaConf.select(cfg, node)
    return {name: require(cfg, f"{node}.{name}") for name in names if name in parent}


# -- command-line overrides -----------------------------------------------------------
def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """The dotted keys of ``node`` (a container), nodes and leaves, without ``hydra``."""
    keys = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if dotted == "hydra":
            continue
        keys.append(dotted)
        if isinstance(value, dict):
            keys += _leaf_keys(value, f"{dotted}.")
    return keys


def _did_you_mean(key: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate as deep as ``key``, or ``""``."""
    depth = key.count(".")
    peers = [c for c in candidates if c.count(".") == depth]
    close = difflib.get_close_matches(key, peers, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _arguments_taken(target: str) -> set[str]:
    """Keyword arguments of the ``__init__`` methods along the MRO of class ``target``."""
    try:
        cls = get_class(target)
    except (ImportError, ValueError):
        return set()
    names = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            with contextlib.suppress(TypeError, ValueError):
                names |= set(inspect.signature(klass.__init__).parameters)
    return names - {"self", "args", "kwargs"}


def _reader_takes(cfg: dict, key: str) -> bool:
    """Whether the nearest node above ``key`` with a ``_target_`` takes the key's last
    part as an argument (so that adding it with ``+`` has an effect)."""
    parts = key.split(".")
    node: Any = cfg
    nearest = None
    for depth, part in enumerate(parts[:-1]):
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return False
        if "_target_" in node:
            nearest = (depth, str(node["_target_"]))
    if nearest is None or nearest[0] != len(parts) - 2:  # the key must be the node's own
        return False
    return parts[-1] in _arguments_taken(nearest[1])


def _first_choice(override: Override) -> str:
    """A group override as one choice (the first of a sweep), e.g. ``model=densecl``."""
    if override.is_sweep_override():
        return f"{override.key_or_group}={next(iter(override.sweep_string_iterator()))}"
    return override.input_line


def check_overrides(overrides: Sequence[str], groups: Iterable[str], compose) -> None:
    """Raises :class:`ConfigError` (one line) for a command-line override that would be
    silently ignored or that Hydra would reject with a long message:

    - a key the composed config does not have: ``unknown key 'hcl.lamda'; did you mean
      'hcl.lam'?``;
    - a key *added* with ``+``/``++`` to :data:`PROJECT_GROUPS` that nothing reads: one
      that is not an argument of the constructor of the node it is added to (``hcl``
      has none; former keys of :data:`LEGACY_KEYS` are still taken).

    ``hydra.*`` keys and key deletions (``~key``) are left to Hydra.

    Args:
        overrides: the command line's ``key=value`` arguments.
        groups: the config groups (``model``, ``data``, ...): their overrides choose.
        compose: ``compose(overrides) -> DictConfig``, the config for group overrides.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as error:  # Hydra's OverrideParseException, with a long message
        raise ConfigError(" ".join(str(error).split())) from None
    groups = set(groups)
    chooses = [o for o in parsed if o.key_or_group.split("/")[0] in groups]
    chosen = [_first_choice(o) for o in chooses if not o.key_or_group.startswith("hydra")]
    cfg = OmegaConf.to_container(compose(chosen), resolve=False)
    known = _leaf_keys(cfg)
    for override in parsed:
        key = override.key_or_group
        if override in chooses or key.startswith("hydra"):
            continue
        if override.type == OverrideType.DEL or key in LEGACY_KEYS:
            continue
        if override.type == OverrideType.CHANGE and key not in known:
            raise ConfigError(f"unknown key {key!r}{_did_you_mean(key, known)}")
        adds = override.type in (OverrideType.ADD, OverrideType.FORCE_ADD)
        if adds and key.split(".")[0] in PROJECT_GROUPS and key not in known:
            if not _reader_takes(cfg, key):
                raise ConfigError(
                    f"unknown key {key!r}{_did_you_mean(key, known)} (+{key} adds a key "
                    f"that nothing in the {key.split('.')[0]} group reads)"
                )


# -- the config ---------------------------------------------------------------------
def map_legacy_keys(cfg: DictConfig) -> None:
    """Moves the values of former keys (:data:`LEGACY_KEYS`) to their keys, in place,
    with a ``DeprecationWarning``: e.g. ``callbacks.hyperbolic_monitor.lambda_warmup_steps``
    (the warm-up left the monitor) becomes ``callbacks.lambda_warmup.warmup_steps``."""
    for old, new in LEGACY_KEYS.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if not isinstance(node, DictConfig) or leaf not in node:
            continue
        warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
        value = node[leaf]
        with open_dict(node):
            del node[leaf]
        with open_dict(cfg):
            OmegaConf.update(cfg, new, value, force_add=True)


def validate_config(cfg: DictConfig) -> None:
    """Raises :class:`ConfigError` (a ``ValueError``) for the first value that cannot work.

    Maps the former keys first (:func:`map_legacy_keys`), then checks the ``hcl`` and
    ``model`` keys (through :func:`~hcl_lightning.mixin.check_hcl_arguments` and the
    baselines' checks), ``data`` (through :class:`~hcl_lightning.data.HCLDataModule`'s
    checks and its option classes; paths must exist, except for generated synthetic
    data, whose paths are filled in later), the callbacks of ``hcl_lightning``, the
    trainer values, ``ckpt_path``, and combinations across groups. Warns when the
    small-input stem is combined with large crops (``preset=demo`` on real data).

    Args:
        cfg: the composed config of ``hcl-train``.

    Raises:
        ConfigError: naming the key, its value and what is allowed.
    """
    for group in ("model", "data", "trainer", "hcl"):
        if not isinstance(OmegaConf.select(cfg, group), DictConfig):
            raise ConfigError(f"{group}: config group missing; choose one with {group}=<option>")
    map_legacy_keys(cfg)
    _check_model(cfg)
    _check_data(cfg)
    _check_callbacks(cfg)
    _check_trainer(cfg)
    ckpt = require(cfg, "ckpt_path")  # resume: only ever explicit
    if ckpt is not None and ckpt not in ("last", "hpc", "auto"):
        check_path(cfg, "ckpt_path", directory=False, optional=True)
    _check_combinations(cfg)


def _check_model(cfg: DictConfig) -> None:
    """``model._target_``, the hyperbolic branch, the baseline and its speed options."""
    target = require(cfg, "model._target_")
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"model._target_={target!r}: must be a dotted class path")
    with constructor_errors(cfg, "model"):
        check_hcl_arguments(**{**HCL_DEFAULTS, **_arguments(cfg, "model", HCL_DEFAULTS)})
        check_baseline_arguments(**_arguments(cfg, "model", BASELINE_ARGUMENTS))
        check_speed_options(
            OmegaConf.select(cfg, "model.channels_last", default=False),
            OmegaConf.select(cfg, "model.compile_backbone", default=False),
            OmegaConf.select(cfg, "model.compile_mode", default=None),
        )
        batched = OmegaConf.select(cfg, "model.hcl_batched_forward", default=False)
        try:
            model_class = get_class(target)
        except (ImportError, ValueError):  # instantiating the model reports a bad target
            return
        check_batched_forward(model_class, f"model._target_={target}", batched)


def check_synthetic_node(cfg: DictConfig) -> None:
    """The scene-content keys of ``data.synthetic`` (``contexts``, ``ooc_fraction``,
    ``random_colours``, ``appearance``), through
    :func:`~hcl_lightning.data.synthetic.check_context_args`.

    Raises:
        ConfigError: ``data.synthetic.<key> ...``, naming the value and what is allowed.
    """
    synthetic = cfg.data.synthetic
    try:
        check_context_args(
            synthetic.get("contexts", False),
            synthetic.get("ooc_fraction", 0.0),
            synthetic.get("max_objects", 6),
            synthetic.get("random_colours", False),
            synthetic.get("appearance", "instance"),
        )
    except ValueError as error:
        raise ConfigError(f"data.synthetic.{error}") from None


def _check_data(cfg: DictConfig) -> None:
    """The datamodule's own arguments and option groups, and its paths."""
    for group in DATA_GROUPS:
        node = OmegaConf.select(cfg, f"data.{group}")
        if isinstance(node, DictConfig) and "_target_" in node:
            with constructor_errors(cfg, f"data.{group}"):
                hydra.utils.instantiate(node, _convert_="all")
    with constructor_errors(cfg, "data"):
        HCLDataModule.check_arguments(
            OmegaConf.select(cfg, "data.ann_file"),
            OmegaConf.select(cfg, "data.proposals"),
            require(cfg, "data.batch_size"),
            OmegaConf.select(cfg, "data.object_size", default=64),
            OmegaConf.select(cfg, "data.scene_size", default=64),
        )
    synthetic = OmegaConf.select(cfg, "data.synthetic")
    if synthetic is not None:  # generated: the paths are filled in later
        check_number(
            cfg,
            "data.synthetic.n_images",
            ">= data.batch_size",
            lambda v: v >= max(1, cfg.data.batch_size),
            integer=True,
        )
        check_number(cfg, "data.synthetic.image_size", ">= 32", lambda v: v >= 32, integer=True)
        check_synthetic_node(cfg)
        return
    image_dir = require(cfg, "data.image_dir")
    if image_dir is None:
        raise ConfigError("data.image_dir is required: pass data.image_dir=<path>")
    with constructor_errors(cfg, "data"):  # before the keys that may be required
        checks.check_path("image_dir", image_dir, directory=True)
    paths = {
        key: require(cfg, f"data.{key}")
        for key in ("ann_file", "proposals")
        if key in cfg.data.keys()
    }
    validation = OmegaConf.select(cfg, "data.validation")
    with constructor_errors(cfg, "data"):
        HCLDataModule.check_paths(
            image_dir,
            paths.get("ann_file"),
            paths.get("proposals"),
            ValidationOptions(
                **{
                    k: validation[k]
                    for k in ("image_dir", "ann_file")
                    if validation is not None and k in validation
                }
            ),
        )


def _check_callbacks(cfg: DictConfig) -> None:
    """Makes every callback of ``hcl_lightning`` (they are light) to run its checks."""
    for name, node in (cfg.get("callbacks") or {}).items():
        if not isinstance(node, DictConfig):
            continue
        if not str(node.get("_target_", "")).startswith("hcl_lightning."):
            continue
        with constructor_errors(cfg, f"callbacks.{name}"):
            hydra.utils.instantiate(node, _convert_="all")


def _check_trainer(cfg: DictConfig) -> None:
    """Lightning's ``precision`` values and the integer keys of :data:`TRAINER_INTEGERS`."""
    for name, low in TRAINER_INTEGERS.items():
        if OmegaConf.select(cfg, f"trainer.{name}", default=None) is not None:
            ok = lambda v, low=low: v >= low  # noqa: E731
            check_number(cfg, f"trainer.{name}", f">= {low}", ok, integer=True)
    precision = OmegaConf.select(cfg, "trainer.precision", default=None)
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision!r}: must be one of "
            f"{', '.join(map(str, PRECISIONS))} (Lightning's precision)"
        )


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


def _check_combinations(cfg: DictConfig) -> None:
    """Values that are fine alone but not together."""
    precision = OmegaConf.select(cfg, "trainer.precision", default=None)
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

    sizes = (
        OmegaConf.select(cfg, "data.scene_size", default=None),
        OmegaConf.select(cfg, "data.object_size", default=None),
    )
    batched = OmegaConf.select(cfg, "model.hcl_batched_forward", default=False)
    if batched and sizes[0] != sizes[1]:
        raise ConfigError(
            f"hcl.batched_forward=true with data.scene_size={sizes[0]} and "
            f"data.object_size={sizes[1]}: scenes are concatenated with the object views, "
            "so the sizes must be equal; set them equal or hcl.batched_forward=false"
        )

    size = max(sizes[0] or 0, sizes[1] or 0)
    if OmegaConf.select(cfg, "model.small_input") and size > SMALL_INPUT_MAX_SIZE:
        warnings.warn(
            f"model.small_input=true (stride-1 stem for 32-96 px) with {size}-px crops is "
            "slow and not the paper's setup; use preset=paper (ResNet-50, standard stem)",
            stacklevel=3,
        )
