"""DenseCL: hand-computed losses, correspondence, momentum keys, queues, warm-up, HCL."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from hcl_lightning.baselines import DenseCL, HCLDenseCL
from tests.helpers import (
    SceneBatches,
    ViewsOnly,
    fit,
    info_nce,
    quiet_trainer,
    seeded_model,
    tiny_kwargs,
)

B = 4
SIZE = 24  # small-input stem: 24 px -> 3 x 3 grid of layer4 cells
TINY = tiny_kwargs(small_input=True, queue_size=32, batch_size=B)


def tiny_model(**kwargs) -> DenseCL:
    return seeded_model(DenseCL, TINY, **kwargs)


def loader(n: int = 2 * B) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = [
        ((torch.randn(3, SIZE, SIZE, generator=g), torch.randn(3, SIZE, SIZE, generator=g)), 0, "")
        for _ in range(n)
    ]
    return DataLoader(data, batch_size=B, shuffle=False)


def trainer(steps: int, callbacks=()) -> pl.Trainer:
    return quiet_trainer(max_steps=steps, callbacks=list(callbacks))


def banks(model: DenseCL):
    return tuple(
        (bank.bank.clone(), int(bank.bank_ptr))
        for bank in (model.criterion.memory_bank, model.dense_bank)
    )


class Recorder(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append(
            dict(
                views=[v.clone() for v in batch[0]],
                encoder=copy.deepcopy(
                    (pl_module.backbone, pl_module.projection_head, pl_module.dense_head)
                ),
                banks_before=banks(pl_module),
            )
        )

    def on_before_backward(self, trainer, pl_module, loss):
        self.steps[-1]["loss"] = loss.detach().clone()

    def on_after_backward(self, trainer, pl_module):
        momentum = [
            pl_module.backbone_momentum,
            pl_module.projection_head_momentum,
            pl_module.dense_head_momentum,
        ]
        self.steps[-1]["momentum_grads"] = [p.grad for m in momentum for p in m.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[-1]["banks_after"] = banks(pl_module)
        self.steps[-1]["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.fixture(scope="module")
def run():
    model = tiny_model()
    recorder = Recorder()
    trainer(2, [recorder]).fit(model, train_dataloaders=loader())
    return model, recorder.steps


def hand_encode(encoder, x):
    """Independent route: the ResNet's children up to layer4, loops for the cells."""
    backbone, head, dense_head = encoder
    trunk = nn.Sequential(*list(backbone.children())[:-2])  # drop avgpool, fc
    with torch.no_grad():
        fmap = trunk(x)  # (B, C, S, S)
        cells = fmap.flatten(2).transpose(1, 2)  # (B, S², C)
        return head(fmap.mean((2, 3))), dense_head(cells), cells


def brute_force_match(q_grid, k_grid):
    b, n, _ = q_grid.shape
    index = torch.empty(b, n, dtype=torch.long)
    for i in range(b):
        for a in range(n):
            sims = [F.cosine_similarity(q_grid[i, a], k_grid[i, c], dim=0) for c in range(n)]
            index[i, a] = int(torch.stack(sims).argmax())
    return index


def hand_step0(step):
    # At step 0 the momentum encoder equals the online one, and BatchNorm batch
    # statistics do not depend on the shuffle: keys = online encoder on x1.
    x0, x1 = step["views"]
    q, q_dense, q_grid = hand_encode(step["encoder"], x0)
    k, k_dense, k_grid = hand_encode(step["encoder"], x1)
    return q, q_dense, q_grid, k, k_dense, k_grid


def test_fit_is_finite_and_logs(run):
    _, steps = run
    assert len(steps) == 2
    for step in steps:
        assert torch.isfinite(step["loss"])
        assert {"train/loss_global", "train/loss_dense", "train/dense_lambda"} <= set(
            step["metrics"]
        )
        assert all(g is None for g in step["momentum_grads"])


def test_loss_matches_hand_computation(run):
    model, steps = run
    step = steps[0]
    q, q_dense, q_grid, k, k_dense, k_grid = hand_step0(step)
    assert q_grid.shape == (B, 9, 512)
    (bank_global, _), (bank_dense, _) = step["banks_before"]
    tau = 0.2
    index = brute_force_match(q_grid, k_grid)
    matched = torch.stack([k_dense[i, index[i]] for i in range(B)])
    dense = info_nce(q_dense.flatten(0, 1), matched.flatten(0, 1), bank_dense, tau)
    global_ = info_nce(q, k, bank_global, tau)
    torch.testing.assert_close(step["loss"], 0.5 * global_ + 0.5 * dense, atol=1e-4, rtol=1e-4)
    # the cells are matched by the backbone grids, not by position or the projections
    by_position = info_nce(q_dense.flatten(0, 1), k_dense.flatten(0, 1), bank_dense, tau)
    by_projection = brute_force_match(q_dense, k_dense)
    assert not torch.equal(index, torch.arange(9).expand(B, 9))
    assert not torch.equal(index, by_projection)
    assert abs(float(0.5 * global_ + 0.5 * by_position - step["loss"])) > 1e-3


def test_correspondence_equals_brute_force_argmax():
    from lightly.models.utils import select_most_similar

    q_grid, k_grid, k_values = torch.randn(3, 9, 8), torch.randn(3, 9, 8), torch.randn(3, 9, 5)
    index = brute_force_match(q_grid, k_grid)
    expected = torch.stack([k_values[i, index[i]] for i in range(3)])
    assert torch.equal(select_most_similar(q_grid, k_grid, k_values), expected)


def test_queues_get_global_keys_and_one_pooled_dense_key_per_image(run):
    _, steps = run
    step = steps[0]
    _, _, _, k, k_dense, _ = hand_step0(step)
    (g_before, pg), (d_before, pd) = step["banks_before"]
    (g_after, pg2), (d_after, pd2) = step["banks_after"]
    assert (pg, pd, pg2, pd2) == (0, 0, B, B)  # B keys each, not B·S² dense cells
    torch.testing.assert_close(g_after[:B], F.normalize(k, dim=1), atol=1e-4, rtol=1e-4)
    pooled = F.normalize(k_dense.mean(dim=1), dim=1)
    torch.testing.assert_close(d_after[:B], pooled, atol=1e-4, rtol=1e-4)
    assert torch.equal(d_after[B:], d_before[B:]) and torch.equal(g_after[B:], g_before[B:])
    assert int(steps[1]["banks_after"][1][1]) == 2 * B


def test_keys_come_from_the_momentum_encoder():
    model = tiny_model()
    with torch.no_grad():
        for module in (model.backbone_momentum, model.dense_head_momentum):
            for p in module.parameters():
                p.add_(0.1 * torch.randn_like(p))
    model.eval()  # BatchNorm running statistics: the shuffle cannot matter
    x = torch.randn(B, 3, SIZE, SIZE)
    k, k_dense, k_grid = model.forward_momentum(x)
    encoder = (model.backbone_momentum, model.projection_head_momentum, model.dense_head_momentum)
    ek, ek_dense, ek_grid = hand_encode(encoder, x)
    torch.testing.assert_close(k, ek)
    torch.testing.assert_close(k_dense, ek_dense)
    torch.testing.assert_close(k_grid, ek_grid)
    assert not k_dense.requires_grad
    _, q_dense, q_grid = model.forward_dense(x)
    assert q_dense.requires_grad
    assert not torch.allclose(q_dense, k_dense) and not torch.allclose(q_grid, k_grid)


def test_dense_warmup_makes_lambda_zero_then_half():
    model = tiny_model(dense_warmup_steps=2)
    recorder = Recorder()
    trainer(3, [recorder]).fit(model, train_dataloaders=loader(3 * B))
    lams = [s["metrics"]["train/dense_lambda"] for s in recorder.steps]
    assert lams == [0.0, 0.0, 0.5]
    for step in recorder.steps[:2]:
        assert step["metrics"]["train/loss"] == pytest.approx(step["metrics"]["train/loss_global"])
    last = recorder.steps[2]["metrics"]
    expected = 0.5 * last["train/loss_global"] + 0.5 * last["train/loss_dense"]
    assert last["train/loss"] == pytest.approx(expected, rel=1e-5)
    # the dense queue is filled during the warm-up too
    assert int(recorder.steps[1]["banks_after"][1][1]) == 2 * B


def test_backbone_exports_as_torchvision_resnet_and_queues_persist():
    from torchvision.models import resnet18

    model = tiny_model()
    reference = set(resnet18().state_dict()) - {"fc.weight", "fc.bias"}
    assert set(model.backbone.state_dict()) == reference
    state = model.state_dict()
    assert "criterion.memory_bank.bank" in state and "dense_bank.bank_ptr" in state
    x = torch.randn(2, 3, SIZE, SIZE)
    model.eval()
    q, _, q_grid = model.forward_dense(x)
    torch.testing.assert_close(q, model(x))  # backbone(x) is the pooled grid


def test_defaults_follow_densecl():
    kw = DenseCL.__init__.__kwdefaults__
    assert (kw["temperature"], kw["momentum"], kw["queue_size"], kw["dense_lambda"]) == (
        0.2,
        0.999,
        65536,
        0.5,
    )
    assert (kw["lr"], kw["weight_decay"], kw["out_dim"]) == (0.03, 1e-4, 128)


HCL_TINY = {**TINY, "backbone": "resnet18", "small_input": False, "batch_size": 8}


def test_hcl_densecl_trains_and_logs_the_hyperbolic_loss():
    torch.manual_seed(0)
    model = HCLDenseCL(**HCL_TINY, hcl_lambda=0.5, hcl_queue_size=16)
    capture = fit(model, SceneBatches(n=16, size=64), steps=2)
    assert len(capture.losses) == 2
    assert all(torch.isfinite(torch.tensor(capture.losses)))
    metrics = capture.metrics[-1]
    assert "train/loss_hyp" in metrics and "train/loss_dense" in metrics
    expected = metrics["train/loss_euc"] + 0.5 * metrics["train/loss_hyp"]
    assert capture.losses[-1] == pytest.approx(expected, rel=1e-5)


def test_hcl_lambda_zero_reproduces_densecl_exactly():
    torch.manual_seed(0)
    baseline = fit(DenseCL(**HCL_TINY), ViewsOnly(n=16, size=64), steps=2)
    torch.manual_seed(0)
    hcl = fit(
        HCLDenseCL(**HCL_TINY, hcl_lambda=0.0, hcl_queue_size=16), SceneBatches(n=16, size=64), 2
    )
    assert hcl.losses == baseline.losses
    for ours, theirs in zip(hcl.grads, baseline.grads, strict=True):
        assert all(torch.equal(ours[name], theirs[name]) for name in ours)
