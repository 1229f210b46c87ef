"""PoincareProjectionHead: norms stay informative, guard, parameters, precision."""

from __future__ import annotations

import math

import pytest
import torch

from hcl_lightning import PoincareProjectionHead


def test_typical_head_outputs_keep_their_norm_order_inside_the_ball() -> None:
    # MoCo-v2 projection outputs have norms of about 25-37 (wider range for safety).
    head = PoincareProjectionHead(input_dim=128, curvature=0.05)
    directions = torch.nn.functional.normalize(torch.randn(64, 128), dim=1)
    input_norms = torch.linspace(5, 60, 64)
    z = head(directions * input_norms.unsqueeze(1))
    fraction_of_radius = z.norm(dim=1) * math.sqrt(0.05)
    assert (fraction_of_radius.diff() > 0).all()
    assert fraction_of_radius.max() < 0.99
    assert float(head.clipped_fraction) == 0.0
    # A hard clip at r = 2.3 (Hyperbolic ViT) flattens every norm to one value.
    flattening = PoincareProjectionHead(input_dim=128, alpha=1.0, clip_r=2.3)
    flat = flattening(directions * input_norms.unsqueeze(1)).norm(dim=1)
    assert flat.std() < 1e-5 and float(flattening.clipped_fraction) == 1.0
    assert fraction_of_radius.std() > 0.05


def test_alpha_is_initialised_at_inverse_sqrt_dim_and_capped_at_one() -> None:
    head = PoincareProjectionHead(input_dim=64)
    assert float(head.alpha.detach()) == pytest.approx(1 / 8)
    with torch.no_grad():
        head.log_alpha.fill_(2.0)
    assert float(head.alpha.detach()) == 1.0
    assert head.no_weight_decay_parameters() == [head.log_alpha]


def test_outputs_lie_on_the_geoopt_ball_and_match_expmap0() -> None:
    head = PoincareProjectionHead(input_dim=16, curvature=0.5, alpha=0.3, learn_alpha=False)
    x = torch.randn(10, 16)
    z = head(x)
    assert head.ball.check_point_on_manifold(z)
    torch.testing.assert_close(z, head.ball.expmap0(0.3 * x))


def test_outlier_guard_clips_only_outliers_and_reports_the_fraction() -> None:
    head = PoincareProjectionHead(input_dim=8, curvature=0.05, alpha=1.0)
    x = torch.randn(8, 8)
    x[:2] *= 1e6
    z = head(x)
    assert float(head.clipped_fraction) == pytest.approx(2 / 8)
    assert torch.isfinite(z).all()
    radius_fraction = z.norm(dim=1) * math.sqrt(0.05)
    assert radius_fraction.max() <= 0.995 + 1e-6
    assert head.guard_radius() == pytest.approx(math.atanh(0.995) / math.sqrt(0.05))


def test_learnable_curvature_and_alpha_receive_gradients() -> None:
    head = PoincareProjectionHead(input_dim=8, hidden_dim=16, output_dim=4, learn_curvature=True)
    head(torch.randn(6, 8)).norm(dim=1).sum().backward()
    assert head.log_alpha.grad is not None and head.ball.isp_c.grad is not None
    assert float(head.curvature) == pytest.approx(0.05, rel=1e-5)
    assert set(map(id, head.no_weight_decay_parameters())) == {
        id(head.log_alpha),
        id(head.ball.isp_c),
    }


def test_bf16_autocast_outputs_float32_points_close_to_float32() -> None:
    head = PoincareProjectionHead(input_dim=32, hidden_dim=64, output_dim=16)
    head.eval()
    x = torch.randn(4, 32) * 20
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z16 = head(x.bfloat16())
    z32 = head(x)
    assert z16.dtype == torch.float32 and torch.isfinite(z16).all()
    torch.testing.assert_close(z16, z32, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"curvature": -1.0}, "curvature"), ({"alpha": 2.0}, "alpha"), ({"clip_r": -1.0}, "clip_r")],
)
def test_invalid_arguments_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PoincareProjectionHead(input_dim=8, **kwargs)
