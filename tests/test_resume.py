"""Resume without loss: kill a run after step k, resume from its last checkpoint.

The uninterrupted and the resumed run must produce the same losses to float tolerance.
Checkpoints are written at the end of each epoch, so the resume is at an epoch
boundary, the case that can be exact: model, momentum encoder, optimiser, scheduler,
queues and pointers, loop counters and (with :class:`RNGStateCheckpoint`) the RNG that
shuffles the data and draws the augmentations. A mid-epoch resume restarts the data
loader's epoch and is only approximate (see ``hcl_lightning/checkpointing.py``).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from hcl_lightning.baselines import HCLMoCoV2
from hcl_lightning.checkpointing import (
    AtomicCheckpointIO,
    EpochEndResumeFitLoop,
    RNGStateCheckpoint,
    resolve_ckpt_path,
    resume_epoch_end_checkpoints_at_next_epoch,
)
from tests.helpers import TINY_MOCO, SceneBatches, compose_config, tiny_overrides

BATCH = 4
N = 16  # 4 steps per epoch
EPOCHS = 2
KILL_AFTER = 5  # global steps done when the run dies: 1 step into epoch 2


class Killed(RuntimeError):
    pass


class KillAfter(pl.Callback):
    """Raises after ``step`` optimiser steps, like a crash or a pre-emption."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise Killed(f"killed after step {trainer.global_step}")


class Losses(pl.Callback):
    def __init__(self) -> None:
        self.values: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.values[trainer.global_step] = float(loss)


class NoisyScenes(SceneBatches):
    """SceneBatches with a random 'augmentation' drawn from the global torch RNG."""

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        noise = 0.1 * torch.randn(())
        return {**sample, "scene": sample["scene"] + noise, "object": sample["object"] - noise}


def fit(root: Path, *, kill: int | None = None, ckpt_path=None, rng: bool = True) -> Losses:
    pl.seed_everything(0)
    model = HCLMoCoV2(**{**TINY_MOCO, "queue_size": 16, "batch_size": BATCH}, hcl_queue_size=16)
    losses = Losses()
    callbacks: list = [losses, ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)]
    callbacks += [RNGStateCheckpoint()] if rng else []
    callbacks += [KillAfter(kill)] if kill else []
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        default_root_dir=root,
        logger=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(NoisyScenes(n=N), batch_size=BATCH, shuffle=True, drop_last=True)
    trainer.fit(model, train_dataloaders=loader, ckpt_path=ckpt_path)
    return losses


@pytest.fixture(scope="module", autouse=True)
def _warm_up(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One throw-away step: the first training step of a process on CPU can differ in
    the last float bits from later ones (kernel warm-up), and BatchNorm on batches of 4
    amplifies such bits over a few steps. Compared runs must all be "later" ones."""
    with pytest.raises(Killed):
        fit(tmp_path_factory.mktemp("warm"), kill=1, rng=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Losses:
    return fit(tmp_path_factory.mktemp("full"))


def test_killed_run_resumes_exactly(tmp_path: Path, uninterrupted: Losses) -> None:
    with pytest.raises(Killed):
        fit(tmp_path, kill=KILL_AFTER)
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 4 and checkpoint["epoch"] == 0  # end of epoch 1
    state = checkpoint["state_dict"]
    for key in (
        "backbone_momentum.conv1.weight",
        "projection_head_momentum.layers.0.weight",
        "criterion_a.memory_bank.bank",
        "criterion_a.memory_bank.bank_ptr",
        "criterion_b.memory_bank.bank",
        "criterion_b.memory_bank.bank_ptr",
        "hcl_criterion.queue.bank",
        "hcl_criterion.queue.bank_ptr",
    ):
        assert key in state, key
    assert int(state["hcl_criterion.queue.bank_ptr"]) == 0  # 4 steps x 4 keys in 16 slots
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    assert "RNGStateCheckpoint" in checkpoint["callbacks"]

    resumed = fit(tmp_path, ckpt_path=str(last))
    assert sorted(resumed.values) == [5, 6, 7, 8]  # epoch 2 only, step 5 again
    for step, loss in resumed.values.items():
        assert loss == pytest.approx(uninterrupted.values[step], rel=1e-6, abs=1e-7), step


class Steps(pl.Callback):
    """(epoch, batch_idx, global_step) of every batch, and the epochs started."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, int]] = []
        self.epochs_started: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs_started.append(trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append((trainer.current_epoch, batch_idx, trainer.global_step))


def _resume_steps(root: Path, *, fix_loop: bool) -> Steps:
    """A tiny 2-epoch run with max_steps, killed in epoch 2, resumed from last.ckpt."""

    def run(callbacks, ckpt_path=None) -> None:
        pl.seed_everything(0)
        model = HCLMoCoV2(**{**TINY_MOCO, "queue_size": 16, "batch_size": BATCH}, hcl_queue_size=16)
        trainer = pl.Trainer(
            max_epochs=EPOCHS,
            max_steps=100,
            accelerator="cpu",
            logger=False,
            callbacks=[ModelCheckpoint(dirpath=root, save_last=True), *callbacks],
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        if fix_loop:
            resume_epoch_end_checkpoints_at_next_epoch(trainer)
            assert isinstance(trainer.fit_loop, EpochEndResumeFitLoop)
            assert trainer.fit_loop.max_steps == 100 and trainer.fit_loop.max_epochs == EPOCHS
        loader = DataLoader(SceneBatches(n=N), batch_size=BATCH, drop_last=True)
        trainer.fit(model, train_dataloaders=loader, ckpt_path=ckpt_path)

    with pytest.raises(Killed):
        run([KillAfter(KILL_AFTER)])
    steps = Steps()
    run([steps], ckpt_path=str(root / "last.ckpt"))
    return steps


def test_epoch_end_resume_fit_loop_restarts_at_the_next_epoch(tmp_path: Path) -> None:
    steps = _resume_steps(tmp_path, fix_loop=True)
    assert steps.epochs_started == [1]
    assert steps.batches == [(1, 0, 5), (1, 1, 6), (1, 2, 7), (1, 3, 8)]


def test_lightning_alone_resumes_inside_the_finished_epoch(tmp_path: Path) -> None:
    """Control, documenting the Lightning behaviour that EpochEndResumeFitLoop works
    around. If this fails after a Lightning upgrade, Lightning resumes such checkpoints
    correctly by itself and the workaround can go."""
    steps = _resume_steps(tmp_path, fix_loop=False)
    assert steps.epochs_started == []  # on_train_epoch_start never fires
    assert steps.batches == [(0, 4, 5)]  # one extra batch in the finished epoch 1


def test_without_rng_states_the_resumed_epoch_differs(tmp_path: Path, uninterrupted) -> None:
    """Control: the RNG callback is what makes the shuffling/augmentation continue."""
    with pytest.raises(Killed):
        fit(tmp_path, kill=KILL_AFTER, rng=False)
    resumed = fit(tmp_path, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"), rng=False)
    gaps = [abs(resumed.values[s] - uninterrupted.values[s]) for s in resumed.values]
    assert max(gaps) > 1e-4


class Torn(AtomicCheckpointIO):
    """Writes half a checkpoint, then dies (as a kill during the write would)."""

    def _write(self, checkpoint, handle) -> None:
        handle.write(b"\x80\x02half a checkpoint")
        handle.flush()
        raise KeyboardInterrupt("killed while writing")


def test_checkpoint_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    with pytest.raises(KeyboardInterrupt):
        Torn().save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path)["step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temp left


class DiskFull(AtomicCheckpointIO):
    """Fails as ``torch.save`` fails on a full disk."""

    def _write(self, checkpoint, handle) -> None:
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8 vs 4")


def test_failed_checkpoint_write_names_the_file_and_free_space(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    with pytest.raises(RuntimeError, match="could not write checkpoint") as failure:
        DiskFull().save_checkpoint({"step": 2}, path)
    message = str(failure.value)
    assert str(path) in message and "MiB free" in message and "unexpected pos" in message
    assert isinstance(failure.value.__cause__, RuntimeError)
    assert torch.load(path)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_checkpoint_survives_sigkill_during_write(tmp_path: Path) -> None:
    """A real kill (os._exit mid-write, no cleanup) leaves the old file and a temp file."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    code = (
        "import os, sys, torch\n"
        "from hcl_lightning.checkpointing import AtomicCheckpointIO\n"
        "class Die(AtomicCheckpointIO):\n"
        "    def _write(self, checkpoint, handle):\n"
        "        handle.write(b'partial'); handle.flush(); os._exit(9)\n"
        f"Die().save_checkpoint({{'step': 2}}, {str(path)!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 9
    assert torch.load(path)["step"] == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert all(name.startswith(".last.ckpt.tmp-") for name in leftovers)


def test_auto_resumes_only_from_the_runs_own_directory(tmp_path: Path) -> None:
    run, other = tmp_path / "0_hcl.lam=0", tmp_path / "1_hcl.lam=0.1"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path("auto", run) is None  # a sibling's checkpoint is not ours
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path("auto", run) == str((run / "checkpoints" / "last.ckpt").resolve())
    hpc = run / "hpc_ckpt_2.ckpt"  # Lightning's SLURM pre-emption checkpoint, newer
    (run / "hpc_ckpt_1.ckpt").write_bytes(b"x")
    hpc.write_bytes(b"x")
    assert resolve_ckpt_path("auto", run) == str(hpc.resolve())
    assert resolve_ckpt_path(None, run) is None
    assert resolve_ckpt_path("some.ckpt", run) == "some.ckpt"


def test_resumed_run_logs_csv_into_a_new_attempt_folder(tmp_path: Path) -> None:
    """Lightning's CSVLogger deletes the metrics.csv in its directory: a resumed run
    gets csv/resume_<n>/ (the first free n) when csv/ already holds a log."""
    from hcl_lightning.train import _csv_logs_per_attempt

    def version(output_dir: Path, extra=()) -> str | None:
        cfg = compose_config([f"output_dir={output_dir}", *extra])
        _csv_logs_per_attempt(cfg)
        return cfg.logger.csv.version

    run = tmp_path / "run"
    assert version(run) == ""  # nothing logged yet: csv/ as for a fresh run
    (run / "csv").mkdir(parents=True)
    assert version(run) == ""  # an empty csv/ is reused
    (run / "csv" / "metrics.csv").write_text("step\n1\n")
    assert version(run) == "resume_1"
    (run / "csv" / "resume_1").mkdir()
    assert version(run) == "resume_2"
    (run / "csv" / "v2").mkdir()
    (run / "csv" / "v2" / "metrics.csv").write_text("step\n1\n")
    assert version(run, ["logger.csv.version=v2"]) == "v2/resume_1"
    assert version(run, ["logger.csv.version=null"]) is None  # Lightning's version_<n>


def _csv_steps(path: Path) -> list[int]:
    import csv

    with open(path, newline="") as handle:
        return sorted({int(row["step"]) for row in csv.DictReader(handle) if row.get("step")})


def test_cli_resume_with_ckpt_path_auto(tmp_path: Path, monkeypatch) -> None:
    """hcl-train killed after step 5 and rerun in the same directory ends like a full run."""
    from hcl_lightning.train import prepare_synthetic_data, train

    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path / "cache"))
    base = [
        *[o for o in tiny_overrides(tmp_path) if not o.startswith("trainer.max_steps")],
        "trainer.max_epochs=2",  # 16 images, batch 4: 4 steps per epoch
        "ckpt_path=auto",
    ]
    prepare_synthetic_data(compose_config(base))  # generate once, outside the timed runs
    full = train(compose_config([*base, f"output_dir={tmp_path / 'full'}"]))
    run = [*base, f"output_dir={tmp_path / 'run'}"]
    kill = [
        "+callbacks.kill._target_=tests.test_resume.KillAfter",
        f"+callbacks.kill.step={KILL_AFTER}",
    ]
    with pytest.raises(Killed):
        train(compose_config([*run, *kill]))
    first_log = tmp_path / "run" / "csv" / "metrics.csv"
    first_steps = _csv_steps(first_log)
    assert first_steps[:4] == [0, 1, 2, 3]  # epoch 1 (logged steps are global_step - 1)
    resumed = train(compose_config(run))
    assert resumed["global_step"] == full["global_step"] == 8
    assert resumed["epochs"] == full["epochs"] == 2
    for key in ("loss_euc", "loss_hyp", "loss_total"):
        assert math.isclose(resumed[key], full[key], rel_tol=1e-5), key
    # the killed attempt's log is kept; the resumed attempt logs next to it
    assert _csv_steps(first_log) == first_steps
    assert Path(resumed["log_dir"]) == (tmp_path / "run" / "csv" / "resume_1").resolve()
    resumed_steps = _csv_steps(Path(resumed["log_dir"]) / "metrics.csv")
    assert resumed_steps[0] >= 4 and resumed_steps[-1] == 7  # epoch 2 only
