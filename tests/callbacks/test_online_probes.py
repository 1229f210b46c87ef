"""OnlineProbes (linear probe + kNN on frozen backbone features) and the validation crops."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.nn import functional as F

from hcl_lightning import HCLMixin
from hcl_lightning.baselines import HCLMoCoV2, MoCoV2
from hcl_lightning.callbacks.online_probes import OnlineProbes
from hcl_lightning.data import (
    HCLDataModule,
    ImageRecord,
    LabelledCropDataset,
    ValidationOptions,
    make_synthetic_scenes,
)
from hcl_lightning.data.synthetic import prepare_synthetic_data
from hcl_lightning.train import train
from tests.helpers import (
    TINY_HCL,
    compose_config,
    quiet_trainer,
    read_csv,
    seeded_model,
    tiny_overrides,
)

SIZE = 32  # crop side
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("probe_scenes")
    image_dir, ann_file = make_synthetic_scenes(root / "train", n_images=16, image_size=64)
    val_dir, val_ann = make_synthetic_scenes(root / "val", n_images=6, image_size=64, seed=1)
    return SimpleNamespace(image_dir=image_dir, ann_file=ann_file, val_dir=val_dir, val_ann=val_ann)


def datamodule(scenes, **kwargs) -> HCLDataModule:
    args = dict(ann_file=str(scenes.ann_file), batch_size=4, object_size=SIZE, scene_size=SIZE)
    return HCLDataModule(str(scenes.image_dir), **{**args, **kwargs})


def with_val(scenes) -> HCLDataModule:
    return datamodule(scenes, validation=validation(scenes.val_dir, scenes.val_ann))


def validation(image_dir=None, ann_file=None, fraction=0.0) -> ValidationOptions:
    return ValidationOptions(
        fraction=fraction,
        image_dir=None if image_dir is None else str(image_dir),
        ann_file=None if ann_file is None else str(ann_file),
    )


def clusters(n: int, centres: torch.Tensor, generator: torch.Generator):
    labels = torch.randint(len(centres), (n,), generator=generator)
    return centres[labels] + torch.randn(n, centres.shape[1], generator=generator), labels


def test_linear_probe_and_knn_learn_a_separable_problem():
    gen = torch.Generator().manual_seed(1)
    centres = 4 * torch.randn(4, 16, generator=gen)
    probe = OnlineProbes(lr=0.05, num_classes=4, bank_size=256)
    test_x, test_y = clusters(400, centres, gen)
    probe._build(16, torch.device("cpu"))  # as initialised
    assert (probe.classifier(test_x).argmax(dim=1) == test_y).float().mean() < 0.6
    for _ in range(30):
        probe.train_step(*clusters(32, centres, gen))
    linear, knn = probe.predict(test_x)
    assert (linear == test_y).float().mean() > 0.9  # chance: 0.25
    assert (knn == test_y).float().mean() > 0.9
    assert int((probe.bank_labels >= 0).sum()) == 256  # 960 features seen, 256 kept


def test_knn_equals_a_float64_brute_force_knn_of_the_newest_features():
    gen = torch.Generator().manual_seed(2)
    k, t, size, classes = 7, 0.1, 32, 5
    probe = OnlineProbes(num_classes=classes, bank_size=size, knn_k=k, knn_t=t)
    features, labels = (
        torch.randn(50, 8, generator=gen),
        torch.randint(classes, (50,), generator=gen),
    )
    for start in range(0, 50, 10):  # the ring wraps: 50 features into 32 slots
        probe.train_step(features[start : start + 10], labels[start : start + 10])
    queries = torch.randn(40, 8, generator=gen)
    _, knn = probe.predict(queries)

    bank = F.normalize(features[-size:].double(), dim=1)  # the newest 32 are kept
    sims = F.normalize(queries.double(), dim=1) @ bank.T
    top, index = sims.topk(k, dim=1)
    scores = torch.zeros(len(queries), classes, dtype=torch.float64)
    scores.scatter_add_(1, labels[-size:][index], (top / t).exp())
    assert torch.equal(knn, scores.argmax(dim=1))
    stored = sorted(map(tuple, probe.bank.tolist()))
    assert np.allclose(stored, sorted(map(tuple, bank.float().tolist())), atol=1e-6)


def test_invalid_arguments():
    for kwargs, name in (
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"bank_size": 0}, "bank_size"),
        ({"knn_k": 0}, "knn_k"),
        ({"lr": 0.0}, "lr"),
        ({"knn_t": float("nan")}, "knn_t"),
        ({"num_classes": 0}, "num_classes"),
    ):
        with pytest.raises(ValueError, match=name):
            OnlineProbes(**kwargs)


# -- validation data ----------------------------------------------------------------------
def test_val_loader_yields_every_labelled_box_and_skips_a_bad_image(scenes, tmp_path):
    val_dir = tmp_path / "images"
    val_dir.mkdir()
    for path in scenes.val_dir.iterdir():
        (val_dir / path.name).write_bytes(path.read_bytes())
    coco = json.loads(scenes.val_ann.read_text())
    bad = coco["images"][2]["file_name"]
    (val_dir / bad).write_bytes(b"not an image")
    dm = datamodule(scenes, validation=validation(val_dir, scenes.val_ann))
    with pytest.warns(UserWarning, match="evaluation image skipped"):
        batches = list(dm.val_dataloader())
    crops = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])

    contiguous = {
        c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))
    }
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    expected = [
        (files[a["image_id"]], a["bbox"], contiguous[a["category_id"]])
        for a in coco["annotations"]
        if files[a["image_id"]] != bad
    ]
    assert crops.shape == (len(expected), 3, SIZE, SIZE)
    assert labels.tolist() == [label for _, _, label in expected]
    assert dm.val_dataset.skipped == {"corrupt": 1}
    # a crop is its box region: its mean colour, un-normalised, is the region's
    name, (x, y, w, h), _ = expected[0]
    region = np.asarray(Image.open(val_dir / name).convert("RGB"), np.float64)[y : y + h, x : x + w]
    colour = crops[0].double().mean(dim=(1, 2)).numpy() * STD + MEAN
    assert np.allclose(colour, region.mean(axis=(0, 1)) / 255, atol=0.03)


def test_crop_dataset_drops_unlabelled_and_too_small_boxes(scenes):
    boxes = [[0, 0, 20, 20], [0, 0, 4, 30], [10, 10, 40, 40], [math.nan, 0, 9, 9]]
    record = ImageRecord(scenes.val_dir / "000000.jpg", 64, 64, boxes=boxes, labels=[1, 2, -1, 3])
    empty = ImageRecord(scenes.val_dir / "000001.jpg", 64, 64, boxes=[[0, 0, 30, 30]], labels=[-1])
    dataset = LabelledCropDataset([record, empty], object_size=SIZE, min_object_size=8)
    assert len(dataset) == 1 and dataset.num_crops == 1
    assert dataset.dropped == {"unlabelled": 2, "too_small": 2}
    crops, labels = dataset[0]
    assert crops.shape == (1, 3, SIZE, SIZE) and labels.tolist() == [1]


def test_val_fraction_holds_out_a_seeded_disjoint_subset(scenes):
    def split(seed: int) -> tuple[set, set]:
        dm = datamodule(scenes, validation={"fraction": 0.25}, seed=seed)
        dm.setup("fit")
        train = {r.path for r in dm.train_dataset.records}
        val = {record.path for record, _, _ in dm.val_dataset.items}
        return train, val

    train, val = split(0)
    assert len(val) == 4 and len(train) == 12 and not train & val
    assert train | val == set(scenes.image_dir.iterdir())
    assert split(0) == (train, val)
    assert split(1) != (train, val)


def test_invalid_validation_arguments(scenes, tmp_path):
    with pytest.raises(ValueError, match="fraction"):
        datamodule(scenes, validation=validation(fraction=1.0))
    with pytest.raises(ValueError, match="ann_file"):
        datamodule(scenes, validation=validation(scenes.val_dir))
    with pytest.raises(ValueError, match="not both"):
        datamodule(scenes, validation=validation(scenes.val_dir, scenes.val_ann, fraction=0.1))
    with pytest.raises(FileNotFoundError, match="validation.ann_file"):
        datamodule(scenes, validation=validation(scenes.val_dir, tmp_path / "missing.json"))
    coco = json.loads(scenes.val_ann.read_text())
    coco["categories"] = coco["categories"][:-1]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="classes"):
        datamodule(scenes, validation=validation(scenes.val_dir, other)).setup("fit")


class Probed(pl.LightningModule):
    """A stand-in model: a backbone and a validation step."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Flatten()

    def validation_step(self, batch, batch_idx) -> None:
        pass


def test_probes_disable_themselves_without_labels_or_validation_data(scenes, monkeypatch):
    lines: list[str] = []
    monkeypatch.setattr("hcl_lightning.callbacks.online_probes.rank_zero_info", lines.append)
    random_boxes = HCLDataModule(str(scenes.image_dir), batch_size=4, validation={"fraction": 0.25})
    random_boxes.setup("fit")
    assert random_boxes.val_dataloader() == [] and len(random_boxes.train_dataset) == 16
    no_val = datamodule(scenes)
    for dm, reason in ((random_boxes, "no class labels"), (no_val, "no validation data")):
        probe = OnlineProbes()
        probe.setup(SimpleNamespace(datamodule=dm), Probed(), "fit")
        assert not probe.enabled and reason in lines[-1]
        batch = {"object": torch.randn(4, 3, SIZE, SIZE), "labels": torch.arange(4)}
        probe.on_train_batch_end(SimpleNamespace(global_step=1), Probed(), None, batch, 0)
        assert probe.classifier is None
    probe = OnlineProbes()
    probe.setup(SimpleNamespace(datamodule=with_val(scenes)), Probed(), "fit")
    assert probe.enabled and probe._classes == 8


def test_prepare_synthetic_data_fills_in_the_validation_scenes(tmp_path):
    cfg = OmegaConf.create(
        {
            "data": {
                "synthetic": {"root": str(tmp_path / "train"), "n_images": 2, "image_size": 32},
                "val_synthetic": {
                    "root": str(tmp_path / "val"),
                    "n_images": 3,
                    "image_size": "${..synthetic.image_size}",
                    "seed": 1000,
                },
            }
        }
    )
    prepare_synthetic_data(cfg)
    assert set(cfg.data) == {"image_dir", "ann_file", "validation"}
    assert set(cfg.data.validation) == {"image_dir", "ann_file"}
    assert len(list(Path(cfg.data.validation.image_dir).iterdir())) == 3
    assert Image.open(Path(cfg.data.validation.image_dir) / "000000.jpg").size == (32, 32)


# -- in a fit -----------------------------------------------------------------------------
STEPS = 3  # epochs of 2 batches: validation after step 2, then step 3


def fit(dm: HCLDataModule, callbacks: list, root: Path, max_steps: int = STEPS, **kwargs):
    pl.seed_everything(0, workers=True)
    model = seeded_model(HCLMoCoV2, TINY_HCL)
    ckpt = kwargs.pop("ckpt", None)
    trainer = quiet_trainer(
        max_steps=max_steps,
        limit_train_batches=2,
        limit_val_batches=1,
        **kwargs,
        callbacks=callbacks,
        logger=CSVLogger(root, name="csv"),
        log_every_n_steps=1,
        default_root_dir=root,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    return model, trainer


@pytest.fixture(scope="module")
def fits(scenes, tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("probe_fits")
    probe = OnlineProbes(every_n_steps=1)
    # geoopt's TorchScript functions are optimised after their first calls in a process,
    # which changes the float rounding of the fit that comes first: off for both fits.
    with torch.jit.optimized_execution(False):
        plain, plain_trainer = fit(datamodule(scenes), [], root / "plain")
        probed, trainer = fit(with_val(scenes), [probe], root / "probed")
    checkpoint = root / "probed.ckpt"
    trainer.save_checkpoint(checkpoint)
    return SimpleNamespace(
        plain=plain,
        plain_csv=Path(plain_trainer.logger.log_dir) / "metrics.csv",
        probed=probed,
        probe=probe,
        trainer=trainer,
        checkpoint=checkpoint,
        csv=Path(trainer.logger.log_dir) / "metrics.csv",
        root=root,
    )


def losses(path: Path) -> dict[int, float]:
    return {
        int(r["step"]): float(r["train/loss_total"])
        for r in read_csv(path)
        if r["train/loss_total"]
    }


def test_probes_do_not_change_training(fits):
    """Training without validation data and without probes gives exactly the losses,
    weights, buffers and queues of training with both (the probe every step, Lightning's
    sanity check, validation after step 2)."""
    plain, probed = losses(fits.plain_csv), losses(fits.csv)
    assert sorted(plain) == list(range(STEPS)) and plain == probed
    plain, probed = fits.plain.state_dict(), fits.probed.state_dict()
    assert plain.keys() == probed.keys()  # nothing of the probe in the model
    for key, value in plain.items():
        assert torch.equal(value, probed[key]), key


def test_metrics_are_logged_per_validation_and_epoch(fits):
    rows = read_csv(fits.csv)
    for key, count in (("val/linear_top1", 1), ("val/knn_top1", 1), ("train/linear_top1", 2)):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert len(values) == count and all(0 <= v <= 1 for v in values), key


def test_checkpoint_holds_the_probe_and_resumes(fits):
    checkpoint = torch.load(fits.checkpoint, weights_only=True)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("OnlineProbes")]
    saved = fits.probe.classifier.state_dict()
    assert all(torch.equal(state["classifier"][k], v) for k, v in saved.items())

    restored = OnlineProbes(num_classes=8)
    restored.load_state_dict(state)
    restored._restore(torch.device("cpu"))
    assert all(torch.equal(restored.classifier.state_dict()[k], v) for k, v in saved.items())
    assert torch.equal(restored.bank, fits.probe.bank)
    assert restored.bank_next == fits.probe.bank_next
    exp_avg = [s["exp_avg"] for s in fits.probe.optimizer.state_dict()["state"].values()]
    assert all(
        torch.equal(a, s["exp_avg"])
        for a, s in zip(exp_avg, restored.optimizer.state_dict()["state"].values(), strict=True)
    )

    probe = OnlineProbes(every_n_steps=1)
    _, trainer = fit(
        HCLDataModule(**fits.trainer.datamodule.hparams),
        [probe],
        fits.root / "resumed",
        max_steps=STEPS + 1,  # ends epoch 2, validation
        ckpt=str(fits.checkpoint),
    )
    assert trainer.global_step == STEPS + 1
    assert probe.bank_next != fits.probe.bank_next  # trained on from the restored state
    assert "val/linear_top1" in trainer.callback_metrics


def test_validation_metrics_are_the_top1_over_the_validation_crops(fits):
    (metrics,) = fits.trainer.validate(fits.probed, datamodule=fits.trainer.datamodule)
    crops, labels = next(iter(fits.trainer.datamodule.val_dataloader()))  # limit_val_batches=1
    probe = fits.probe
    with torch.no_grad():
        features = fits.probed.eval().backbone(crops).flatten(start_dim=1).double()
        linear = copy.deepcopy(probe.classifier).double()(features).argmax(dim=1)
    filled = probe.bank_labels >= 0
    sims = F.normalize(features, dim=1) @ F.normalize(probe.bank[filled].double(), dim=1).T
    top, index = sims.topk(min(probe.knn_k, int(filled.sum())), dim=1)
    votes = torch.zeros(len(labels), 8, dtype=torch.float64)
    votes.scatter_add_(1, probe.bank_labels[filled][index], (top / probe.knn_t).exp())
    assert metrics["val/linear_top1"] == pytest.approx((linear == labels).double().mean().item())
    assert metrics["val/knn_top1"] == pytest.approx(
        (votes.argmax(1) == labels).double().mean().item()
    )


def test_hcl_train_validates_the_generated_scenes_and_prints_the_probes(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path / "cache"))
    overrides = [
        *tiny_overrides(tmp_path),
        "data.val_synthetic.n_images=4",
        "trainer.max_steps=4",  # one epoch of 16 images: validation at its end
        "callbacks.online_probes.every_n_steps=1",
        f"output_dir={tmp_path / 'run'}",
    ]
    summary = train(compose_config(overrides))
    assert 0 <= summary["val_linear_top1"] <= 1 and 0 <= summary["val_knn_top1"] <= 1
    assert "validation top-1 of frozen backbone features: linear probe" in capsys.readouterr().out
    assert (tmp_path / "cache").is_dir()  # the validation scenes: generated, not in ~


def test_hcl_modules_validate_with_the_baselines_own_step():
    """HCLMixin's validation_step lets Lightning validate any HCL module (for the probes)
    and defers to the baseline's own step when there is one."""

    class Validating(MoCoV2):
        def validation_step(self, batch, batch_idx):
            return ("baseline", batch_idx)

    class HCLValidating(HCLMixin, Validating):
        pass

    batch = (torch.zeros(2, 3, SIZE, SIZE), torch.zeros(2, dtype=torch.long))
    assert HCLValidating(**TINY_HCL).validation_step(batch, 3) == ("baseline", 3)
    assert HCLMoCoV2(**TINY_HCL).validation_step(batch, 3) is None
