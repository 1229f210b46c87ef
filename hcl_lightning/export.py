"""Export the pretrained ResNet backbone to torchvision, timm and detectron2 formats.

The backbones of the baselines are torchvision ResNets with ``fc = nn.Identity()``
(:func:`hcl_lightning.baselines.backbones.build_resnet`), so their keys already follow
torchvision, and timm's ResNets use the same names (``conv1``, ``bn1``, ``layerN.i.*``,
classifier ``fc``); detectron2 names come from the mapping of MoCo's
``detection/convert-pretrain-to-detectron2.py`` (also used by solo-learn):

==========================  =====================================
torchvision                 detectron2
==========================  =====================================
``conv1.weight``            ``stem.conv1.weight``
``bn1.{weight,bias,...}``   ``stem.conv1.norm.{weight,bias,...}``
``layerN.i.convK.weight``   ``res{N+1}.i.convK.weight``
``layerN.i.bnK.*``          ``res{N+1}.i.convK.norm.*``
``layerN.i.downsample.0.*`` ``res{N+1}.i.shortcut.*``
``layerN.i.downsample.1.*`` ``res{N+1}.i.shortcut.norm.*``
==========================  =====================================

BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` keep their names
(detectron2's ``FrozenBatchNorm2d`` reads them); ``num_batches_tracked`` is dropped.

Example::

    from hcl_lightning.export import export_detectron2, export_timm, export_torchvision
    export_torchvision("last.ckpt", "r50_hcl.pth")      # resnet50().load_state_dict(...)
    export_timm("last.ckpt", "r50_hcl_timm.pth")        # timm.create_model("resnet50")...
    export_detectron2("last.ckpt", "r50_hcl.pkl")       # MODEL.WEIGHTS r50_hcl.pkl
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ENCODERS",
    "backbone_state_dict",
    "export_detectron2",
    "export_timm",
    "export_torchvision",
    "load_checkpoint_state_dict",
    "resnet_name",
    "to_detectron2_key",
]

#: Which encoder to export: the online one (MoCo's ``encoder_q``) or the momentum one.
ENCODERS = {"online": "backbone.", "momentum": "backbone_momentum."}


def load_checkpoint_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The ``state_dict`` of a Lightning checkpoint file (or a bare saved state_dict).

    Tries ``torch.load(weights_only=True)`` first; checkpoints whose hyperparameters
    hold arbitrary objects (e.g. OmegaConf containers) are then loaded with
    ``weights_only=False``, which unpickles code: only load checkpoints you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a Lightning checkpoint or a state_dict")
    return dict(obj)


def backbone_state_dict(
    model_or_checkpoint: nn.Module | Mapping[str, Tensor] | str | Path,
    encoder: str = "online",
) -> OrderedDict[str, Tensor]:
    """torchvision-named ResNet weights of a model's backbone, on the CPU.

    Args:
        model_or_checkpoint: a module with a ``backbone`` (e.g. ``HCLMoCoV2``), a bare
            ResNet, a ``state_dict`` (of such a module, or of a bare ResNet), or the
            path of a Lightning checkpoint.
        encoder: ``"online"`` (``backbone.*``, MoCo's ``encoder_q``) or ``"momentum"``
            (``backbone_momentum.*``).

    Returns:
        The backbone's weights and buffers, without prefix and without ``fc.*``.

    Raises:
        ValueError: if ``encoder`` is unknown or no backbone weights are found.
    """
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, got {encoder!r}")
    prefix = ENCODERS[encoder]
    if isinstance(model_or_checkpoint, nn.Module):
        module = model_or_checkpoint
        attribute = prefix.rstrip(".")
        if hasattr(module, attribute):
            state = getattr(module, attribute).state_dict()
        elif encoder == "online" and not hasattr(module, "backbone_momentum"):
            state = module.state_dict()  # a bare ResNet
        else:
            raise ValueError(f"{type(module).__name__} has no `{attribute}`")
        prefix = ""
    elif isinstance(model_or_checkpoint, Mapping):
        state = dict(model_or_checkpoint)
    else:
        state = load_checkpoint_state_dict(model_or_checkpoint)
    if prefix and encoder == "online" and not any(k.startswith(prefix) for k in state):
        prefix = ""  # a bare torchvision ResNet state_dict
    out = OrderedDict(
        (key[len(prefix) :], value.detach().cpu().clone())
        for key, value in state.items()
        if key.startswith(prefix)
    )
    out = OrderedDict((k, v) for k, v in out.items() if not k.startswith("fc."))
    if "conv1.weight" not in out or not any(k.startswith("layer1.") for k in out):
        raise ValueError(
            f"no torchvision ResNet weights under '{prefix}' (found e.g. {list(state)[:3]})"
        )
    if out["conv1.weight"].shape[-1] != 7:
        warnings.warn(
            "the backbone has a small-input stem (3x3 conv1, no max-pool): its conv1 does "
            "not fit a standard torchvision or detectron2 ResNet",
            stacklevel=2,
        )
    return out


def _output_file(path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path` whose parent folder exists (created if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def export_torchvision(
    model_or_checkpoint: nn.Module | Mapping[str, Tensor] | str | Path,
    path: str | Path,
    encoder: str = "online",
) -> OrderedDict[str, Tensor]:
    """Saves the backbone as a torchvision ResNet ``state_dict`` (``torch.save``).

    ``torchvision.models.resnet50().load_state_dict(torch.load(path), strict=False)``
    then reports only ``fc.weight`` and ``fc.bias`` missing.

    Returns:
        The saved ``state_dict``.
    """
    state = backbone_state_dict(model_or_checkpoint, encoder=encoder)
    torch.save(state, _output_file(path))
    return state


#: Blocks per stage of the torchvision/timm ResNets, and whether their blocks are
#: bottlenecks (``conv3``): what :func:`resnet_name` reads off a ``state_dict``.
RESNETS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


def resnet_name(state: Mapping[str, Tensor]) -> str | None:
    """The torchvision/timm model name (``"resnet50"``, ...) whose layout ``state`` has.

    Read from the number of blocks per stage and the block type (``conv3``: bottleneck);
    None for any other layout. Widths are not checked (``wide_resnet50_2`` reads as
    ``resnet50``).
    """
    blocks = tuple(
        len({key.split(".")[1] for key in state if key.startswith(f"layer{n}.")})
        for n in range(1, 5)
    )
    return RESNETS.get((blocks, "layer1.0.conv3.weight" in state))


def export_timm(
    model_or_checkpoint: nn.Module | Mapping[str, Tensor] | str | Path,
    path: str | Path,
    encoder: str = "online",
) -> OrderedDict[str, Tensor]:
    """Saves the backbone as a timm ResNet ``state_dict`` (``torch.save``).

    timm's ResNets name their weights as torchvision does, so the file is the
    torchvision export; :func:`resnet_name` of the returned ``state_dict`` is the name
    to create: ``timm.create_model("resnet50", num_classes=N).load_state_dict(
    torch.load(path), strict=False)`` reports only ``fc.weight`` and ``fc.bias`` missing.

    Returns:
        The saved ``state_dict``.
    """
    return export_torchvision(model_or_checkpoint, path, encoder=encoder)


_LAYER = re.compile(r"^layer([1-4])\.")
_BN = re.compile(r"\bbn([1-3])\b")


def to_detectron2_key(key: str) -> str:
    """detectron2 name of a torchvision ResNet key (MoCo's converter mapping)."""
    if _LAYER.match(key) is None:
        key = "stem." + key
    key = _LAYER.sub(lambda m: f"res{int(m.group(1)) + 1}.", key)
    key = _BN.sub(lambda m: f"conv{m.group(1)}.norm", key)
    key = key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    return key


def export_detectron2(
    model_or_checkpoint: nn.Module | Mapping[str, Tensor] | str | Path,
    path: str | Path,
    encoder: str = "online",
) -> dict[str, Any]:
    """Saves the backbone as a detectron2 weights ``.pkl``.

    The file holds ``{"model": {name: numpy array}, "__author__": "hcl_lightning",
    "matching_heuristics": True}``; use it with ``MODEL.WEIGHTS path.pkl`` (as MoCo's
    detection configs do: ``MODEL.RESNETS.STRIDE_IN_1X1 False``, ``MODEL.PIXEL_STD`` of
    torchvision, SyncBN in the backbone).

    Returns:
        The pickled object.
    """
    state = backbone_state_dict(model_or_checkpoint, encoder=encoder)
    model = {
        to_detectron2_key(key): value.numpy()
        for key, value in state.items()
        if not key.endswith("num_batches_tracked")
    }
    obj = {"model": model, "__author__": "hcl_lightning", "matching_heuristics": True}
    with _output_file(path).open("wb") as f:
        pickle.dump(obj, f)
    return obj
