"""Hyperbolic InfoNCE: values against geoopt, gradients, queue, precision, errors."""

from __future__ import annotations

import geoopt
import pytest
import torch
from torch import nn

from hcl_lightning import HyperbolicInfoNCELoss, PoincareProjectionHead
from hcl_lightning.hyperbolic.queue_logsumexp import hyperbolic_negative_logsumexp
from tests.helpers import ball_points


def reference_loss(query, key, negatives, c: float, tau: float) -> torch.Tensor:
    """Cross-entropy over -d/tau built from geoopt's Möbius-addition distance."""
    ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=query.dtype))
    positive = -ball.dist(query, key).unsqueeze(1)
    negative = -ball.dist(query.unsqueeze(1), negatives.unsqueeze(0))
    logits = torch.cat([positive, negative], dim=1) / tau
    return nn.functional.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long))


@pytest.mark.parametrize("chunk", [3, 7, 1000])
def test_fused_logsumexp_and_gradient_match_autograd(chunk: int) -> None:
    c, tau = 0.05, 0.2
    ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))
    x = ball_points(6, 5, c, 0.99).requires_grad_()
    y = torch.cat([ball_points(20, 5, c, 0.99), x.detach()[:2] + 1e-6])
    lse, max_logit = hyperbolic_negative_logsumexp(x, y, c, tau, chunk_size=chunk)
    x_ref = x.detach().clone().requires_grad_()
    logits = -ball.dist(x_ref.unsqueeze(1), y.unsqueeze(0)) / tau
    expected = logits.logsumexp(dim=1)
    torch.testing.assert_close(lse, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(max_logit, logits.detach().amax(dim=1), rtol=1e-9, atol=1e-9)
    weights = torch.randn(6, dtype=torch.float64)
    (lse * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-8)


def test_queue_loss_equals_geoopt_reference_and_updates_queue() -> None:
    c, tau, size = 0.05, 0.2, 32
    criterion = HyperbolicInfoNCELoss(tau, c, queue_size=size, dim=8).double()
    bank_before = criterion.queue.bank.clone()
    query = ball_points(5, 8, c, 0.95).requires_grad_()
    key = ball_points(5, 8, c, 0.95)
    loss, top1 = criterion(query, key, return_accuracy=True)
    expected = reference_loss(query.detach(), key, bank_before, c, tau)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(criterion.queue.bank[:5], key)
    assert int(criterion.queue.bank_ptr) == 5
    assert 0.0 <= float(top1) <= 1.0
    loss.backward()
    assert torch.isfinite(query.grad).all() and query.grad.abs().sum() > 0


def test_evaluation_call_leaves_queue_untouched() -> None:
    criterion = HyperbolicInfoNCELoss(queue_size=16, dim=4)
    bank = criterion.queue.bank.clone()
    criterion(ball_points(3, 4, 0.05).float(), ball_points(3, 4, 0.05).float())
    torch.testing.assert_close(criterion.queue.bank, bank)


def test_in_batch_negatives_equal_cross_entropy_over_the_batch() -> None:
    c, tau = 1.0, 0.5
    criterion = HyperbolicInfoNCELoss(tau, c, queue_size=0, dim=3).double()
    query, key = ball_points(6, 3, c, 0.9), ball_points(6, 3, c, 0.9)
    ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))
    logits = -ball.dist(query.unsqueeze(1), key.unsqueeze(0)) / tau
    expected = nn.functional.cross_entropy(logits, torch.arange(6))
    loss, top1 = criterion(query, key, return_accuracy=True)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    assert float(top1) == float((logits.argmax(dim=1) == torch.arange(6)).float().mean())


def test_top1_counts_rows_whose_positive_beats_every_negative() -> None:
    c = 0.05
    criterion = HyperbolicInfoNCELoss(curvature=c, queue_size=8, dim=2).double()
    criterion.queue.bank.copy_(torch.tensor([[3.0, 0.0]]).repeat(8, 1))
    query = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    key = torch.tensor([[1.1, 0.0], [3.0, 0.5]], dtype=torch.float64)
    _, top1 = criterion(query, key, return_accuracy=True)
    assert float(top1) == 0.5


def test_queue_round_trips_through_state_dict() -> None:
    criterion = HyperbolicInfoNCELoss(queue_size=10, dim=4)
    for _ in range(3):
        criterion(ball_points(4, 4, 0.05).float().requires_grad_(), ball_points(4, 4, 0.05).float())
    restored = HyperbolicInfoNCELoss(queue_size=10, dim=4)
    restored.load_state_dict(criterion.state_dict())
    torch.testing.assert_close(restored.queue.bank, criterion.queue.bank)
    assert int(restored.queue.bank_ptr) == int(criterion.queue.bank_ptr) == 2


def test_queue_wraps_around_without_dropping_keys() -> None:
    criterion = HyperbolicInfoNCELoss(queue_size=10, dim=2)
    keys = [ball_points(4, 2, 0.05).float() for _ in range(3)]
    for key in keys:
        criterion(key.clone().requires_grad_(), key)
    bank = criterion.queue.bank
    # 12 keys through a 10-slot queue: slots 0,1 hold the last two, 2..9 keys 2..9.
    torch.testing.assert_close(bank[2:10], torch.cat(keys)[2:10])
    torch.testing.assert_close(bank[:2], torch.cat(keys)[10:12])


@pytest.mark.parametrize("c", [0.05, 1.0, 4.0])
def test_queue_starts_inside_the_ball(c: float) -> None:
    criterion = HyperbolicInfoNCELoss(curvature=c, queue_size=256, dim=16)
    norms = criterion.queue.bank.norm(dim=1) * c**0.5
    assert norms.max() < 0.9 and norms.min() > 0


def test_learnable_curvature_path_matches_fused_path_and_trains_c() -> None:
    head = PoincareProjectionHead(input_dim=8, curvature=0.05, learn_curvature=True)
    criterion = HyperbolicInfoNCELoss(queue_size=16, dim=8)
    criterion.queue.bank.copy_(ball_points(16, 8, 0.05).float())
    query, key = head(torch.randn(4, 8) * 3), head(torch.randn(4, 8) * 3).detach()
    state = {name: value.clone() for name, value in criterion.state_dict().items()}
    fused = criterion(query.detach().requires_grad_(), key, curvature=0.05)
    criterion.load_state_dict(state)
    learnable = criterion(query, key, curvature=head.curvature)
    torch.testing.assert_close(learnable, fused, rtol=1e-5, atol=1e-5)
    learnable.backward()
    assert head.ball.isp_c.grad is not None and head.ball.isp_c.grad != 0


def test_bf16_autocast_gives_finite_loss_close_to_float32() -> None:
    head = PoincareProjectionHead(input_dim=16)
    scenes, objects = torch.randn(8, 16) * 30, torch.randn(8, 16) * 30
    losses = []
    for enabled in (False, True):
        criterion = HyperbolicInfoNCELoss(queue_size=32, dim=16)
        criterion.queue.bank.copy_(ball_points(32, 16, 0.05).float())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            query = head(nn.functional.linear(scenes, torch.eye(16)))
            loss = criterion(query, head(objects).detach())
        loss.backward()
        losses.append(loss.detach())
    assert torch.isfinite(losses[1])
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-2, atol=2e-2)


def test_points_near_the_boundary_give_finite_loss_and_gradients() -> None:
    c = 0.05
    criterion = HyperbolicInfoNCELoss(curvature=c, queue_size=16, dim=8)
    edge = torch.nn.functional.normalize(torch.randn(16, 8), dim=1) * (1 / c**0.5 - 1e-6)
    criterion.queue.bank.copy_(edge)
    query = edge[:4].clone().requires_grad_()
    loss = criterion(query, edge[4:8].clone())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(query.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"curvature": 0.0}, "curvature"),
        ({"queue_size": -1}, "queue_size"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HyperbolicInfoNCELoss(**kwargs)


def test_mismatched_inputs_are_rejected() -> None:
    criterion = HyperbolicInfoNCELoss(queue_size=4, dim=4)
    with pytest.raises(ValueError, match="equal shapes"):
        criterion(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="dim=4"):
        criterion(torch.zeros(2, 5), torch.zeros(2, 5))


def test_loss_decreases_when_training_a_head_on_scene_object_pairs() -> None:
    """Toy HCL: 2-D 'objects' of 6 classes; a scene is the sum of 2-3 object vectors."""
    generator = torch.Generator().manual_seed(0)
    angles = torch.arange(6) * (2 * torch.pi / 6)
    prototypes = torch.stack([angles.cos(), angles.sin()], dim=1)

    def batch(n: int = 64):
        classes = torch.randint(0, 6, (n, 3), generator=generator)
        objects = prototypes[classes] + 0.05 * torch.randn(n, 3, 2, generator=generator)
        keep = torch.rand(n, 3, 1, generator=generator) < 0.7
        keep[:, 0] = True
        return (objects * keep).sum(dim=1), objects[:, 0]

    head = PoincareProjectionHead(input_dim=2, hidden_dim=32, output_dim=8, curvature=0.05)
    criterion = HyperbolicInfoNCELoss(queue_size=256, dim=8)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        scenes, objects = batch()
        loss = criterion(head(scenes), head(objects).detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[5:25]) / 20, sum(losses[-20:]) / 20
    assert last < 0.8 * first
