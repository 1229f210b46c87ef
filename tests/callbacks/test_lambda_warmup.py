"""LambdaWarmup: λ from 0 to its target, logged, continued on resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytorch_lightning.loggers import CSVLogger

from hcl_lightning.baselines import HCLMoCoV2
from hcl_lightning.callbacks import LambdaWarmup
from tests.helpers import STEPS, TINY_HCL, WARMUP, read_csv, tiny_datamodule, tiny_trainer, values


def test_warmup_raises_lambda_linearly(tiny_fit):
    lam = values(read_csv(tiny_fit.csv_file), "train/hcl_lambda")
    target = TINY_HCL["hcl_lambda"]
    assert lam == pytest.approx({s: target * min(1, s / WARMUP) for s in range(STEPS)})
    assert lam[0] == 0.0


def test_warmup_writes_lambda_to_tensorboard(tiny_fit):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_fit.tb_dir))
    events.Reload()
    assert "train/hcl_lambda" in events.Tags()["scalars"]


def test_warmup_resumes_from_global_step(tiny_fit, tmp_path):
    model = HCLMoCoV2(**TINY_HCL)
    logger = CSVLogger(tmp_path, name="resume")
    trainer = tiny_trainer(tmp_path, STEPS + 2, [LambdaWarmup(warmup_steps=WARMUP)], logger)
    trainer.fit(
        model,
        datamodule=tiny_datamodule(tiny_fit.image_dir, tiny_fit.ann_file),
        ckpt_path=tiny_fit.checkpoint,
    )
    lam = values(read_csv(Path(logger.log_dir) / "metrics.csv"), "train/hcl_lambda")
    target = TINY_HCL["hcl_lambda"]
    assert lam == pytest.approx({3: target * 3 / WARMUP, 4: target})
    assert model.hcl_lambda == pytest.approx(target)


def test_lambda_at_and_explicit_target():
    warmup = LambdaWarmup(warmup_steps=10, target_lambda=0.5)
    assert [warmup.lambda_at(s) for s in (0, 5, 10, 20)] == [0.0, 0.25, 0.5, 0.5]
    assert LambdaWarmup(target_lambda=0.3).lambda_at(0) == 0.3
    with pytest.raises(RuntimeError, match="target_lambda"):
        LambdaWarmup(warmup_steps=3).lambda_at(1)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="warmup_steps"):
        LambdaWarmup(warmup_steps=-1)
    with pytest.raises(ValueError, match="target_lambda"):
        LambdaWarmup(target_lambda=-0.1)
