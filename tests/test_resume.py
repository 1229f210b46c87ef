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
    RNGStateCheckpoint,
    resolve_ckpt_path,
)
from tests.test_mixin import TINY_MOCO, SceneBatches
from tests.test_train_cli import compose_config, tiny_overrides

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


@pytest.mark.slow
@pytest.mark.xfail(
    reason="open: the resumed hcl-train run restarts *inside* epoch 1 (batch_idx 4, one "
    "step, ends at global_step 5) although its last.ckpt has the same loop state as the "
    "Python-level test above, which resumes correctly at epoch 2; under investigation",
    strict=False,
)
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
    resumed = train(compose_config(run))
    assert resumed["global_step"] == full["global_step"] == 8
    for key in ("loss_euc", "loss_hyp", "loss_total"):
        assert math.isclose(resumed[key], full[key], rel_tol=1e-5), key
