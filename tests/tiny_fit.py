"""One tiny HCL fit shared by test_callbacks, test_export and test_analysis, and the
tiny-model / quiet-Trainer pieces the other test modules build their fits from.

The fit runs once per pytest session (its outputs are cached under pytest's session
base temp dir, so whichever of the three modules runs first makes it): ResNet-18
(small_input=False) at 32 px, batch 4, queues of 16, 3 steps on 16 synthetic 64-px
scenes, with a :class:`HyperbolicMonitor` (every 2 steps, λ warm-up over 4 steps) and
CSV + TensorBoard loggers; the final state is saved as ``last.ckpt``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from hcl_lightning.baselines import HCLMoCoV2
from hcl_lightning.callbacks import HyperbolicMonitor
from hcl_lightning.data import HCLDataModule, make_synthetic_scenes


def tiny_kwargs(**kwargs) -> dict:
    """Constructor arguments of a tiny baseline: ResNet-18 (standard stem), 32-wide
    projection MLP, 16-d output; ``kwargs`` add to or override them."""
    return {
        "backbone": "resnet18",
        "small_input": False,
        "proj_hidden_dim": 32,
        "out_dim": 16,
        **kwargs,
    }


def seeded_model(cls: type[pl.LightningModule], tiny: dict, **kwargs) -> pl.LightningModule:
    """``cls(**tiny, **kwargs)`` (``kwargs`` win) built right after ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    return cls(**{**tiny, **kwargs})


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or model summary;
    ``kwargs`` add to or override these settings."""
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**defaults, **kwargs})


TINY_HCL = tiny_kwargs(queue_size=16, hcl_queue_size=16, batch_size=4, hcl_lambda=0.2)
STEPS = 3
EVERY = 2
WARMUP = 4
N_IMAGES = 16


@dataclass
class TinyFit:
    root: Path
    image_dir: Path
    ann_file: Path
    checkpoint: Path
    csv_file: Path
    tb_dir: Path


def tiny_datamodule(image_dir: Path, ann_file: Path) -> HCLDataModule:
    # str, not Path: the datamodule's hyperparameters go into the checkpoint, and a Path
    # there makes resuming with ckpt_path fail under torch.load(weights_only=True).
    return HCLDataModule(
        str(image_dir), ann_file=str(ann_file), batch_size=4, object_size=32, scene_size=32
    )


def tiny_trainer(root: Path, max_steps: int, callbacks: list, loggers) -> pl.Trainer:
    return quiet_trainer(
        max_steps=max_steps,
        devices=1,
        default_root_dir=root,
        logger=loggers,
        callbacks=callbacks,
        log_every_n_steps=1,
    )


def tiny_fit(base: Path) -> TinyFit:
    """Runs the shared fit into ``base/hcl_tiny_fit`` unless it is there already."""
    root = base / "hcl_tiny_fit"
    done = root / "done.json"
    if done.is_file():
        return TinyFit(**{k: Path(v) for k, v in json.loads(done.read_text()).items()})
    pl.seed_everything(0, workers=True)
    image_dir, ann_file = make_synthetic_scenes(root / "data", n_images=N_IMAGES, image_size=64)
    model = HCLMoCoV2(**TINY_HCL)
    csv_logger = CSVLogger(root, name="csv")
    tb_logger = TensorBoardLogger(root, name="tb")
    monitor = HyperbolicMonitor(every_n_steps=EVERY, lambda_warmup_steps=WARMUP)
    trainer = tiny_trainer(root, STEPS, [monitor], [csv_logger, tb_logger])
    trainer.fit(model, datamodule=tiny_datamodule(image_dir, ann_file))
    checkpoint = root / "last.ckpt"
    trainer.save_checkpoint(checkpoint)
    fit = TinyFit(
        root=root,
        image_dir=image_dir,
        ann_file=ann_file,
        checkpoint=checkpoint,
        csv_file=Path(csv_logger.log_dir) / "metrics.csv",
        tb_dir=Path(tb_logger.log_dir),
    )
    done.write_text(json.dumps({k: str(v) for k, v in vars(fit).items()}))
    return fit
