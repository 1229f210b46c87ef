"""Lightly-built baselines that HCL is added to."""

from hcl_lightning.baselines.backbones import build_resnet
from hcl_lightning.baselines.moco_v2 import HCLMoCoV2, MoCoV2

__all__ = ["HCLMoCoV2", "MoCoV2", "build_resnet"]
