"""ORL: hand-computed BYOL losses, inter-RoI selection, target branch, HCL on ORL."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity

from hcl_lightning.baselines import HCLORL, ORL
from hcl_lightning.baselines.orl import select_inter_pairs
from tests.helpers import TINY_ORL, SceneBatches, fit, seeded_model

B = 8
TINY = TINY_ORL


def tiny_model(cls=ORL, **kwargs):
    return seeded_model(cls, TINY, **kwargs)


def dict_batch(with_image_views: bool = True) -> dict:
    g = torch.Generator().manual_seed(3)
    batch = {
        "views": [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)],
        "scene": torch.randn(B, 3, 32, 32, generator=g),
        "object": torch.randn(B, 3, 32, 32, generator=g),
    }
    if with_image_views:
        batch["image_views"] = [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)]
    return batch


def test_losses_match_hand_computation_with_negative_cosine_similarity():
    model = tiny_model()
    batch = dict_batch()
    online = copy.deepcopy((model.backbone, model.projection_head))
    target = copy.deepcopy((model.backbone_momentum, model.projection_head_momentum))
    predictors = copy.deepcopy(
        {
            "global": model.predictor_global,
            "intra": model.predictor_intra,
            "inter": model.predictor_inter,
        }
    )
    losses = model.orl_losses(batch)

    def encode(encoder, x):
        return encoder[1](encoder[0](x))

    ncs = NegativeCosineSimilarity()

    def branch(pred, z0, z1, t0, t1):  # ORL: 2 - 2 cos per direction, summed
        return (2 + 2 * ncs(pred(z0), t1)) + (2 + 2 * ncs(pred(z1), t0))

    with torch.no_grad():
        g0, g1 = batch["image_views"]
        r0, r1 = batch["views"]
        objects = batch["object"]
        z = {
            k: encode(online, x)
            for k, x in (("g0", g0), ("g1", g1), ("r0", r0), ("r1", r1), ("o", objects))
        }
        t = {
            k: encode(target, x)
            for k, x in (("g0", g0), ("g1", g1), ("r0", r0), ("r1", r1), ("o", objects))
        }
        expected_global = branch(predictors["global"], z["g0"], z["g1"], t["g0"], t["g1"])
        expected_intra = branch(predictors["intra"], z["r0"], z["r1"], t["r0"], t["r1"])
        # inter: nearest other image by the (mean) target embedding of the image views
        image = F.normalize(t["g0"], dim=1) + F.normalize(t["g1"], dim=1)
        neighbour = []
        for i in range(B):
            sims = [
                F.cosine_similarity(image[i], image[j], dim=0) if j != i else -math.inf
                for j in range(B)
            ]
            neighbour.append(int(torch.tensor(sims).argmax()))
        expected_inter = branch(
            predictors["inter"], z["o"], z["o"][neighbour], t["o"], t["o"][neighbour]
        )
    torch.testing.assert_close(losses["global"], expected_global, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses["intra"], expected_intra, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses["inter"], expected_inter, atol=1e-5, rtol=1e-5)
    assert float(losses["inter_pairs"]) == B  # one RoI per image: every image's pair
    assert all(0 <= float(losses[k].detach()) <= 8 for k in ("global", "intra", "inter"))


def test_top_ten_percent_selection_on_a_constructed_example():
    # 3 images; image 0's nearest is 1, 1's is 0, 2's is 1 (cosines of these vectors)
    image = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.5, 1.0, 0.0]])
    # 4 RoIs per image, 16 candidate pairs per image: ceil(0.1 * 16) = 2 are kept
    basis = torch.eye(4)
    rois = torch.zeros(3, 4, 4)
    rois[1] = basis  # image 1: RoI s points along axis s
    rois[0, 2] = basis[3]  # (0, 2) ~ (1, 3): cos 1
    rois[0, 0] = basis[1] + 0.5 * basis[0]  # (0, 0) ~ (1, 1): cos 0.894
    rois[0, 1] = basis[0] + basis[2] + basis[3]  # at most 0.577 with any RoI of image 1
    rois[0, 3] = -basis[0]  # negative everywhere
    rois[2] = torch.tensor(
        [[0.0, 0.0, 1.0, 0.1], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]]
    )
    first, second, score = select_inter_pairs(image, rois, top_fraction=0.1)
    # image 0 -> image 1 (RoIs 4..7): (2, 7) then (0, 5)
    assert first[:2].tolist() == [0 * 4 + 2, 0 * 4 + 0]
    assert second[:2].tolist() == [1 * 4 + 3, 1 * 4 + 1]
    # image 1 -> image 0: RoI 3 of image 1 best matches RoI 2 of image 0 (cos 1)
    assert (first[2].item(), second[2].item()) == (1 * 4 + 3, 0 * 4 + 2)
    # image 2 -> image 1: (2, 2) ~ (1, 1) cos 1, then (2, 0) ~ (1, 2) cos 0.995
    assert first[4:].tolist() == [2 * 4 + 2, 2 * 4 + 0]
    assert second[4:].tolist() == [1 * 4 + 1, 1 * 4 + 2]
    assert len(first) == 6
    torch.testing.assert_close(score[0], torch.tensor(1.0))
    torch.testing.assert_close(score[1], torch.tensor(1 / math.sqrt(1.25)))
    # brute force over every image's candidates
    for i, nb in enumerate((1, 0, 1)):
        cands = sorted(
            (
                (F.cosine_similarity(rois[i, r], rois[nb, s], dim=0).item(), i * 4 + r, nb * 4 + s)
                for r in range(4)
                for s in range(4)
            ),
            reverse=True,
        )[:2]
        got = list(
            zip(
                score[2 * i : 2 * i + 2].tolist(),
                first[2 * i : 2 * i + 2].tolist(),
                second[2 * i : 2 * i + 2].tolist(),
                strict=True,
            )
        )
        assert [(f, s) for _, f, s in cands] == [(f, s) for _, f, s in got]
    with pytest.raises(ValueError):
        select_inter_pairs(image[:1], rois[:1])


def test_target_branch_has_no_gradient():
    model = tiny_model()
    losses = model.orl_losses(dict_batch(with_image_views=False))  # scene-made views
    total = losses["global"] + losses["intra"] + losses["inter"]
    total.backward()
    assert all(p.grad is None for p in model.backbone_momentum.parameters())
    assert all(p.grad is None for p in model.projection_head_momentum.parameters())
    assert not any(p.requires_grad for p in model.backbone_momentum.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters())
    for head in (model.predictor_global, model.predictor_intra, model.predictor_inter):
        assert all(p.grad is not None for p in head.parameters())  # one predictor each
    assert not model.forward_momentum(torch.randn(2, 3, 32, 32)).requires_grad


def test_global_views_from_the_scene():
    model = tiny_model()
    scene = torch.randn(B, 3, 32, 32)
    g0, g1 = model.global_views(scene)
    assert g0.shape == g1.shape == scene.shape
    assert not torch.equal(g0, g1)


def test_orl_rejects_a_plain_lightly_batch():
    model = tiny_model()
    with pytest.raises(TypeError, match="mapping"):
        model.training_step(((torch.randn(2, 3, 32, 32),) * 2, None, None), 0)


def test_defaults_follow_orl():
    kw = ORL.__init__.__kwdefaults__
    assert (kw["momentum"], kw["lr"], kw["weight_decay"], kw["warmup_epochs"]) == (
        0.99,
        0.2,
        1e-4,
        4,
    )
    assert (kw["proj_hidden_dim"], kw["out_dim"], kw["inter_top_fraction"]) == (4096, 256, 0.1)
    assert kw["global_weight"] == kw["intra_weight"] == kw["inter_weight"] == 1.0


def test_hcl_orl_trains_with_target_keys_inside_the_ball():
    model = tiny_model(HCLORL, hcl_lambda=0.5, hcl_queue_size=16, hcl_curvature=0.05)
    capture = fit(model, SceneBatches(n=16), steps=2)
    assert len(capture.losses) == 2 and all(math.isfinite(v) for v in capture.losses)
    metrics = capture.metrics[-1]
    for key in ("train/loss_hyp", "train/loss_global", "train/loss_intra", "train/loss_inter"):
        assert key in metrics
    expected = metrics["train/loss_euc"] + 0.5 * metrics["train/loss_hyp"]
    assert capture.losses[-1] == pytest.approx(expected, rel=1e-5)
    # object keys: target encoder, no gradient, inside the ball of radius 1/sqrt(c)
    with torch.no_grad():
        for p in model.backbone_momentum.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    key = model.hcl_key(x)
    expected_key = model.projection_head_momentum(model.backbone_momentum(x).flatten(1))
    torch.testing.assert_close(key, expected_key)
    assert not key.requires_grad
    with torch.no_grad():
        ball = model.hcl_head(key)
    assert float(ball.norm(dim=1).max()) < 1 / math.sqrt(0.05)
    queue = model.hcl_criterion
    stored = [b for n, b in queue.named_buffers() if b.dim() == 2]
    assert stored and all(float(b.norm(dim=1).max()) < 1 / math.sqrt(0.05) for b in stored)


def test_hcl_lambda_zero_reproduces_orl_exactly():
    baseline = fit(tiny_model(), SceneBatches(n=16), steps=2)
    hcl = fit(tiny_model(HCLORL, hcl_lambda=0.0, hcl_queue_size=16), SceneBatches(n=16), steps=2)
    assert hcl.losses == baseline.losses
    for ours, theirs in zip(hcl.grads, baseline.grads, strict=True):
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[name], theirs[name]) for name in ours)
