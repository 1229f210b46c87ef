"""Test helpers shared by the test modules: tiny models and a quiet Trainer, random HCL
batches and a capturing fit, the real Hydra config with tiny overrides, the example
module loaded by path, reference formulas, a tiny ImageFolder set, and the tiny HCL fit
behind the ``tiny_fit`` fixture (``conftest.py``).

The tiny fit runs once per pytest session (its outputs are cached under pytest's
session base temp dir): ResNet-18 (small_input=False) at 32 px, batch 4, queues of 16,
3 steps on 16 synthetic 64-px scenes, with a :class:`HyperbolicMonitor` (every 2 steps)
and a :class:`LambdaWarmup` (over 4 steps) and CSV + TensorBoard loggers; the final
state is saved as ``last.ckpt``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.experimental.callback import Callback as HydraCallback
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from hcl_lightning.baselines import HCLMoCoV2
from hcl_lightning.callbacks import HyperbolicMonitor, LambdaWarmup
from hcl_lightning.data import HCLDataModule, make_synthetic_scenes

REPO = Path(__file__).resolve().parents[1]


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


def run_tiny_fit(base: Path) -> TinyFit:
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
    callbacks = [HyperbolicMonitor(every_n_steps=EVERY), LambdaWarmup(warmup_steps=WARMUP)]
    trainer = tiny_trainer(root, STEPS, callbacks, [csv_logger, tb_logger])
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


# -- random HCL batches and a fit that records each step ------------------------
TINY_MOCO = tiny_kwargs(queue_size=32, batch_size=8)
TINY_ORL = tiny_kwargs(pred_hidden_dim=32, batch_size=8, warmup_epochs=0)


class SceneBatches(Dataset):
    """Deterministic random HCL samples (no image decoding)."""

    def __init__(self, n: int = 32, size: int = 32, object_in_scene: bool = False) -> None:
        generator = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 4, 3, size, size, generator=generator)
        if object_in_scene:  # the object crop is a noisy copy of its scene
            self.images[:, 3] = self.images[:, 2] + 0.1 * self.images[:, 3]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        v0, v1, scene, obj = self.images[index]
        return {"views": [v0, v1], "scene": scene, "object": obj, "index": index}


class ViewsOnly(SceneBatches):
    """The same samples as a lightly batch ``((x0, x1), label, name)``."""

    def __getitem__(self, index: int):
        sample = super().__getitem__(index)
        return sample["views"], 0, str(index)


class Capture(pl.Callback):
    """Records each step's loss and the backbone gradients before the optimiser step."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        self.metrics: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append(
            {
                n: p.grad.clone()
                for n, p in pl_module.backbone.named_parameters()
                if p.grad is not None
            }
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def fit(model: pl.LightningModule, dataset: Dataset, steps: int, batch_size: int = 8) -> Capture:
    capture = Capture()
    trainer = quiet_trainer(max_steps=steps, callbacks=[capture])
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=True)
    torch.manual_seed(123)
    trainer.fit(model, train_dataloaders=loader)
    return capture


# -- the Hydra config of hcl-train -----------------------------------------------
def tiny_overrides(root: Path) -> list[str]:
    """A 2-step CPU run on 16 generated 48-px images, batch 4, queues of 16."""
    return [
        "model.backbone=resnet18",
        "model.small_input=true",
        "model.proj_hidden_dim=32",
        "model.out_dim=16",
        "model.queue_size=16",
        "hcl.queue_size=16",
        "data.batch_size=4",
        "data.object_size=32",
        "data.scene_size=32",
        "data.synthetic.n_images=16",
        "data.synthetic.image_size=48",
        f"data.synthetic.root={root / 'synthetic'}",
        "trainer.max_steps=2",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
    ]


def compose_config(overrides: list[str]):
    with initialize_config_module(config_module="hcl_lightning.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


class RecordReturnValue(HydraCallback):
    """A Hydra callback writing each job's return value (what a sweeper optimises) to
    ``<job dir>/return_value.txt``."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        out = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
        (out / "return_value.txt").write_text(repr(job_return.return_value))


def run_cli(
    *args: str, cwd: Path, timeout: float = 120, full_error: bool = False
) -> subprocess.CompletedProcess:
    """``python -m hcl_lightning.train ARGS`` in ``cwd`` (warnings shown; ``tests``
    importable, e.g. for :class:`RecordReturnValue`; ``HYDRA_FULL_ERROR`` as asked)."""
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "HYDRA_FULL_ERROR": str(int(full_error)), "PYTHONPATH": path}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-m", "hcl_lightning.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- logs ----------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file (e.g. a CSVLogger's metrics.csv)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def values(rows: list[dict[str, str]], key: str) -> dict[int, float]:
    """``step -> value`` of the rows where ``key`` was logged."""
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key, "") != ""}


# -- examples/ and reference formulas -------------------------------------------------
def load_example(name: str) -> ModuleType:
    """The module ``examples/<name>.py``, loaded by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"hcl_examples.{name}", REPO / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # classes defined there stay picklable
    spec.loader.exec_module(module)
    return module


def ball_points(n: int, dim: int, c: float, max_fraction: float = 0.9, dtype=torch.float64):
    """``n`` random points of the ball of curvature ``c``, norms uniform in [0, max_fraction*R)."""
    directions = torch.nn.functional.normalize(torch.randn(n, dim, dtype=torch.float64), dim=1)
    radii = torch.rand(n, 1, dtype=torch.float64) * max_fraction / c**0.5
    return (directions * radii).to(dtype)


def info_nce(q, k, bank, tau):
    """Hand-written InfoNCE of queries ``q`` with positives ``k`` and negatives ``bank``."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ bank.T], dim=1) / tau
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()


COLOURS = {"blue": (30, 30, 220), "green": (30, 200, 30), "red": (220, 30, 30)}


def write_image_folder(root: Path, per_class: int = 5) -> Path:
    """``root/<colour>/<i>.png``: 32-px noisy images of one colour per class."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.asarray(colour) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root
