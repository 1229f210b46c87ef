"""Checkpoints that resume exactly: atomic writes, RNG states, a run's own last checkpoint.

- :class:`AtomicCheckpointIO`: writes ``<name>.tmp-<pid>`` next to the target, fsyncs it
  and ``os.replace``\\ s it over the target, so a kill during a write leaves the previous
  ``last.ckpt`` intact. (Lightning 2.6's ``_atomic_save`` writes a local checkpoint to
  ``tempfile.mkstemp()`` in the system temp directory and ``shutil.move``\\ s it: when
  that directory is on another file system than the run, the usual case on clusters
  with a node-local ``/tmp``, the move is a copy that rewrites the target in place, and a
  large checkpoint can fill ``/tmp``.) Other file systems (``s3://``, ...) keep
  Lightning's writer.
- :class:`RNGStateCheckpoint`: puts the torch, numpy and Python RNG states (and CUDA's
  when available) into the checkpoint and restores them on resume, so that shuffling
  and augmentations continue as in an uninterrupted run when resuming from a checkpoint
  written at the end of an epoch. A checkpoint written mid-epoch resumes at the right
  step, but the data loader restarts its epoch from the beginning (Lightning restores
  data-loader positions only for stateful loaders): such a resume is approximate.
  Under DDP the states of rank 0 (which writes the checkpoint) are restored on every
  rank.
- :func:`resolve_ckpt_path`: ``ckpt_path=auto`` resumes from the run's *own* output
  directory only (a SLURM pre-emption checkpoint ``hpc_ckpt_<n>.ckpt`` there, else
  ``checkpoints/last.ckpt``), and starts from scratch when there is none; sweep jobs,
  each with its own directory, never resume each other's checkpoints.
- :func:`resume_epoch_end_checkpoints_at_next_epoch`: makes a run with ``max_steps``
  set resume an end-of-epoch checkpoint at the start of the next epoch, as a run
  without ``max_steps`` does (works around Lightning 2.x's loop-restart logic, see
  :class:`EpochEndResumeFitLoop`).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from pytorch_lightning.loops.fit_loop import _FitLoop
from pytorch_lightning.loops.loop import _Loop
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

__all__ = [
    "AUTO",
    "AtomicCheckpointIO",
    "EpochEndResumeFitLoop",
    "RNGStateCheckpoint",
    "resolve_ckpt_path",
    "resume_epoch_end_checkpoints_at_next_epoch",
]

#: ``ckpt_path`` value that resumes from the run's own directory, if anything is there.
AUTO = "auto"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic (temp file + ``os.replace``).

    A failed write (a full disk, ...) removes the temp file and raises an error that
    names the checkpoint and the free space on its file system.

    Example:
        >>> trainer = pl.Trainer(plugins=[AtomicCheckpointIO()], ...)
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        fs, urlpath = url_to_fs(str(path))
        if storage_options is not None or not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(urlpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            with open(temp, "wb") as handle:
                self._write(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except (OSError, RuntimeError) as error:
            temp.unlink(missing_ok=True)
            raise _write_error(target, error) from error
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)

    def _write(self, checkpoint: dict[str, Any], handle) -> None:
        """Serialises ``checkpoint`` into the open temp file (a seam for tests)."""
        torch.save(checkpoint, handle)


def _write_error(target: Path, error: BaseException) -> RuntimeError:
    """A write failure that names the checkpoint and the free space where it goes.

    A full disk surfaces from ``torch.save`` as an opaque ``unexpected pos`` error.
    """
    free = shutil.disk_usage(target.parent).free
    return RuntimeError(
        f"hcl: could not write checkpoint {target} ({free / 2**20:.0f} MiB free on its "
        f"file system; the previous checkpoint there, if any, is intact): {error}"
    )


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported (e.g. Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RNGStateCheckpoint(pl.Callback):
    """Saves the RNG states in every checkpoint and restores them on resume.

    Restored as soon as the checkpoint is loaded, before the data loader of the
    resumed epoch draws its shuffling seed.
    """

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        if "numpy" in states:  # its array as a tensor: loadable with weights_only=True
            kind, keys, pos, has_gauss, gauss = states["numpy"]
            states["numpy"] = (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss)
        return {"rng_states": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = dict(state_dict.get("rng_states", {}))
        if "torch.cuda" in states and not torch.cuda.is_available():
            states.pop("torch.cuda")
        if "numpy" in states:
            kind, keys, pos, has_gauss, gauss = states["numpy"]
            states["numpy"] = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)
        if states:
            _set_rng_states(states)


def _hpc_checkpoint(directory: Path) -> Path | None:
    found = []
    for path in directory.glob("hpc_ckpt_*.ckpt"):
        match = re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from for a run writing into ``output_dir``.

    ``"auto"`` becomes the newest of ``output_dir/hpc_ckpt_<n>.ckpt`` (Lightning's SLURM
    pre-emption checkpoint) and ``output_dir/checkpoints/last.ckpt``, or ``None`` (a
    fresh run) when neither exists. Nothing outside ``output_dir`` is ever considered.
    Any other value is returned unchanged.
    """
    if ckpt_path != AUTO:
        return ckpt_path
    directory = Path(output_dir)
    candidates = [
        path
        for path in (_hpc_checkpoint(directory), directory / "checkpoints" / "last.ckpt")
        if path is not None and path.is_file()
    ]
    if not candidates:
        rank_zero_info(f"hcl: ckpt_path=auto: no checkpoint in {directory}, starting fresh")
        return None
    chosen = max(candidates, key=lambda path: path.stat().st_mtime)
    rank_zero_info(f"hcl: ckpt_path=auto: resuming from {chosen}")
    return str(chosen.resolve())


class EpochEndResumeFitLoop(_FitLoop):
    """Lightning's fit loop, but an end-of-epoch checkpoint resumes at the next epoch.

    Lightning 2.x (``_FitLoop.restarting``, since Lightning PR #12821) marks the loop as
    *restarting* after loading a checkpoint whenever ``max_steps != -1`` ("iteration-based
    training"), even when the checkpoint's epoch had finished: ``ModelCheckpoint``
    writes ``last.ckpt`` in ``on_train_epoch_end`` (epoch progress
    ``ready == started == processed == completed + 1``, every batch of the epoch done).
    Such a checkpoint is then restored as ``RESTARTED_ON_EPOCH_END`` instead of
    ``RESUMED_ON_EPOCH_END``: ``on_train_epoch_start`` is skipped, the training-epoch loop
    keeps the finished epoch's batch counter and, having no validation run to wait for,
    runs one extra batch (``batch_idx == num_training_batches``) in the *old* epoch,
    which then ends; a 2-epoch run killed in its 2nd epoch thus ends after
    ``num_training_batches + 1`` steps. Without ``max_steps`` the same checkpoint
    resumes correctly.

    This loop drops the forced restart in exactly that case (the loaded epoch finished
    with its last batch), so the checkpoint resumes as Lightning resumes it without
    ``max_steps``: at the start of the next epoch. Any other checkpoint (mid-epoch,
    after validation, on a ``max_steps`` stop mid-epoch, ...) is restored as Lightning
    restores it. Install it with :func:`resume_epoch_end_checkpoints_at_next_epoch`.
    """

    def _loaded_epoch_finished(self) -> bool:
        """The loaded state is past the last batch of its epoch (end-of-epoch checkpoint)."""
        current = self.epoch_progress.current
        return (
            current.processed > 0
            and current.ready == current.started == current.processed
            and bool(self.epoch_loop.batch_progress.is_last_batch)
        )

    @_Loop.restarting.setter
    def restarting(self, restarting: bool) -> None:
        if restarting and self._iteration_based_training() and self._loaded_epoch_finished():
            _Loop.restarting.fset(self, False)  # resume at the next epoch, as without max_steps
            return
        _FitLoop.restarting.fset(self, restarting)


def resume_epoch_end_checkpoints_at_next_epoch(trainer: pl.Trainer) -> pl.Trainer:
    """Installs :class:`EpochEndResumeFitLoop` as ``trainer.fit_loop`` (before ``fit``).

    Keeps the trainer's training-epoch loop (``max_steps``, ``min_steps``) and
    ``min_epochs``/``max_epochs``. A trainer whose fit loop is already customised is left
    as it is, with a warning. Returns ``trainer``.
    """
    loop = trainer.fit_loop
    if isinstance(loop, EpochEndResumeFitLoop):
        return trainer
    if type(loop) is not _FitLoop:
        rank_zero_warn(
            f"hcl: trainer.fit_loop is a {type(loop).__name__}, not Lightning's _FitLoop: "
            "left as it is; with max_steps set, an end-of-epoch checkpoint may resume "
            "inside its finished epoch"
        )
        return trainer
    fixed = EpochEndResumeFitLoop(trainer, min_epochs=loop.min_epochs, max_epochs=loop.max_epochs)
    fixed.epoch_loop = loop.epoch_loop
    trainer.fit_loop = fixed
    return trainer
