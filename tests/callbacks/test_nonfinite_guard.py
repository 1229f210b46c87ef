"""NonFiniteGuard: NaN injected into one component is skipped, named, and stops the run."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from hcl_lightning.baselines import HCLMoCoV2
from hcl_lightning.callbacks.nonfinite_guard import NonFiniteGuard, NonFiniteLossError
from tests.helpers import TINY_MOCO, SceneBatches


class Poison(pl.Callback):
    """Makes a module's output (or a parameter's gradient) NaN at the given steps."""

    def __init__(self, steps, module=None, parameter=None) -> None:
        self.steps = steps  # a set of global steps, or a predicate
        self.active = False
        if module is not None:
            module.register_forward_hook(
                lambda mod, inputs, out: self._nan(out) if self.active else out
            )
        if parameter is not None:
            parameter.register_hook(lambda grad: grad * math.nan if self.active else grad)

    @staticmethod
    def _nan(out):
        if isinstance(out, tuple):
            return (out[0] * math.nan, *out[1:])
        return out * math.nan

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        self.active = self.steps(step) if callable(self.steps) else step in self.steps


class Record(pl.Callback):
    """State before and after each step, and the logged counters."""

    def __init__(self) -> None:
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        self.after: dict[int, dict[str, torch.Tensor]] = {}
        self.metrics: dict[int, dict[str, float]] = {}

    @staticmethod
    def state(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before[trainer.global_step] = self.state(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1
        self.after[step] = self.state(pl_module)
        self.metrics[step] = {k: float(v) for k, v in trainer.callback_metrics.items()}


def model(**kwargs) -> HCLMoCoV2:
    torch.manual_seed(0)
    return HCLMoCoV2(**TINY_MOCO, hcl_queue_size=32, hcl_lambda=0.5, **kwargs)


def fit(module, callbacks, steps, **trainer_kwargs) -> pl.Trainer:
    kwargs = {
        "max_steps": steps,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": callbacks,
        **trainer_kwargs,
    }
    trainer = pl.Trainer(**kwargs)
    torch.manual_seed(1)
    trainer.fit(module, DataLoader(SceneBatches(n=16), batch_size=8, drop_last=True))
    return trainer


def changed(before, after, prefix=""):
    return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]


def test_a_nan_hyperbolic_step_is_skipped_restored_and_logged() -> None:
    module = model()
    guard, record = NonFiniteGuard(max_consecutive=3), Record()
    poison = Poison({1}, module=module.hcl_head)  # the 2nd step: scene and object keys NaN
    with pytest.warns(UserWarning, match=r"non-finite hyperbolic at step 1.*loss_hyp=nan"):
        fit(module, [poison, guard, record], steps=4)

    before, after = record.before[1], record.after[1]
    # parameters, queues (the NaN keys were enqueued) and BN statistics: all as before,
    # except the momentum encoder's EMA update, which comes before the forward pass
    assert changed(before, after) == [
        k for k in changed(before, after) if "momentum" in k and "running" not in k
    ]
    assert not changed(before, after, "hcl_criterion")  # the hyperbolic queue
    assert not changed(before, after, "backbone.")  # online weights and BN statistics
    assert changed(record.before[0], record.after[0], "backbone.")  # a good step moves them
    assert (guard.total, guard.consecutive, guard.by_component) == (
        1,
        0,
        {"euclidean": 0, "hyperbolic": 1},
    )
    assert record.metrics[1]["train/nonfinite_steps"] == 1
    assert record.metrics[1]["train/nonfinite_hyperbolic"] == 1
    for step in (2, 3):  # training goes on with finite losses
        assert math.isfinite(record.metrics[step]["train/loss_total"])
    assert all(torch.isfinite(v).all() for v in record.after[3].values() if v.is_floating_point())


def test_consecutive_bad_euclidean_steps_stop_with_the_component_named(tmp_path) -> None:
    module = model()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    poison = Poison(lambda step: step >= 1, module=module.criterion_a)  # the MoCo loss
    guard = NonFiniteGuard(max_consecutive=2)
    with pytest.warns(UserWarning, match="non-finite euclidean at step 1"):
        with pytest.raises(
            NonFiniteLossError,
            match=(
                r"2 consecutive steps with a non-finite euclidean at step 2: loss=nan "
                r"\(train/loss_euc=nan.*the last good step was 0"
            ),
        ):
            fit(
                module,
                [poison, guard, checkpoint],
                steps=10,
                enable_checkpointing=True,
                default_root_dir=tmp_path,
            )
    assert guard.by_component == {"euclidean": 2, "hyperbolic": 0}
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] >= 1
    for name, value in saved["state_dict"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name


def test_a_nan_gradient_with_a_finite_loss_names_the_parameter() -> None:
    module = model(hcl_learn_alpha=True)  # a hyperbolic parameter with a gradient
    name, weight = next(
        (n, p) for n, p in module.named_parameters() if n.startswith("hcl_") and p.requires_grad
    )
    guard, record = NonFiniteGuard(max_consecutive=1), Record()
    poison = Poison({0}, parameter=weight)
    with pytest.raises(NonFiniteLossError, match=f"non-finite hyperbolic.*gradient of {name}"):
        fit(module, [poison, guard, record], steps=3)
    assert not changed(record.before[0], Record.state(module), "hcl_head")


def test_guard_arguments() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_consecutive"):
            NonFiniteGuard(max_consecutive=bad)


def test_hcl_train_wires_the_guard_and_the_data_summary(tmp_path, monkeypatch) -> None:
    from hcl_lightning.train import train
    from tests.helpers import compose_config, tiny_overrides

    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_config([*tiny_overrides(tmp_path), f"output_dir={tmp_path / 'run'}"])
    assert cfg.callbacks.nonfinite_guard.max_consecutive == 5
    summary = train(cfg)
    assert summary["nonfinite_steps"] == 0
    assert summary["data_hygiene"] == "0 of 16 images unreadable"
