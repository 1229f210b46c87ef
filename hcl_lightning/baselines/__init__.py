"""Lightly-built baselines that HCL is added to."""

from hcl_lightning.baselines.backbones import build_resnet
from hcl_lightning.baselines.densecl import DenseCL, HCLDenseCL
from hcl_lightning.baselines.moco_v2 import HCLMoCoV2, MoCoV2
from hcl_lightning.baselines.orl import HCLORL, ORL

__all__ = ["ORL", "DenseCL", "HCLDenseCL", "HCLMoCoV2", "HCLORL", "MoCoV2", "build_resnet"]
