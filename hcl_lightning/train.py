"""``hcl-train``: the Hydra entry point of hcl_lightning.

Composes ``hcl_lightning/conf`` (also linked as ``conf/`` at the repository root)::

    hcl-train                                           # CPU demo on generated scenes
    hcl-train hcl.lam=0.5 trainer.max_epochs=10         # any value
    hcl-train -m hcl.lam=0,0.05,0.1,0.5 hcl.tau=0.1,0.2 # a sweep, one directory per job
    hcl-train preset=paper trainer=gpu data=coco data.image_dir=... data.ann_file=...
    hcl-train trainer=ddp trainer.devices=8 trainer.num_nodes=4 hydra/launcher=submitit_slurm
    python -m hcl_lightning.train ...                   # the same

Every run, and every job of a sweep, writes its logs and checkpoints into its own Hydra
output directory and starts from scratch: a run resumes only from an explicit
``ckpt_path=...``, or with ``ckpt_path=auto`` from a checkpoint in its *own* output
directory (a requeued SLURM job; see ``examples/slurm/README.md``). A resumed run keeps
the CSV log of the attempts before it (``csv/metrics.csv``) and logs into
``csv/resume_<n>/``. :func:`train` is
the whole run for a composed config, so tests and notebooks can call it without the
command line.
"""

from __future__ import annotations

import copy
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import hydra
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import WandbLogger

from hcl_lightning.callbacks import (
    DataHygieneMonitor,
    HyperbolicMonitor,
    MetricHistory,
    NonFiniteGuard,
    RunConfigCheckpoint,
)
from hcl_lightning.checkpointing import (
    resolve_ckpt_path,
    resume_epoch_end_checkpoints_at_next_epoch,
)
from hcl_lightning.config import ConfigError, check_overrides, validate_config
from hcl_lightning.console import log_to_root, logger, quiet_startup
from hcl_lightning.data.dataset import TooManyBadImagesError
from hcl_lightning.data.synthetic import prepare_synthetic_data

__all__ = ["main", "train", "train_job", "usage"]

PROG = "hcl-train"
#: The config (``hcl_lightning/conf``).
CONF_DIR = Path(__file__).resolve().parent / "conf"
#: Config groups that the config chooses itself (not offered by ``--help``).
INTERNAL_GROUPS = ("preset_model", "hydra")
#: Top-level keys shown by ``--help``, with the help of their comment in config.yaml.
TOP_LEVEL_KEYS = ("seed", "ckpt_path", "objective")

#: Metrics of the summary, in the order printed.
SUMMARY_METRICS = (
    "train/loss",
    "train/loss_euc",
    "train/loss_hyp",
    "train/hyp_acc1",
    "train/norm_scene",
    "train/norm_object",
    "train/loss_total",
)
#: Validation metrics of the summary (the online probes), as ``val_<name>`` there.
VAL_METRICS = ("val/linear_top1", "val/knn_top1")
#: Steps averaged for the "first -> last" trend of the summary.
TREND_STEPS = 5
MAX_DIRNAME = 120
#: Config groups written into every checkpoint (resolved; see RunConfigCheckpoint).
RECORDED_GROUPS = ("model", "data", "hcl")


def _dirname(overrides: str) -> str:
    """A sweep job's overrides as one path-safe directory name of bounded length.

    ``hcl.*`` overrides come first, so that the swept HCL values survive the cut to
    :data:`MAX_DIRNAME` characters; the job number in front keeps names unique.
    """
    items = re.split(r",(?=[+~]*[\w.]+=)", str(overrides)) if overrides else []
    items.sort(key=lambda item: not item.lstrip("+~").startswith("hcl."))
    return re.sub(r"[^\w.,=+-]", "_", ",".join(items))[:MAX_DIRNAME]


def _objective_mode(objective: str) -> str:
    """``min`` for a metric whose name contains ``loss``, else ``max``."""
    return "min" if "loss" in str(objective) else "max"


OmegaConf.register_new_resolver("hcl_dirname", _dirname, replace=True)
OmegaConf.register_new_resolver("hcl_objective_mode", _objective_mode, replace=True)


def _instantiate_dict(node: DictConfig | None) -> list[Any]:
    """Instantiates every ``_target_`` entry of a ``name: {_target_: ...}`` mapping."""
    if not node:
        return []
    return [
        hydra.utils.instantiate(value, _convert_="all")
        for value in node.values()
        if isinstance(value, DictConfig) and "_target_" in value
    ]


def _csv_logs_per_attempt(cfg: DictConfig) -> None:
    """Gives each CSV logger of a resumed run a fresh ``resume_<n>`` version folder.

    Lightning's ``CSVLogger`` deletes the ``metrics.csv`` it finds in its log directory,
    so a run resumed into its own output directory would erase the log of the attempts
    before it. When the logger's directory ``save_dir/name/version`` already holds
    files, the resumed attempt logs into ``save_dir/name/version/resume_<n>`` instead
    (``n`` = 1, 2, ...: the first free one), e.g. ``csv/metrics.csv`` (steps of the
    first attempt) and ``csv/resume_1/metrics.csv`` (those of the resumed one).
    Computed before training starts, so every DDP rank chooses the same folder.
    """
    for node in (cfg.get("logger") or {}).values():
        if not isinstance(node, DictConfig) or not str(node.get("_target_", "")).endswith(
            ".CSVLogger"
        ):
            continue
        version = node.get("version")
        if version is None:  # Lightning numbers the versions itself (version_<n>)
            continue
        version = str(version) if not isinstance(version, int) else f"version_{version}"
        name = node.name if "name" in node else "lightning_logs"  # CSVLogger's default
        log_dir = Path(str(node.save_dir)).expanduser() / str(name or "") / version
        if not log_dir.is_dir() or not any(log_dir.iterdir()):
            continue
        attempt = 1
        while (log_dir / f"resume_{attempt}").exists():
            attempt += 1
        with open_dict(node):
            node.version = str(Path(version) / f"resume_{attempt}")


def _log_config(loggers: list, cfg: DictConfig) -> None:
    """Records the composed config (resolved) as the run config of each W&B logger.

    Lightning logs only the model's hyperparameters; the W&B run gets the whole config
    (``model``, ``data``, ``hcl``, ``trainer``, ...) so that runs can be filtered and
    compared by any key. Logged on rank 0 only (``WandbLogger.log_hyperparams``).
    """
    for run_logger in loggers:
        if isinstance(run_logger, WandbLogger):
            run_logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))


def _output_dir(cfg: DictConfig) -> Path:
    try:
        value = cfg.output_dir
    except Exception as error:  # composed outside @hydra.main, without output_dir=...
        raise ConfigError(
            "output_dir: cannot be resolved outside hcl-train; pass output_dir=<directory>"
        ) from error
    return Path(str(value)).expanduser().resolve()


def _objective(trainer: pl.Trainer, name: str) -> float:
    """The last logged value of the metric ``name`` (NaN, with a message, if never logged)."""
    if name in trainer.callback_metrics:
        return float(trainer.callback_metrics[name])
    if trainer.is_global_zero:
        logger.warning(
            f"hcl-train: objective={name} was never logged (validation metrics need "
            "labelled validation data); the run returns nan to a sweeper"
        )
    return math.nan


def _summary(
    trainer: pl.Trainer, history: MetricHistory, seconds: float, output_dir: Path, objective: str
) -> dict[str, Any]:
    metrics = {
        key.removeprefix("train/"): float(trainer.callback_metrics[key])
        for key in SUMMARY_METRICS
        if key in trainer.callback_metrics
    }
    for key in VAL_METRICS:
        if key in trainer.callback_metrics:
            metrics[key.replace("/", "_")] = float(trainer.callback_metrics[key])
    checkpoint = None
    callback = trainer.checkpoint_callback
    if callback is not None:
        path = callback.last_model_path or callback.best_model_path
        checkpoint = str(Path(path).absolute()) if path else None  # last.ckpt, not its target
    log_dir = trainer.logger.log_dir if trainer.logger is not None else None
    return {
        **metrics,
        "objective": _objective(trainer, objective),
        "trend": {key: history.trend(key) for key in SUMMARY_METRICS if history.trend(key)},
        "global_step": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "seconds": seconds,
        "output_dir": str(output_dir),
        "log_dir": str(Path(log_dir).resolve()) if log_dir else None,
        "checkpoint": checkpoint,
        **_hygiene(trainer),
    }


def _hygiene(trainer: pl.Trainer) -> dict[str, Any]:
    """``data_hygiene`` (skipped images, dropped boxes), ``nonfinite_steps`` and ``pairing``
    (the last pairing statistics of the hyperbolic monitor), if watched."""
    found: dict[str, Any] = {}
    for callback in trainer.callbacks:
        if isinstance(callback, DataHygieneMonitor):
            found["data_hygiene"] = callback.summary
        elif isinstance(callback, NonFiniteGuard):
            found["nonfinite_steps"] = callback.total
        elif isinstance(callback, HyperbolicMonitor) and callback.last_pairing:
            found["pairing"] = dict(callback.last_pairing)
    return found


def _pairing_line(pairing: dict[str, float]) -> str:
    """The scene-object pairing of the monitor's last step against chance and the
    class-level ceiling (see :mod:`hcl_lightning.hyperbolic.pairing`)."""
    ceiling = (
        f", class-level ceiling {pairing['class_ceiling_loss']:.2f} / "
        f"{pairing['class_ceiling_top1']:.3f}"
        if "class_ceiling_loss" in pairing
        else ""
    )
    return (
        f"  pairing at step {int(pairing['step'])}: L_hyp {pairing['loss']:.2f}, top-1 "
        f"{pairing['top1']:.3f} (chance {pairing['chance_loss']:.2f} / "
        f"{pairing['chance_top1']:.3f}{ceiling}); negatives closer than the positive "
        f"{pairing['closer_share']:.1%}"
    )


def _print_summary(summary: dict[str, Any], lam: float) -> None:
    lines = [
        f"hcl-train: {summary['global_step']} steps, {summary['epochs']} epochs, "
        f"{summary['seconds']:.0f} s"
    ]
    for key in ("loss_euc", "loss_hyp", "hyp_acc1", "loss_total"):
        if key not in summary:
            lines.append(f"  {key:<11} n/a (hcl.lam={lam:g})")
            continue
        trend = summary["trend"].get(f"train/{key}")
        first_last = (
            f"   (first {TREND_STEPS} steps {trend[0]:.4f} -> last {TREND_STEPS} {trend[1]:.4f})"
            if trend
            else ""
        )
        lines.append(f"  {key:<11} {summary[key]:.4f}{first_last}")
    if "norm_scene" in summary and "norm_object" in summary:
        lines.append(
            f"  mean norm in the ball: scenes {summary['norm_scene']:.4f}, "
            f"objects {summary['norm_object']:.4f}"
        )
    if "pairing" in summary:
        lines.append(_pairing_line(summary["pairing"]))
    if "val_linear_top1" in summary and "val_knn_top1" in summary:
        lines.append(
            f"  validation top-1 of frozen backbone features: linear probe "
            f"{summary['val_linear_top1']:.4f}, kNN {summary['val_knn_top1']:.4f}"
        )
    if "nonfinite_steps" in summary:
        lines.append(f"  non-finite steps skipped: {summary['nonfinite_steps']}")
    lines.append(f"output_dir={summary['output_dir']}")
    if summary["log_dir"]:
        lines.append(f"logs={summary['log_dir']}")
    if summary["checkpoint"]:
        lines.append(f"checkpoint={summary['checkpoint']}")
    logger.info("\n".join(lines))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Validates ``cfg``, trains, and returns the summary of the run.

    Steps: :func:`~hcl_lightning.config.validate_config` (on a copy of ``cfg``); seeding; generating the
    synthetic scenes for ``data=synthetic``; instantiating the datamodule, model,
    callbacks, loggers and trainer from their ``_target_``; ``trainer.fit`` (resuming
    only from ``cfg.ckpt_path``); printing the summary on rank 0. Every checkpoint
    records the model's class (:meth:`~hcl_lightning.HCLMixin.on_save_checkpoint`) and
    the resolved ``model``, ``data`` and ``hcl`` groups
    (:class:`~hcl_lightning.callbacks.RunConfigCheckpoint`).

    Args:
        cfg: the composed config (``hcl_lightning/conf/config.yaml`` + overrides); when
            composed with Hydra's compose API, pass ``output_dir=<directory>``.

    Returns:
        The last logged value of each metric (``loss_euc``, ``loss_hyp``, ``hyp_acc1``,
        ``norm_scene``, ``norm_object``, ``loss_total``, the online probes'
        ``val_linear_top1`` and ``val_knn_top1``, ...; absent when not logged, e.g. the
        hyperbolic ones for ``hcl.lam=0``), ``objective`` (the last value of the metric
        ``cfg.objective``, NaN if it was never logged), ``trend`` (first/last step
        means), and
        ``output_dir``, ``log_dir``, ``checkpoint`` (absolute paths).

    Raises:
        ConfigError: (a ``ValueError``) for an invalid config, before anything is built.
    """
    cfg = copy.deepcopy(cfg)  # the caller's config keeps its synthetic node and keys
    validate_config(cfg)
    output_dir = _output_dir(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    prepare_synthetic_data(cfg)

    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    history = MetricHistory(SUMMARY_METRICS, TREND_STEPS)
    described = RunConfigCheckpoint(
        {group: OmegaConf.to_container(cfg[group], resolve=True) for group in RECORDED_GROUPS}
    )
    callbacks = [*_instantiate_dict(cfg.get("callbacks")), history, described]
    # ckpt_path=auto: this run's own last/pre-emption checkpoint, if any (SLURM requeue)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir)
    if ckpt_path is not None:
        _csv_logs_per_attempt(cfg)
    loggers = _instantiate_dict(cfg.get("logger")) or False
    _log_config(loggers or [], cfg)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, _convert_="all"
    )
    # with max_steps set, Lightning would resume last.ckpt inside its finished epoch
    resume_epoch_end_checkpoints_at_next_epoch(trainer)
    if trainer.is_global_zero:
        logger.info(
            f"hcl-train: {type(model).__name__}({cfg.model.backbone}) on {cfg.data.image_dir}, "
            f"hcl.lam={cfg.hcl.lam:g} hcl.tau={cfg.hcl.tau:g} hcl.c={cfg.hcl.c:g}, "
            f"output_dir={output_dir}"
        )

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - start
    summary = _summary(trainer, history, seconds, output_dir, str(cfg.objective))
    if trainer.is_global_zero:
        _print_summary(summary, float(cfg.hcl.lam))
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def train_job(cfg: DictConfig) -> float:
    """One Hydra job (a run, or a job of a sweep): trains with the composed config and
    returns the sweep objective, the last value of the metric named by ``objective``
    (default ``val/knn_top1``).

    An invalid value exits with status 2 and one line, e.g.
    ``hcl-train: error: hcl.tau=0: must be a finite number > 0``, before anything is
    built; a training set with too many bad images
    (:class:`~hcl_lightning.data.dataset.TooManyBadImagesError`) with status 1 and one
    line, before the first step (a traceback with ``HYDRA_FULL_ERROR=1``).
    """
    log_to_root()  # Hydra has configured logging: the console and train.log
    quiet_startup()
    try:
        return train(cfg)["objective"]
    except ConfigError as error:
        _exit_with(error)
    except TooManyBadImagesError as error:  # found before the first step
        _exit_with(error, status=1)


def _exit_with(error: Exception, status: int = 2) -> NoReturn:
    """Prints ``hcl-train: error: <error>`` and exits with ``status`` (raises the error
    instead with ``HYDRA_FULL_ERROR=1``)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"{PROG}: error: {error}", file=sys.stderr, flush=True)
    sys.exit(status)


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def _groups() -> dict[str, list[str]]:
    """The config groups a user chooses from (all but :data:`INTERNAL_GROUPS`) and their
    options, including ``hydra/launcher`` and ``hydra/sweeper``."""
    found = {}
    for directory in sorted(p for p in CONF_DIR.glob("**/") if p != CONF_DIR):  # hydra/ last
        group = directory.relative_to(CONF_DIR).as_posix()
        options = sorted(path.stem for path in directory.glob("*.yaml"))
        if options and group not in INTERNAL_GROUPS:
            found[group] = options
    return found


def _key_help(path: Path) -> dict[str, tuple[str, str]]:
    """``key -> (value, help)`` of the top-level keys of a YAML file: the help is the
    key's inline comment, else the first sentence of the comment block above it."""
    found: dict[str, tuple[str, str]] = {}
    above: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            above.append(line.lstrip("#").strip())
            continue
        match = re.fullmatch(r"(\w+):\s*([^#]*?)\s*(?:#\s*(.*))?", line)
        if match and match.group(2):
            key, value, inline = match.groups()
            found[key] = (value, inline or " ".join(above).split(". ")[0].rstrip("."))
        above = []
    return found


def usage() -> str:
    """``hcl-train --help``: the groups to choose from, the ``hcl.*`` keys, examples."""
    listed = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").defaults)
    defaults = {
        key: value for item in listed if isinstance(item, dict) for key, value in item.items()
    }
    groups = dict(sorted(_groups().items(), key=lambda item: item[0] not in defaults))
    groups = {g: groups[g] for g in [*(d for d in defaults if d in groups), *groups]}
    width = max(map(len, groups))
    lines = [
        f"usage: {PROG} [-m] [GROUP=OPTION ...] [KEY=VALUE ...]",
        "",
        "Trains Hyperbolic Contrastive Learning (Ge et al., CVPR 2023) on a lightly-style",
        "SSL baseline; -m sweeps comma-separated values (one directory per job).",
        "",
        "config groups (GROUP=OPTION, * the default):",
        *(
            f"  {group:<{width}}  "
            + ", ".join(f"{o}*" if defaults.get(group) == o else o for o in options)
            for group, options in groups.items()
        ),
        "",
        "hcl.* keys (the hyperbolic loss; values of conf/hcl/default.yaml):",
    ]
    hcl = {
        f"hcl.{k}={v}": text for k, (v, text) in _key_help(CONF_DIR / "hcl/default.yaml").items()
    }
    top = _key_help(CONF_DIR / "config.yaml")
    top = {f"{k}={top[k][0]}": top[k][1] for k in TOP_LEVEL_KEYS}
    key_width = max(map(len, [*hcl, *top]))
    lines += [f"  {key:<{key_width}}  {text}" for key, text in hcl.items()]
    lines += ["", "run keys:", *(f"  {key:<{key_width}}  {text}" for key, text in top.items())]
    lines += [
        "",
        "examples:",
        f"  {PROG} hcl.lam=0.5 hcl.tau=0.1 model=densecl trainer.max_steps=500",
        f"  {PROG} -m hcl.lam=0,0.05,0.1,0.5 hcl.tau=0.1,0.2",
        f"  {PROG} preset=paper trainer=gpu data=coco data.image_dir=DIR data.ann_file=FILE",
        "",
        f"Every key and value: {PROG} --cfg job [GROUP=OPTION ...]; Hydra's own options:",
        f"{PROG} --hydra-help. Bad keys and values exit with status 2 and one line.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``hcl-train`` (the console script): ``--help``, then a check of the command
    line's keys (:func:`~hcl_lightning.config.check_overrides`: unknown keys and keys
    added to the project's groups that nothing reads exit with status 2 and one line),
    then Hydra and :func:`train_job`."""
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in args):
        print(usage())
        return
    overrides = [arg for arg in args if "=" in arg and not arg.startswith("-")]
    try:
        check_overrides(overrides, [*_groups(), *INTERNAL_GROUPS], _compose)
    except ConfigError as error:
        _exit_with(error)
    except HydraException:  # a missing group option: Hydra names it and its options
        pass
    train_job()


if __name__ == "__main__":
    main()
