"""Data pipeline of HCL: image decoding, box sources, scene/object crops, transforms,
dataset, datamodule."""

from hcl_lightning.callbacks.data_hygiene import DataHygieneMonitor
from hcl_lightning.data import boxes as _boxes
from hcl_lightning.data.box_sources import BOX_METHODS, build_box_source
from hcl_lightning.data.boxes import (
    BoxSource,
    CocoBoxSource,
    ImageRecord,
    JsonBoxSource,
    RandomBoxSource,
)
from hcl_lightning.data.color import FusedColorJitter
from hcl_lightning.data.crops import CropSpec, SceneObjectSampler
from hcl_lightning.data.datamodule import HCLDataModule
from hcl_lightning.data.dataset import HCLDataset
from hcl_lightning.data.eval_crops import LabelledCropDataset, RegionCropDataset
from hcl_lightning.data.images import BAD_IMAGE_REASONS, BadImageError, decode_image
from hcl_lightning.data.options import (
    BoxOptions,
    CropOptions,
    ImageOptions,
    LoaderOptions,
    ValidationOptions,
)
from hcl_lightning.data.selective_search import SelectiveSearchBoxSource
from hcl_lightning.data.synthetic import make_synthetic_scenes
from hcl_lightning.data.transforms import HCLTransform, LightTransform, WeakAugmentation

# The factory's former module (boxes.py imports no source above it): old imports work.
_boxes.BOX_METHODS, _boxes.build_box_source = BOX_METHODS, build_box_source

__all__ = [
    "BAD_IMAGE_REASONS",
    "BadImageError",
    "BoxOptions",
    "BoxSource",
    "CocoBoxSource",
    "CropOptions",
    "CropSpec",
    "DataHygieneMonitor",
    "FusedColorJitter",
    "HCLDataModule",
    "HCLDataset",
    "HCLTransform",
    "ImageOptions",
    "ImageRecord",
    "JsonBoxSource",
    "LabelledCropDataset",
    "LightTransform",
    "LoaderOptions",
    "RandomBoxSource",
    "RegionCropDataset",
    "SceneObjectSampler",
    "SelectiveSearchBoxSource",
    "ValidationOptions",
    "WeakAugmentation",
    "build_box_source",
    "decode_image",
    "make_synthetic_scenes",
]
