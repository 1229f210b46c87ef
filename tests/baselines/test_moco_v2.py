import copy
import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from hcl_lightning.baselines import MoCoV2
from hcl_lightning.baselines.base import scale_lr
from tests.helpers import info_nce, quiet_trainer, tiny_kwargs

B = 4  # batch size
STEPS = 3
TINY = tiny_kwargs(small_input=True, queue_size=32, batch_size=B)


def tiny_model(**kwargs) -> MoCoV2:
    return MoCoV2(**{**TINY, **kwargs})


def tiny_loader(n: int = B * STEPS, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = [
        (
            (torch.randn(3, 32, 32, generator=g), torch.randn(3, 32, 32, generator=g)),
            i % 3,
            f"img{i}",
        )
        for i in range(n)
    ]
    return DataLoader(data, batch_size=B, shuffle=False)


def tiny_trainer(**kwargs) -> pl.Trainer:
    return quiet_trainer(**{"max_steps": STEPS, **kwargs})


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten() for v in d.values()])


def banks(model: MoCoV2):
    return tuple(
        (c.memory_bank.bank.clone(), int(c.memory_bank.bank_ptr))
        for c in (model.criterion_a, model.criterion_b)
    )


class Recorder(pl.Callback):
    """Snapshots the model around every training step."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        rec = dict(
            global_step=trainer.global_step,
            views=[v.clone() for v in batch[0]],
            lr=trainer.optimizers[0].param_groups[0]["lr"],
            online=params(pl_module.backbone)
            | {"h." + k: v for k, v in params(pl_module.projection_head).items()},
            momentum_before=params(pl_module.backbone_momentum)
            | {"h." + k: v for k, v in params(pl_module.projection_head_momentum).items()},
            banks_before=banks(pl_module),
        )
        if trainer.global_step == 0:
            rec["encoder"] = (
                copy.deepcopy(pl_module.backbone),
                copy.deepcopy(pl_module.projection_head),
            )
        self.steps.append(rec)

    def on_before_backward(self, trainer, pl_module, loss):
        self.steps[-1]["momentum_after"] = params(pl_module.backbone_momentum) | {
            "h." + k: v for k, v in params(pl_module.projection_head_momentum).items()
        }
        self.steps[-1]["loss"] = loss.detach().clone()

    def on_after_backward(self, trainer, pl_module):
        self.steps[-1]["momentum_grads"] = [
            p.grad
            for p in list(pl_module.backbone_momentum.parameters())
            + list(pl_module.projection_head_momentum.parameters())
        ]
        self.steps[-1]["online_grads"] = [
            p.grad
            for p in list(pl_module.backbone.parameters())
            + list(pl_module.projection_head.parameters())
        ]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[-1]["banks_after"] = banks(pl_module)
        self.steps[-1]["output_loss"] = outputs["loss"].detach().clone()


# A large lr and a small momentum make the EMA step measurable in float32.
M0 = 0.9
LR = 3.0


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    model = tiny_model(momentum=M0, lr=LR)
    recorder = Recorder()
    trainer = tiny_trainer(callbacks=[recorder])
    trainer.fit(model, train_dataloaders=tiny_loader())
    return model, trainer, recorder.steps


def hand_qk(step):
    backbone, head = step["encoder"]
    with torch.no_grad():
        return [head(backbone(v)) for v in step["views"]]


def test_fit_runs_and_loss_is_finite(run):
    model, trainer, steps = run
    assert trainer.global_step == STEPS
    assert len(steps) == STEPS
    assert all(torch.isfinite(s["loss"]) for s in steps)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "train/momentum" in trainer.callback_metrics
    assert "train/lr" in trainer.callback_metrics


def test_loss_matches_hand_computation(run):
    model, _, steps = run
    step = steps[0]
    # At step 0 the momentum encoder equals the online one, so keys = online outputs
    # of the other view (BatchNorm in train mode; shuffling does not change its stats).
    torch.testing.assert_close(flat(step["momentum_after"]), flat(step["online"]))
    z0, z1 = hand_qk(step)
    (bank_a, _), (bank_b, _) = step["banks_before"]
    tau = model.hparams.temperature
    expected = 0.5 * (info_nce(z0, z1, bank_a, tau) + info_nce(z1, z0, bank_b, tau))
    torch.testing.assert_close(step["loss"], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(step["output_loss"], step["loss"])
    # not satisfied by a wrong pairing (q0 with k0) or by a shared/swapped queue
    wrong_pair = 0.5 * (info_nce(z0, z0, bank_a, tau) + info_nce(z1, z1, bank_b, tau))
    swapped = 0.5 * (info_nce(z0, z1, bank_b, tau) + info_nce(z1, z0, bank_a, tau))
    assert abs(float(step["loss"] - wrong_pair)) > 1e-2
    assert abs(float(step["loss"] - swapped)) > 1e-3  # hand match is within 1e-4


def test_banks_receive_k1_and_k0(run):
    _, _, steps = run
    step = steps[0]
    z0, z1 = hand_qk(step)  # keys of step 0 (see test above)
    (a_before, pa), (b_before, pb) = step["banks_before"]
    (a_after, pa2), (b_after, pb2) = step["banks_after"]
    assert (pa, pb, pa2, pb2) == (0, 0, B, B)
    torch.testing.assert_close(a_after[:B], F.normalize(z1, dim=1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b_after[:B], F.normalize(z0, dim=1), atol=1e-4, rtol=1e-4)
    assert torch.equal(a_after[B:], a_before[B:])
    assert torch.equal(b_after[B:], b_before[B:])
    # the next step appends behind them
    (a2, pa3), (b2, pb3) = steps[1]["banks_after"]
    assert (pa3, pb3) == (2 * B, 2 * B)
    assert torch.equal(a2[:B], a_after[:B]) and not torch.equal(a2[B : 2 * B], a_after[B : 2 * B])


def test_momentum_encoder_starts_equal_and_frozen():
    model = tiny_model()
    online = params(model.backbone) | {
        "h." + k: v for k, v in params(model.projection_head).items()
    }
    momentum = params(model.backbone_momentum) | {
        "h." + k: v for k, v in params(model.projection_head_momentum).items()
    }
    assert online.keys() == momentum.keys()
    assert torch.equal(flat(online), flat(momentum))
    assert all(not p.requires_grad for p in model.backbone_momentum.parameters())
    assert all(not p.requires_grad for p in model.projection_head_momentum.parameters())
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert model.backbone_momentum.conv1.weight is not model.backbone.conv1.weight


def test_momentum_update_is_scheduled_ema(run):
    _, _, steps = run
    for i, step in enumerate(steps):
        # cosine schedule from M0 to 1 over the STEPS optimiser steps
        m = 1 - (1 - M0) * (math.cos(math.pi * i / (STEPS - 1)) + 1) / 2
        before, online, after = (
            flat(step[k]) for k in ("momentum_before", "online", "momentum_after")
        )
        torch.testing.assert_close(after, m * before + (1 - m) * online, atol=1e-6, rtol=1e-5)
    # step 1: the online encoder has moved after one SGD step; the key encoder moves
    # by exactly (1 - m) = 0.05 of the gap, not by 1 - M0 = 0.1
    gap = flat(steps[1]["online"]) - flat(steps[1]["momentum_before"])
    moved = flat(steps[1]["momentum_after"]) - flat(steps[1]["momentum_before"])
    assert gap.norm() > 1e-3
    alpha = float(moved @ gap / (gap @ gap))
    assert alpha == pytest.approx(0.05, rel=1e-3)
    # last step: m = 1, the key encoder stays put
    assert torch.equal(flat(steps[2]["momentum_after"]), flat(steps[2]["momentum_before"]))


def test_key_encoder_gets_no_gradient(run):
    model, _, steps = run
    for step in steps:
        assert all(g is None for g in step["momentum_grads"])
        assert all(g is not None for g in step["online_grads"])
        assert any(g.abs().sum() > 0 for g in step["online_grads"])
    x = torch.randn(B, 3, 32, 32)
    assert not model.forward_momentum(x).requires_grad
    assert model(x).requires_grad
    assert model(x).shape == model.forward_momentum(x).shape == (B, 16)


def test_lr_is_scaled_and_cosine_per_step(run):
    _, _, steps = run
    base = LR * B / 256
    lrs = [s["lr"] for s in steps]
    # MoCo's cosine 0.5 * (1 + cos(pi * t / T)) per optimiser step, T = 3 steps
    assert lrs == pytest.approx([base, base * 0.75, base * 0.25])


def attach(model, **trainer_kwargs):
    trainer = tiny_trainer(**trainer_kwargs)
    model.trainer = trainer
    return trainer


def test_lr_scaling_batch_64_one_device():
    model = tiny_model(batch_size=64)
    recorder = Recorder()
    with pytest.warns(UserWarning, match="batch_size=64"):
        tiny_trainer(max_steps=1, callbacks=[recorder]).fit(model, tiny_loader(n=B))
    assert model.lr_scaled == pytest.approx(0.03 * 64 / 256)
    assert recorder.steps[0]["lr"] == pytest.approx(0.03 * 64 / 256)


def test_lr_scaling_with_accumulation_and_world_size():
    model = tiny_model(batch_size=64)
    attach(model, max_steps=10, accumulate_grad_batches=2)
    opt = model.configure_optimizers()["optimizer"]
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(0.03 * 64 * 2 / 256)
    assert opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    assert scale_lr(0.03, 32, world_size=8) == pytest.approx(0.03)
    assert scale_lr(0.03, 32, world_size=4, accumulate=2) == pytest.approx(0.03)


def test_warmup_steps_then_cosine():
    model = tiny_model(warmup_steps=2)
    attach(model, max_steps=10)
    scheduler = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    factor = scheduler.lr_lambdas[0]
    assert [factor(s) for s in (0, 1, 2)] == pytest.approx([0.5, 1.0, 1.0])
    assert factor(5) == pytest.approx((math.cos(math.pi * 3 / 8) + 1) / 2)
    assert 0 < factor(9) < 0.05


def test_warmup_epochs_in_a_fit():
    model = tiny_model(warmup_epochs=1)
    recorder = Recorder()
    # 3 batches per epoch, 2 epochs: 3 warm-up steps, then cosine over 3 steps
    tiny_trainer(max_steps=-1, max_epochs=2, callbacks=[recorder]).fit(model, tiny_loader())
    base = 0.03 * B / 256
    lrs = [s["lr"] for s in recorder.steps]
    expected = [1 / 3, 2 / 3, 1.0, 1.0, 0.75, 0.25]
    assert lrs == pytest.approx([base * f for f in expected])


def test_optimizer_covers_trainable_params_only():
    model = tiny_model()
    model.extra = nn.Parameter(torch.zeros(3))  # e.g. added by a mixin
    attach(model, max_steps=10)
    opt = model.configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.extra) in in_opt
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in in_opt for p in model.backbone_momentum.parameters())


def test_cooperative_subclassing_saves_hyperparameters():
    class Sub(MoCoV2):
        def __init__(self, extra=1, **kw):
            super().__init__(**kw)

    model = Sub(extra=5, **TINY)
    assert model.hparams.extra == 5
    assert model.hparams.backbone == "resnet18"
    assert model.hparams.queue_size == 32
    assert model.hparams.temperature == 0.2  # defaults are saved too

    class Mixin:
        def __init__(self, *, hcl_lambda=0.1, **kwargs):
            super().__init__(**kwargs)
            self.hcl_lambda = hcl_lambda

    class Combined(Mixin, MoCoV2):
        pass

    model = Combined(hcl_lambda=0.5, **TINY)
    assert model.hcl_lambda == 0.5
    assert model.hparams.out_dim == 16
    assert model.projection_head_momentum is not None
    with pytest.raises(TypeError):
        MoCoV2("resnet18")  # keyword-only


def test_queues_are_checkpointed():
    torch.manual_seed(0)
    a = tiny_model()
    torch.manual_seed(1)
    b = tiny_model()
    state = a.state_dict()
    assert "criterion_a.memory_bank.bank" in state and "criterion_b.memory_bank.bank_ptr" in state
    assert not torch.equal(a.criterion_a.memory_bank.bank, b.criterion_a.memory_bank.bank)
    b.load_state_dict(state)
    assert torch.equal(a.criterion_a.memory_bank.bank, b.criterion_a.memory_bank.bank)
    assert torch.equal(a.criterion_b.memory_bank.bank, b.criterion_b.memory_bank.bank)


def test_defaults_follow_moco_v2():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MoCoV2(backbone="resnet18", queue_size=64)  # small queue for speed
    hp = model.hparams
    assert (hp.temperature, hp.momentum, hp.lr, hp.weight_decay, hp.sgd_momentum) == (
        0.2,
        0.999,
        0.03,
        1e-4,
        0.9,
    )
    assert MoCoV2.__init__.__kwdefaults__["queue_size"] == 65536
    assert model.projection_head(torch.randn(2, 512)).shape == (2, 128)
    linears = [m for m in model.projection_head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 2048), (2048, 128)]
