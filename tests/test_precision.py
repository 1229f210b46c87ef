"""Mixed precision on the CPU: bf16-mixed trains finite; "16-mixed" on CPU is really bf16.

fp16-mixed (``trainer.precision=16-mixed``) needs a GPU: there Lightning uses fp16
autocast with a gradient scaler (see :class:`hcl_lightning.callbacks.nonfinite_guard.NonFiniteGuard`). The
hyperbolic distances are computed in float32 with autocast disabled in both cases.
"""

from __future__ import annotations

import math
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from hcl_lightning.baselines import HCLMoCoV2
from hcl_lightning.callbacks.nonfinite_guard import NonFiniteGuard
from tests.helpers import TINY_MOCO, SceneBatches


class Losses(pl.Callback):
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def test_bf16_mixed_trains_finite_on_cpu() -> None:
    torch.manual_seed(0)
    model = HCLMoCoV2(**TINY_MOCO, hcl_queue_size=32, hcl_lambda=0.5)
    losses, guard = Losses(), NonFiniteGuard(max_consecutive=1)
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses, guard],
    )
    trainer.fit(model, DataLoader(SceneBatches(n=16), batch_size=8, drop_last=True))
    assert len(losses.rows) == 2 and guard.total == 0
    for row in losses.rows:
        for key in ("train/loss_euc", "train/loss_hyp", "train/loss_total"):
            assert math.isfinite(row[key]), (key, row)
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name
            assert value.dtype == torch.float32, name  # the weights stay float32


def test_fp16_mixed_on_cpu_is_bf16() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(accelerator="cpu", precision="16-mixed", logger=False)
    plugin = trainer.precision_plugin
    assert getattr(plugin, "scaler", None) is None
    assert getattr(plugin, "device", "cpu") == "cpu"
    with plugin.forward_context():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
