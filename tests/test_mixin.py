"""HCLMixin: exact baseline reproduction at λ=0, gradients, optimiser, custom modules."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from hcl_lightning import HCLMixin
from hcl_lightning.baselines import HCLMoCoV2, MoCoV2
from tests.helpers import TINY_MOCO, SceneBatches, ViewsOnly, fit, load_example, seeded_model

custom_module = load_example("custom_module")
HCLSimCLR = custom_module.HCLSimCLR
SimCLR = custom_module.SimCLR


def build(cls, **kwargs):
    return seeded_model(cls, TINY_MOCO, **kwargs)


def test_lambda_zero_reproduces_the_baseline_exactly() -> None:
    baseline = fit(build(MoCoV2), ViewsOnly(), steps=3)
    hcl = fit(build(HCLMoCoV2, hcl_lambda=0.0, hcl_queue_size=16), SceneBatches(), steps=3)
    assert hcl.losses == baseline.losses
    for ours, theirs in zip(hcl.grads, baseline.grads, strict=True):
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_positive_lambda_adds_the_hyperbolic_loss_and_changes_backbone_gradients() -> None:
    baseline = fit(build(MoCoV2), ViewsOnly(), steps=1)
    hcl = fit(build(HCLMoCoV2, hcl_lambda=0.5, hcl_queue_size=16), SceneBatches(), steps=1)
    metrics = hcl.metrics[0]
    assert metrics["train/loss_euc"] == pytest.approx(baseline.losses[0], rel=1e-6)
    expected_total = metrics["train/loss_euc"] + 0.5 * metrics["train/loss_hyp"]
    assert hcl.losses[0] == pytest.approx(expected_total, rel=1e-5)
    difference = sum((hcl.grads[0][n] - baseline.grads[0][n]).abs().sum() for n in hcl.grads[0])
    assert difference > 0
    for key in ("train/hyp_acc1", "train/norm_scene", "train/norm_object"):
        assert key in metrics


def test_keys_come_from_the_momentum_encoder_without_gradient() -> None:
    model = build(HCLMoCoV2, hcl_queue_size=16)
    with torch.no_grad():
        for p in model.backbone_momentum.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    key = model.hcl_key(x)
    expected = model.projection_head_momentum(model.backbone_momentum(x).flatten(1))
    torch.testing.assert_close(key, expected)
    assert not key.requires_grad
    assert not torch.allclose(key, model.hcl_query(x))


def test_hyperbolic_parameters_reach_the_optimizer_without_weight_decay() -> None:
    model = build(HCLMoCoV2, hcl_queue_size=16, hcl_learn_curvature=True, hcl_learn_alpha=True)
    trainer = pl.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_progress_bar=False)
    model.trainer = trainer
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert groups[id(model.hcl_head.log_alpha)]["weight_decay"] == 0.0
    assert groups[id(model.hcl_head.ball.isp_c)]["weight_decay"] == 0.0
    assert groups[id(next(model.backbone.parameters()))]["weight_decay"] == pytest.approx(1e-4)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs[0] == pytest.approx(lrs[-1]) and lrs[0] < scheduler.base_lrs[0]


def batchnorm_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [
        b.clone() for m in module.modules() if isinstance(m, nn.BatchNorm2d) for b in m.buffers()
    ]


@pytest.mark.parametrize("head_mode", ["shared", "separate"])
def test_running_batchnorm_keys_depend_on_their_own_crop_only(head_mode: str) -> None:
    """Default keys: the same crop gives the same key in any batch, in train mode, and
    the key encoder's BatchNorm statistics and modes are left as they were."""
    model = build(HCLMoCoV2, hcl_queue_size=16, hcl_head_mode=head_mode, hcl_dim=8)
    model.train()
    batch = torch.randn(4, 3, 32, 32)
    before = batchnorm_buffers(model.backbone_momentum)

    def keys(x):
        with torch.no_grad():
            return model._hcl_key_head(model.hcl_key(x))

    alone, together = keys(batch[:1]), keys(batch)
    torch.testing.assert_close(alone[0], together[0], rtol=1e-4, atol=1e-5)
    after = batchnorm_buffers(model.backbone_momentum)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(m.training for m in model.modules())
    model.hcl_key_batchnorm = "batch"  # the batch's statistics: the key depends on the batch
    alone, together = keys(batch[:2]), keys(batch)
    assert not torch.allclose(alone, together[:2], rtol=1e-3, atol=1e-4)


def test_scale_alpha_is_frozen_unless_learnt() -> None:
    assert not build(HCLMoCoV2, hcl_queue_size=16).hcl_head.log_alpha.requires_grad
    model = build(HCLMoCoV2, hcl_queue_size=16, hcl_learn_alpha=True, hcl_alpha=0.3)
    assert model.hcl_head.log_alpha.requires_grad
    assert float(model.hcl_head.alpha) == pytest.approx(0.3)


def test_hyperbolic_loss_decreases_on_training() -> None:
    model = build(HCLMoCoV2, hcl_lambda=1.0, hcl_queue_size=0, lr=0.3)
    capture = fit(model, SceneBatches(n=8, object_in_scene=True), steps=20)
    hyp = [m["train/loss_hyp"] for m in capture.metrics]
    assert sum(hyp[-5:]) / 5 < 0.8 * sum(hyp[:5]) / 5


def test_separate_head_maps_backbone_features() -> None:
    model = build(HCLMoCoV2, hcl_head_mode="separate", hcl_dim=8, hcl_queue_size=16)
    assert model.hcl_head.output_dim == 8
    capture = fit(model, SceneBatches(n=8), steps=1)
    assert torch.isfinite(torch.tensor(capture.losses)).all()


def test_invalid_mixin_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="hcl_lambda"):
        build(HCLMoCoV2, hcl_lambda=-0.1)
    with pytest.raises(ValueError, match="hcl_head"):
        build(HCLMoCoV2, hcl_head_mode="both")
    with pytest.raises(ValueError, match="temperature"):
        build(HCLMoCoV2, hcl_tau=0.0)
    with pytest.raises(ValueError, match="hcl_key_batchnorm.*running.*batch"):
        build(HCLMoCoV2, hcl_key_batchnorm="shuffle")


def test_simclr_from_lightly_examples_trains_with_hcl() -> None:
    torch.manual_seed(0)
    model = HCLSimCLR(hcl_lambda=0.1, hcl_queue_size=32)
    assert isinstance(model, SimCLR) and not hasattr(model, "backbone_momentum")
    capture = fit(model, SceneBatches(n=16), steps=3)
    assert all(torch.isfinite(torch.tensor(capture.losses)))
    assert "train/loss_hyp" in capture.metrics[-1]


class BYOL(pl.LightningModule):
    """lightly's BYOL example (momentum encoder, predictor, no queue)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3), nn.AdaptiveAvgPool2d(1))
        self.projection_head = BYOLProjectionHead(16, 32, 16)
        self.prediction_head = BYOLPredictionHead(16, 32, 16)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def training_step(self, batch, batch_idx):
        update_momentum(self.backbone, self.backbone_momentum, m=0.99)
        update_momentum(self.projection_head, self.projection_head_momentum, m=0.99)
        (x0, x1) = batch[0]
        p0 = self.prediction_head(self.projection_head(self.backbone(x0).flatten(1)))
        z1 = self.projection_head_momentum(self.backbone_momentum(x1).flatten(1)).detach()
        return self.criterion(p0, z1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.06)


def test_byol_style_module_uses_its_momentum_encoder_for_keys() -> None:
    class HCLBYOL(HCLMixin, BYOL):
        pass

    model = HCLBYOL(hcl_queue_size=16)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    expected = model.projection_head_momentum(model.backbone_momentum(x).flatten(1))
    torch.testing.assert_close(model.hcl_key(x), expected)
    model.train()
    capture = fit(model, SceneBatches(n=8, size=16), steps=2, batch_size=4)
    assert all(torch.isfinite(torch.tensor(capture.losses)))


def test_baseline_hooks_take_precedence_over_the_mixin_defaults() -> None:
    class OddSimCLR(SimCLR):
        def hcl_query(self, x):
            return self.forward(x) * 2

        @torch.no_grad()
        def hcl_key(self, x):
            return self.forward(x) * 3

    class HCLOdd(HCLMixin, OddSimCLR):
        pass

    model = HCLOdd(hcl_queue_size=8).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.hcl_query(x), model.forward(x) * 2)
    torch.testing.assert_close(model.hcl_key(x), model.forward(x) * 3)


def test_former_hcl_head_keyword_still_works_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="hcl_head_mode"):
        model = build(HCLMoCoV2, hcl_head="separate", hcl_dim=8, hcl_queue_size=16)
    assert model.hcl_head_mode == "separate" and model.hcl_head.output_dim == 8
    assert model.hparams.hcl_head_mode == "separate" and "hcl_head" not in model.hparams
    with pytest.raises(ValueError, match="hcl_head"), pytest.warns(DeprecationWarning):
        build(HCLMoCoV2, hcl_head="both")
