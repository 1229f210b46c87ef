"""Data pipeline of HCL: box sources, scene/object crops, transforms, dataset, datamodule."""

from hcl_lightning.data.boxes import (
    BoxSource,
    CocoBoxSource,
    ImageRecord,
    JsonBoxSource,
    RandomBoxSource,
    build_box_source,
)
from hcl_lightning.data.color import FusedColorJitter
from hcl_lightning.data.crops import CropSpec, SceneObjectSampler
from hcl_lightning.data.datamodule import HCLDataModule
from hcl_lightning.data.dataset import BAD_IMAGE_REASONS, HCLDataset, decode_image
from hcl_lightning.data.eval_crops import LabelledCropDataset
from hcl_lightning.data.hygiene import DataHygieneMonitor
from hcl_lightning.data.selective_search import SelectiveSearchBoxSource
from hcl_lightning.data.synthetic import make_synthetic_scenes
from hcl_lightning.data.transforms import HCLTransform, LightTransform

__all__ = [
    "BAD_IMAGE_REASONS",
    "DataHygieneMonitor",
    "BoxSource",
    "CocoBoxSource",
    "CropSpec",
    "FusedColorJitter",
    "HCLDataModule",
    "HCLDataset",
    "HCLTransform",
    "ImageRecord",
    "JsonBoxSource",
    "LabelledCropDataset",
    "LightTransform",
    "RandomBoxSource",
    "SceneObjectSampler",
    "SelectiveSearchBoxSource",
    "build_box_source",
    "decode_image",
    "make_synthetic_scenes",
]
