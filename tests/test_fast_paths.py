"""Speed options: batched encoder passes, channels_last, in-place torch.compile."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader

from hcl_lightning.baselines import HCLORL, HCLDenseCL, HCLMoCoV2, MoCoV2
from hcl_lightning.config import ConfigError, validate_config
from tests.helpers import (
    TINY_MOCO,
    SceneBatches,
    compose_config,
    load_example,
    quiet_trainer,
    seeded_model,
    tiny_overrides,
)

custom_module = load_example("custom_module")
HCLSimCLR = custom_module.HCLSimCLR


HCL = {**TINY_MOCO, "hcl_lambda": 0.5, "hcl_queue_size": 16}
B = TINY_MOCO["batch_size"]
LOSSES = ("train/loss_euc", "train/loss_hyp", "train/loss_total")


class Record(pl.Callback):
    """Per step: the losses, every gradient, and the batch sizes each backbone saw.

    With ``bn_eval``, every BatchNorm layer is put in eval mode before each step (after
    Lightning's ``model.train()``), so that a sample's output does not depend on its batch.
    """

    def __init__(self, bn_eval: bool) -> None:
        self.bn_eval = bn_eval
        self.losses: list[dict[str, float]] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        self.calls: dict[str, list[int]] = {"backbone": [], "backbone_momentum": []}

    def on_fit_start(self, trainer, pl_module) -> None:
        for name, rows in self.calls.items():
            getattr(pl_module, name).register_forward_hook(
                lambda module, args, out, rows=rows: rows.append(args[0].shape[0])
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.bn_eval:
            for module in pl_module.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append(
            {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append({k: float(trainer.callback_metrics[k]) for k in LOSSES})


def record_fit(model: pl.LightningModule, steps: int, bn_eval: bool, **dataset) -> Record:
    record = Record(bn_eval)
    loader = DataLoader(SceneBatches(n=B * steps, **dataset), batch_size=B, drop_last=True)
    torch.manual_seed(123)
    quiet_trainer(max_steps=steps, callbacks=[record]).fit(model, train_dataloaders=loader)
    return record


def assert_same_steps(ours: Record, reference: Record, rtol: float, atol: float) -> None:
    """Our steps' losses and gradients equal the first steps of ``reference``."""
    steps = len(ours.losses)
    for mine, theirs in zip(ours.losses, reference.losses[:steps], strict=True):
        assert mine == pytest.approx(theirs, rel=rtol)
    for mine, theirs in zip(ours.grads, reference.grads[:steps], strict=True):
        assert mine.keys() == theirs.keys()
        for name in mine:
            torch.testing.assert_close(mine[name], theirs[name], rtol=rtol, atol=atol, msg=name)


@pytest.fixture(scope="module")
def plain_steps() -> Record:
    """Two steps of HCL-MoCo-v2 with the default (separate, contiguous, eager) passes
    and eval-mode BatchNorm: the reference of the speed options.

    Eval mode, because train-mode BatchNorm backward over 8 images of 1x1 to 2x2 cells
    amplifies float32 rounding: two layouts' gradients then differ by up to 2 % of a
    tensor's largest entry (1e-13 in float64, see the channels_last test).
    """
    return record_fit(seeded_model(HCLMoCoV2, HCL), steps=2, bn_eval=True)


# -- batched encoder passes ------------------------------------------------------------


@pytest.mark.parametrize(("head", "steps"), [("shared", 2), ("separate", 1)])
def test_batched_forward_equals_separate_passes_with_eval_mode_batchnorm(
    head, steps, plain_steps
) -> None:
    separate = (
        plain_steps
        if head == "shared"
        else record_fit(seeded_model(HCLMoCoV2, HCL, hcl_head_mode=head), steps, bn_eval=True)
    )
    batched = record_fit(
        seeded_model(HCLMoCoV2, HCL, hcl_head_mode=head, hcl_batched_forward=True), steps, True
    )
    # One online and one momentum pass per step, of views + views + extra crops.
    assert batched.calls == {"backbone": [3 * B] * steps, "backbone_momentum": [3 * B] * steps}
    assert separate.calls == {"backbone": [B] * 3 * steps, "backbone_momentum": [B] * 3 * steps}
    assert_same_steps(batched, separate, rtol=1e-5, atol=1e-6)
    if head == "separate":  # the hyperbolic loss reaches the separate head in batched mode
        assert any(name.startswith("hcl_head.") for name in batched.grads[0])


def test_densecl_batched_forward_equals_separate_passes_with_eval_mode_batchnorm() -> None:
    """DenseCL's hook: one ResNet pass per encoder on [query view, scenes] and [key view,
    objects]; the global and dense losses and every gradient equal the separate passes'."""
    separate = record_fit(seeded_model(HCLDenseCL, HCL), steps=2, bn_eval=True)
    batched = record_fit(seeded_model(HCLDenseCL, HCL, hcl_batched_forward=True), 2, True)
    # DenseCL runs the ResNet layers itself; only the mixin's separate passes call it whole
    assert separate.calls == {"backbone": [B] * 2, "backbone_momentum": [B] * 2}
    assert batched.calls == {"backbone": [], "backbone_momentum": []}
    assert_same_steps(batched, separate, rtol=1e-5, atol=1e-6)


def test_batched_forward_in_train_mode_normalises_the_mixed_batch() -> None:
    """Train-mode BatchNorm normalises views with scenes (online) and with objects (keys):
    the step differs from the separate passes (the documented trade-off). Here (noise
    images, batch 8) the MoCo loss of the first step drops from 2.09 to 1.35: query and
    key statistics now come from batches sharing two thirds of their images."""
    separate = record_fit(seeded_model(HCLMoCoV2, HCL), steps=1, bn_eval=False)
    batched = record_fit(seeded_model(HCLMoCoV2, HCL, hcl_batched_forward=True), 1, False)
    for key in LOSSES:
        ours, theirs = batched.losses[0][key], separate.losses[0][key]
        assert math.isfinite(ours) and ours != pytest.approx(theirs, rel=1e-3)


def test_batched_forward_needs_the_hook_and_one_crop_shape() -> None:
    with pytest.raises(ValueError, match="no hcl_batched_step"):
        HCLSimCLR(hcl_queue_size=8, hcl_batched_forward=True)
    with pytest.raises(ValueError, match="no hcl_batched_step"):
        HCLORL(backbone="resnet18", hcl_batched_forward=True)
    with pytest.raises(ValueError, match="hcl_batched_forward must be True or False"):
        seeded_model(HCLMoCoV2, HCL, hcl_batched_forward="yes")
    model = seeded_model(HCLMoCoV2, HCL, hcl_batched_forward=True)
    views = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    batch = {"views": views, "scene": torch.randn(2, 3, 48, 48), "object": views[0]}
    with pytest.raises(ValueError, match=r"one crop shape.*'scene': \(3, 48, 48\)"):
        model.training_step(batch, 0)


# -- channels_last -----------------------------------------------------------------------


def test_channels_last_converts_parameters_and_inputs_and_keeps_the_values() -> None:
    """Float64, train-mode BatchNorm: outputs and gradients equal to rounding."""
    reference = seeded_model(MoCoV2, TINY_MOCO).double()
    model = seeded_model(MoCoV2, TINY_MOCO, channels_last=True).double()
    model.configure_model()
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * 20  # ResNet-18: 20 convolutions, online and momentum
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not convs[1].is_contiguous()  # 3x3 kernels: the layout really differs
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    batch = model.on_after_batch_transfer({"views": [x, x], "index": torch.arange(8)}, 0)
    assert batch["views"][0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch["views"][0], x) and torch.equal(batch["index"], torch.arange(8))
    ours, theirs = model(batch["views"][0]), reference(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    (ours**2).sum().backward()
    (theirs**2).sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-11, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_momentum(x), reference.forward_momentum(x))


def test_channels_last_training_steps_match_the_default_layout(plain_steps) -> None:
    model = seeded_model(HCLMoCoV2, HCL, channels_last=True)
    fast = record_fit(model, steps=1, bn_eval=True)
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_steps(fast, plain_steps, rtol=1e-4, atol=1e-5)


# -- torch.compile of the backbones --------------------------------------------------------

GRAPHS: list[int] = []


@torch._dynamo.register_backend
def hcl_test_counting(graph: torch.fx.GraphModule, example_inputs):
    """An eager backend that counts the graphs it receives."""
    GRAPHS.append(len(graph.graph.nodes))
    return graph.forward


def test_compile_backbone_in_place_keeps_state_dict_keys_and_outputs() -> None:
    reference = seeded_model(MoCoV2, TINY_MOCO).eval()
    model = seeded_model(MoCoV2, TINY_MOCO, compile_backbone="hcl_test_counting").eval()
    keys = list(model.state_dict())
    model.configure_model()
    model.configure_model()  # idempotent, as Lightning requires
    assert list(model.state_dict()) == keys == list(reference.state_dict())
    assert type(model.backbone) is type(reference.backbone)  # no OptimizedModule wrapper
    GRAPHS.clear()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.forward_momentum(x), reference.forward_momentum(x))
    assert len(GRAPHS) == 2 and min(GRAPHS) > 50  # both backbones, each a whole ResNet


def test_compiled_fit_matches_and_saves_plain_checkpoint_keys(tmp_path, plain_steps) -> None:
    model = seeded_model(HCLMoCoV2, HCL, compile_backbone="hcl_test_counting")
    GRAPHS.clear()
    assert_same_steps(record_fit(model, steps=1, bn_eval=True), plain_steps, 1e-4, 1e-5)
    assert GRAPHS  # the Trainer's configure_model compiled the backbones
    path = tmp_path / "last.ckpt"
    model.trainer.save_checkpoint(path)
    keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert keys == seeded_model(HCLMoCoV2, HCL).state_dict().keys()


def test_densecl_compiles_the_resnet_layers_it_calls() -> None:
    model = seeded_model(HCLDenseCL, HCL, compile_backbone="eager")
    names = {n for n, m in model.named_modules() if any(m is t for t in model.compile_targets())}
    expected = {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}
    assert names == {f"{b}.{n}" for b in ("backbone", "backbone_momentum") for n in expected}


def test_orl_speed_options_keep_its_training_steps() -> None:
    """ORL (BYOL-style, no queue) with channels_last and a compiled backbone: the same
    losses and gradients as the plain model (eval-mode BatchNorm, float32 tolerance)."""
    from tests.helpers import TINY_ORL

    orl = {**TINY_ORL, "hcl_lambda": 0.5, "hcl_queue_size": 16}
    plain = record_fit(seeded_model(HCLORL, orl), steps=1, bn_eval=True)
    model = seeded_model(HCLORL, orl, channels_last=True, compile_backbone="hcl_test_counting")
    GRAPHS.clear()
    fast = record_fit(model, steps=1, bn_eval=True)
    assert len(GRAPHS) >= 2  # online and target backbones
    assert model.backbone_momentum.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_steps(fast, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [MoCoV2, HCLORL])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels_last": "yes"}, "channels_last='yes': must be true or false"),
        ({"compile_backbone": "nope"}, "compile_backbone='nope': must be false, true"),
        ({"compile_mode": "fast"}, "compile_mode='fast': must be null or one of default"),
        (
            {"compile_backbone": "eager", "compile_mode": "max-autotune"},
            "compile_mode='max-autotune' needs compile_backbone=true or 'inductor'",
        ),
    ],
)
def test_invalid_speed_options_are_named(cls, kwargs, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        cls(**TINY_MOCO, **kwargs) if cls is MoCoV2 else cls(backbone="resnet18", **kwargs)


# -- hcl-train config -------------------------------------------------------------------------


@pytest.fixture()
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.usefixtures("_cache_dir")
def test_hcl_train_config_composes_with_the_speed_options(tmp_path: Path) -> None:
    speed = [
        "hcl.batched_forward=true",
        "model.channels_last=true",
        "model.compile_backbone=aot_eager",
    ]
    cfg = compose_config([*tiny_overrides(tmp_path), *speed, f"output_dir={tmp_path}"])
    validate_config(cfg)
    model = instantiate(cfg.model)
    assert model.hcl_batched_forward is True
    assert (model.hparams.channels_last, model.hparams.compile_backbone) == (True, "aot_eager")
    default = compose_config([])
    assert default.hcl.batched_forward is False and default.model.hcl_batched_forward is False
    assert (default.model.channels_last, default.model.compile_backbone) == (False, False)
    for name in ("densecl", "orl"):  # every shipped baseline has the speed options
        other = compose_config([f"model={name}", "model.channels_last=true"])
        assert other.model.channels_last is True and other.model.compile_backbone is False


@pytest.mark.usefixtures("_cache_dir")
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hcl.batched_forward=1"], "hcl.batched_forward=1: must be true or false"),
        (
            ["hcl.batched_forward=true", "data.scene_size=48"],
            "hcl.batched_forward=true with data.scene_size=48 and data.object_size=32",
        ),
        (
            ["model=orl", "hcl.batched_forward=true"],
            "model._target_=hcl_lightning.baselines.HCLORL has no hcl_batched_step",
        ),
        (["model.compile_backbone=nope"], "model.compile_backbone='nope': must be false, true"),
        (
            ["model.compile_backbone=eager", "model.compile_mode=max-autotune"],
            "model.compile_mode='max-autotune' needs compile_backbone=true",
        ),
        (["model.channels_last=2"], "model.channels_last=2: must be true or false"),
    ],
)
def test_invalid_speed_options_in_the_config_are_named(tmp_path, overrides, message) -> None:
    tiny = tiny_overrides(tmp_path)
    if "model=orl" in overrides:  # BYOL-style: no baseline queue
        tiny = [o for o in tiny if not o.startswith("model.queue_size")]
    cfg = compose_config([*tiny, *overrides, f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(cfg)
