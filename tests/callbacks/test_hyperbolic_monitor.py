"""HyperbolicMonitor: logged ball statistics (CSV, TensorBoard scalars and histograms),
boundary warning; it only observes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hcl_lightning.baselines import HCLMoCoV2
from hcl_lightning.callbacks import HyperbolicMonitor, ball_norm_fraction
from hcl_lightning.hyperbolic.heads import PoincareProjectionHead
from tests.helpers import EVERY, STEPS, TINY_HCL, read_csv, values

P = "train/ball"
NORM_KEYS = [
    f"{P}/{who}_norm_{s}" for who in ("scene", "object") for s in ("mean", "p10", "p50", "p90")
]


def test_monitor_writes_ball_statistics_to_csv(tiny_fit):
    rows = read_csv(tiny_fit.csv_file)
    # Computed only at global steps EVERY, 2*EVERY, ...; Lightning's row index is step-1.
    logged = values(rows, f"{P}/scene_norm_mean")
    assert sorted(logged) == [s - 1 for s in range(EVERY, STEPS + 1, EVERY)]
    row = next(r for r in rows if r.get(f"{P}/scene_norm_mean"))
    stats = {k: float(row[k]) for k in NORM_KEYS}
    for who in ("scene", "object"):
        p10, p50, p90 = (stats[f"{P}/{who}_norm_{s}"] for s in ("p10", "p50", "p90"))
        assert 0 <= p10 <= p50 <= p90 < 1
        assert p10 <= stats[f"{P}/{who}_norm_mean"] <= p90
    assert float(row[f"{P}/boundary_fraction"]) == 0.0
    assert 0.0 <= float(row[f"{P}/clipped_fraction"]) <= 1.0
    assert math.isclose(
        float(row[f"{P}/norm_gap"]),
        stats[f"{P}/scene_norm_mean"] - stats[f"{P}/object_norm_mean"],
        abs_tol=1e-6,
    )
    assert f"{P}/curvature" not in row  # fixed curvature: not logged


def test_monitor_writes_pairing_statistics(tiny_fit):
    rows = read_csv(tiny_fit.csv_file)
    row = next(r for r in rows if r.get("train/pairing/loss"))
    stats = {k.split("/")[-1]: float(v) for k, v in row.items() if k.startswith("train/pairing/")}
    queue = TINY_HCL["hcl_queue_size"]
    assert stats["chance_loss"] == pytest.approx(math.log(queue + 1), rel=1e-5)
    assert stats["chance_top1"] == pytest.approx(1 / (queue + 1), rel=1e-5)
    assert 0 <= stats["closer_share"] <= 1 and 0 <= stats["top1"] <= 1
    assert stats["positive_distance"] > 0 and stats["negative_distance"] > 0
    assert -1 <= stats["distance_norm_corr"] <= 1
    assert 0 < stats["negative_norm_mean"] < 1 and stats["negative_norm_std"] >= 0
    # the synthetic data has classes: the class-level ceiling lies between 0 and chance
    assert 0 <= stats["class_ceiling_loss"] <= stats["chance_loss"]
    assert stats["chance_top1"] <= stats["class_ceiling_top1"] <= 1


def test_no_pairing_statistics_at_lambda_zero():
    """λ = 0 computes no loss and leaves the queue as initialised: nothing to read."""
    model = HCLMoCoV2(backbone="resnet18", small_input=True, hcl_queue_size=6, hcl_lambda=0.0)
    points = torch.zeros(2, model.hcl_head.output_dim)
    monitor = HyperbolicMonitor()
    assert monitor.compute_pairing_metrics(model, {"labels": None}, points, points) == {}


def test_monitor_mirrors_the_queue_classes():
    """The classes of queued keys follow the queue's pointer, wrapping around its end."""
    model = HCLMoCoV2(backbone="resnet18", small_input=True, hcl_queue_size=6, hcl_dim=8)
    queue = model.hcl_criterion.queue
    monitor = HyperbolicMonitor()
    monitor.on_train_start(None, model)
    for labels in ([1, 2, 3, 4], [5, 6, 7, 8]):
        queue.bank_ptr[0] = (queue.bank_ptr[0] + 4) % 6
        monitor._track_queue(model, {"labels": torch.tensor(labels)})
    assert monitor._queue_labels.tolist() == [7, 8, 3, 4, 5, 6]


def test_monitor_writes_to_tensorboard(tiny_fit):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_fit.tb_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert f"{P}/scene_norm_p50" in tags
    assert [e.step for e in events.Scalars(f"{P}/scene_norm_p50")] == [EVERY - 1]
    for who in ("scene", "object"):  # the whole distribution: one norm per crop of the batch
        (event,) = events.Histograms(f"{P}/{who}_norm_hist")
        assert event.step == EVERY - 1
        hist = event.histogram_value
        assert hist.num == TINY_HCL["batch_size"] and 0 <= hist.min <= hist.max < 1


class RecordingLogger:
    def __init__(self) -> None:
        self.calls: list[tuple[dict, int]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.calls.append((metrics, step))


def fake_run(points: tuple[torch.Tensor, torch.Tensor], step: int = 4, learn_curvature=False):
    """A minimal trainer / module pair: the module stores its embeddings (reuse path)."""
    head = PoincareProjectionHead(input_dim=8, learn_curvature=learn_curvature)

    def no_recompute(batch):
        raise AssertionError("stored embeddings must be reused")

    module = SimpleNamespace(hcl_head=head, hcl_embed=no_recompute, hcl_last_embeddings=points)
    logger = RecordingLogger()
    trainer = SimpleNamespace(
        global_step=step,
        is_global_zero=True,
        loggers=[logger],
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=step - 1)),
    )
    return trainer, module, logger


def on_sphere(n: int, fraction: float, c: float = 0.05) -> torch.Tensor:
    return nn.functional.normalize(torch.randn(n, 8), dim=1) * fraction / math.sqrt(c)


def test_monitor_reuses_stored_embeddings_and_warns_on_boundary():
    scene = on_sphere(8, 0.9995)  # on the boundary within the 1e-3 tolerance
    objects = on_sphere(8, 0.5)
    trainer, module, logger = fake_run((scene, objects), learn_curvature=True)
    monitor = HyperbolicMonitor(every_n_steps=2, boundary_warn=0.1)
    with pytest.warns(UserWarning, match="boundary"):
        monitor.on_train_batch_end(trainer, module, None, {"scene": None}, 0)
    ((metrics, step),) = logger.calls
    assert step == 3
    assert metrics[f"{P}/boundary_fraction"] == pytest.approx(0.5)
    assert metrics[f"{P}/scene_norm_p50"] == pytest.approx(0.9995, abs=1e-5)
    assert metrics[f"{P}/object_norm_mean"] == pytest.approx(0.5, abs=1e-5)
    assert metrics[f"{P}/curvature"] == pytest.approx(0.05, rel=1e-4)
    # the same step is not logged twice (e.g. under gradient accumulation)
    monitor.on_train_batch_end(trainer, module, None, {"scene": None}, 1)
    assert len(logger.calls) == 1


def test_monitor_skips_steps_between_intervals():
    trainer, module, logger = fake_run((on_sphere(4, 0.3), on_sphere(4, 0.2)), step=3)
    HyperbolicMonitor(every_n_steps=2).on_train_batch_end(trainer, module, None, {}, 0)
    assert logger.calls == []


def test_recomputed_embeddings_leave_batchnorm_statistics_unchanged():
    model = HCLMoCoV2(**TINY_HCL).train()
    batch = {"scene": torch.randn(4, 3, 32, 32), "object": torch.randn(4, 3, 32, 32)}
    before = {
        k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k
    }
    query, key = HyperbolicMonitor()._embeddings(model, batch)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert query.shape == key.shape == (4, 16) and not query.requires_grad
    assert (ball_norm_fraction(query, model.hcl_head.curvature) < 1).all()


def test_invalid_arguments():
    with pytest.raises(ValueError):
        HyperbolicMonitor(every_n_steps=0)
    with pytest.raises(ValueError):
        HyperbolicMonitor(boundary_tol=1.5)


def test_monitor_only_observes():
    """The λ warm-up is LambdaWarmup's: the monitor neither takes nor changes λ."""
    with pytest.raises(TypeError):
        HyperbolicMonitor(lambda_warmup_steps=4)
    model = HCLMoCoV2(**TINY_HCL)
    trainer = SimpleNamespace(global_step=0)
    HyperbolicMonitor(every_n_steps=1).on_train_batch_start(trainer, model, {}, 0)
    assert model.hcl_lambda == TINY_HCL["hcl_lambda"]
