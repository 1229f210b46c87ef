"""Checkpoint writing and resuming: atomic writes, a run's own last checkpoint.

- :class:`AtomicCheckpointIO`: a checkpoint is written to a temp file next to the
  target and renamed over it, so an interrupted write leaves the previous one intact.
- :func:`resolve_ckpt_path`: ``ckpt_path=auto`` resumes from the run's *own* output
  directory only, or starts from scratch.
- :func:`resume_epoch_end_checkpoints_at_next_epoch`: with ``max_steps`` set, an
  end-of-epoch checkpoint resumes at the start of the next epoch, as without it.
- :class:`~hcl_lightning.callbacks.RNGStateCheckpoint` (re-exported here): RNG states
  in checkpoints.

Why Lightning's own writer and loop are replaced: the distributed page of the docs.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from pytorch_lightning.loops.fit_loop import _FitLoop
from pytorch_lightning.loops.loop import _Loop
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from hcl_lightning.callbacks.rng_state import RNGStateCheckpoint

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

    A local checkpoint is written to ``.<name>.tmp-<pid>`` next to the target, fsynced
    and renamed over the target (``os.replace``), so a kill during a write leaves the
    previous checkpoint intact. Other file systems (``s3://``, ...) and calls with
    ``storage_options`` use Lightning's writer.

    Raises:
        RuntimeError: when a local write fails (e.g. a full disk); the temp file is
            removed and the message names the checkpoint and the free space there.

    Example:
        >>> trainer = pl.Trainer(plugins=[AtomicCheckpointIO()])
    """

    @override
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

    With ``max_steps`` set, Lightning 2.x restores a checkpoint written at the end of an
    epoch as a restart *inside* that finished epoch (it then runs one extra batch). This
    loop drops the forced restart in exactly that case, so the checkpoint resumes at the
    start of the next epoch, as Lightning resumes it without ``max_steps``; any other
    checkpoint is restored as Lightning restores it. The details: the distributed page
    of the docs. Install it with :func:`resume_epoch_end_checkpoints_at_next_epoch`.
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
