"""HCL on a baseline hcl_lightning does not ship: lightly's SimCLR example, unchanged.

``SimCLR`` below is written exactly as in lightly's examples (a LightningModule with
``backbone``, ``projection_head``, ``NTXentLoss`` and a ``training_step`` that reads
``(x0, x1), _, _ = batch``). One line turns it into HCL::

    class HCLSimCLR(HCLMixin, SimCLR): ...

SimCLR has no momentum encoder, so the mixin computes the object keys with the online
encoder, without gradient. Run it (a few CPU steps on the embedded synthetic data)::

    python examples/custom_module.py --steps 20
"""

from __future__ import annotations

import argparse
import tempfile

import pytorch_lightning as pl
import torch
import torchvision
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from hcl_lightning import HCLMixin
from hcl_lightning.data import HCLDataModule, make_synthetic_scenes


class SimCLR(pl.LightningModule):
    """lightly's SimCLR example module (resnet18 backbone)."""

    def __init__(self) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = SimCLRProjectionHead(512, 512, 128)
        self.criterion = NTXentLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x).flatten(start_dim=1)
        return self.projection_head(x)

    def training_step(self, batch, batch_index: int) -> torch.Tensor:
        (x0, x1), _, _ = batch
        z0 = self.forward(x0)
        z1 = self.forward(x1)
        loss = self.criterion(z0, z1)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.06)


class HCLSimCLR(HCLMixin, SimCLR):
    """SimCLR + HCL's hyperbolic scene-object loss; nothing else changes."""


def main() -> None:
    """Train HCL-SimCLR for a few steps on a small synthetic scene dataset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        image_dir, ann_file = make_synthetic_scenes(root, n_images=64, image_size=64)
        datamodule = HCLDataModule(
            image_dir,
            ann_file,
            batch_size=16,
            object_size=args.image_size,
            scene_size=args.image_size,
        )
        model = HCLSimCLR(hcl_lambda=0.1, hcl_queue_size=1024)
        trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", logger=False)
        trainer.fit(model, datamodule=datamodule)
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        print(metrics)


if __name__ == "__main__":
    main()
