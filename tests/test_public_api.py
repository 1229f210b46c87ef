"""Every name that was public before the package was restructured (the ``__all__`` of
each module, or its public top-level names where it had none) still imports from its
old module path; old module paths are the moved modules themselves."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import pytest

import hcl_lightning

#: The public names of each module before the restructuring, by their old module path.
PUBLIC = {
    "hcl_lightning": [
        "HCLMixin",
        "HyperbolicInfoNCELoss",
        "HyperbolicKeyQueue",
        "HyperbolicMonitor",
        "NonFiniteGuard",
        "OnlineProbes",
        "PoincareProjectionHead",
        "hyperbolic_negative_logsumexp",
        "poincare_distance",
        "poincare_pairwise_distance",
    ],
    "hcl_lightning.analysis": [
        "AnnotatedImage",
        "auroc",
        "embed_crops",
        "embed_dataset",
        "load_model",
        "norms_vs_objects",
        "out_of_context_scores",
        "read_coco",
        "read_folder",
    ],
    "hcl_lightning.analysis.cli": ["COMMANDS", "KEYS", "compose_config", "main"],
    "hcl_lightning.analysis.embed": [
        "AnnotatedImage",
        "CropDataset",
        "DEFAULT_MODEL_CLASS",
        "embed_crops",
        "embed_dataset",
        "eval_transform",
        "load_model",
        "read_coco",
        "read_folder",
        "resolve_device",
    ],
    "hcl_lightning.analysis.norms": [
        "GROUP_COLUMNS",
        "NORM_COLUMNS",
        "norms_vs_objects",
        "random_scene_crops",
    ],
    "hcl_lightning.analysis.out_of_context": ["OOC_COLUMNS", "auroc", "out_of_context_scores"],
    "hcl_lightning.analysis.probes": [
        "average_precision",
        "knn_top1",
        "linear_probe_top1",
        "multilabel_map",
        "permutation_band",
    ],
    "hcl_lightning.baselines": [
        "DenseCL",
        "HCLDenseCL",
        "HCLMoCoV2",
        "HCLORL",
        "MoCoV2",
        "ORL",
        "build_resnet",
    ],
    "hcl_lightning.baselines.backbones": ["RESNETS", "build_resnet"],
    "hcl_lightning.baselines.base": [
        "COMPILE_MODES",
        "MomentumBaseline",
        "REFERENCE_BATCH_SIZE",
        "check_speed_options",
        "compile_backend",
        "lr_factor",
        "scale_lr",
    ],
    "hcl_lightning.baselines.densecl": [
        "DenseCL",
        "HCLDenseCL",
        "dense_info_nce",
        "resnet_feature_map",
    ],
    "hcl_lightning.baselines.moco_v2": ["HCLMoCoV2", "MoCoV2"],
    "hcl_lightning.baselines.orl": ["HCLORL", "ORL", "select_inter_pairs"],
    "hcl_lightning.callbacks": ["HyperbolicMonitor", "ball_norm_fraction"],
    "hcl_lightning.checkpointing": [
        "AUTO",
        "AtomicCheckpointIO",
        "EpochEndResumeFitLoop",
        "RNGStateCheckpoint",
        "resolve_ckpt_path",
        "resume_epoch_end_checkpoints_at_next_epoch",
    ],
    "hcl_lightning.conf": [],
    "hcl_lightning.config": ["ConfigError", "validate_config"],
    "hcl_lightning.data": [
        "BAD_IMAGE_REASONS",
        "BoxSource",
        "CocoBoxSource",
        "CropSpec",
        "DataHygieneMonitor",
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
    ],
    "hcl_lightning.data.boxes": [
        "BOX_METHODS",
        "BOX_STATS",
        "BoxSource",
        "CocoBoxSource",
        "DROPPED_BOX_REASONS",
        "IMAGE_EXTENSIONS",
        "ImageRecord",
        "JsonBoxSource",
        "RandomBoxSource",
        "RandomBoxes",
        "build_box_source",
        "classify_boxes",
        "list_images",
        "sanitize_boxes",
    ],
    "hcl_lightning.data.color": ["FusedColorJitter", "LUMA", "colour_matrix"],
    "hcl_lightning.data.crops": [
        "Box",
        "CropSpec",
        "SceneObjectSampler",
        "count_objects_inside",
        "to_pixels",
    ],
    "hcl_lightning.data.datamodule": ["HCLDataModule", "VAL_SPLIT_STREAM"],
    "hcl_lightning.data.dataset": [
        "BAD_IMAGE_REASONS",
        "BadImageError",
        "DEFAULT_MAX_IMAGE_PIXELS",
        "HCLDataset",
        "MAX_NAMED_OFFENDERS",
        "SCAN_SAMPLE",
        "SCAN_Z",
        "TRANSPARENT_BACKGROUND",
        "bad_image_reason",
        "decode_image",
        "describe_unreadable",
        "load_image",
        "to_rgb",
    ],
    "hcl_lightning.data.eval_crops": ["LabelledCropDataset", "collate_crops", "eval_transform"],
    "hcl_lightning.data.hygiene": ["DataHygieneMonitor"],
    "hcl_lightning.data.selective_search": [
        "DEFAULT_CACHE_NAME",
        "SELECTIVE_SEARCH_MODES",
        "SelectiveSearchBoxSource",
        "filter_proposals",
        "selective_search",
    ],
    "hcl_lightning.data.synthetic": [
        "BACKGROUNDS",
        "CATEGORY_IDS",
        "CONTEXTS",
        "Context",
        "FORMAT_VERSION",
        "MAX_OVERLAP_IOU",
        "OOC_STREAM",
        "PLACEMENT_TRIES",
        "SHAPES",
        "SYNTHETIC_NODES",
        "check_context_args",
        "make_synthetic_scenes",
        "prepare_synthetic_data",
    ],
    "hcl_lightning.data.transforms": ["HCLTransform", "LightTransform"],
    "hcl_lightning.distributed": [
        "HCLDDPStrategy",
        "is_distributed",
        "shuffle_bn",
        "shuffle_bn_status",
    ],
    "hcl_lightning.export": [
        "ENCODERS",
        "backbone_state_dict",
        "export_detectron2",
        "export_torchvision",
        "load_checkpoint_state_dict",
        "to_detectron2_key",
    ],
    "hcl_lightning.geometry": [
        "CANCELLATION_TOLERANCE",
        "arcosh1p",
        "arcosh_floor",
        "check_curvature",
        "exact_matmul",
        "poincare_distance",
        "poincare_pairwise_distance",
        "sinh_arcosh1p",
        "to_compute_dtype",
    ],
    "hcl_lightning.guards": ["COMPONENT_METRICS", "NonFiniteGuard", "NonFiniteLossError"],
    "hcl_lightning.heads": ["PoincareProjectionHead"],
    "hcl_lightning.losses": ["HyperbolicInfoNCELoss"],
    "hcl_lightning.mixin": ["HCLMixin", "HEAD_MODES"],
    "hcl_lightning.ops": ["hyperbolic_negative_logsumexp"],
    "hcl_lightning.optim": ["attach_parameters"],
    "hcl_lightning.probes": ["OnlineProbes"],
    "hcl_lightning.queues": ["HyperbolicKeyQueue", "persistent_bank"],
    "hcl_lightning.train": ["main", "train"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_old_public_names_still_import(module: str) -> None:
    imported = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(imported, name)]
    assert not missing, f"{module} lacks {missing}"


@pytest.mark.parametrize(("old", "new"), sorted(hcl_lightning.MOVED_MODULES.items()))
def test_old_module_paths_are_the_moved_modules(old: str, new: str) -> None:
    module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__name__ == module.__spec__.name == new  # the real spec, not the alias's
    assert sys.modules[old] is module


def test_objects_from_old_paths_pickle_under_their_new_path() -> None:
    from hcl_lightning.guards import NonFiniteGuard

    guard = pickle.loads(pickle.dumps(NonFiniteGuard(max_consecutive=2)))
    assert type(guard).__module__ == "hcl_lightning.callbacks.nonfinite_guard"
    assert guard.max_consecutive == 2


def test_old_paths_import_in_a_fresh_interpreter() -> None:
    """The first import of a process may be an old path (e.g. a Hydra ``_target_``)."""
    code = (
        "import hcl_lightning.data.hygiene as h, hcl_lightning.heads as m; "
        "from hcl_lightning.probes import OnlineProbes; "
        "from hcl_lightning.data.boxes import build_box_source; "
        "print(h.__name__, m.__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [
        "hcl_lightning.callbacks.data_hygiene",
        "hcl_lightning.hyperbolic.heads",
    ]
