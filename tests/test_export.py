"""Backbone export: torchvision and timm state_dicts, detectron2 .pkl (MoCo's key mapping)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import timm
import torch
import torchvision
from torchvision.models import resnet18, resnet50

from hcl_lightning.baselines import HCLMoCoV2
from hcl_lightning.baselines.backbones import build_resnet
from hcl_lightning.export import (
    backbone_state_dict,
    export_detectron2,
    export_timm,
    export_torchvision,
    load_checkpoint_state_dict,
    resnet_name,
    to_detectron2_key,
)

# torchvision -> detectron2 names checked by hand against detectron2's ResNet
# (stem.conv1 + its norm; res2..res5 blocks; shortcut + its norm).
HAND_CHECKED = {
    "conv1.weight": "stem.conv1.weight",
    "bn1.weight": "stem.conv1.norm.weight",
    "bn1.running_var": "stem.conv1.norm.running_var",
    "layer1.0.conv1.weight": "res2.0.conv1.weight",
    "layer1.0.bn1.running_mean": "res2.0.conv1.norm.running_mean",
    "layer1.0.downsample.0.weight": "res2.0.shortcut.weight",
    "layer1.0.downsample.1.bias": "res2.0.shortcut.norm.bias",
    "layer2.3.bn3.weight": "res3.3.conv3.norm.weight",
    "layer3.5.conv2.weight": "res4.5.conv2.weight",
    "layer4.2.bn3.running_var": "res5.2.conv3.norm.running_var",
    "layer4.0.downsample.1.running_mean": "res5.0.shortcut.norm.running_mean",
}


@pytest.mark.parametrize("arch", [resnet18, resnet50])
def test_detectron2_mapping_covers_every_key(arch, tmp_path):
    model = arch(weights=None)
    torch.nn.init.normal_(model.bn1.running_mean)  # non-trivial buffers
    obj = export_detectron2(model, tmp_path / "model.pkl")
    with open(tmp_path / "model.pkl", "rb") as f:
        loaded = pickle.load(f)
    assert loaded["__author__"] == "hcl_lightning" and loaded["matching_heuristics"] is True
    expected = {
        k: v
        for k, v in model.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    assert len(loaded["model"]) == len(expected) == len(obj["model"])
    for key, value in expected.items():
        new = to_detectron2_key(key)
        assert new.startswith(("stem.", "res2.", "res3.", "res4.", "res5."))
        assert not any(s in new for s in ("layer", "bn", "downsample"))
        assert isinstance(loaded["model"][new], np.ndarray)
        np.testing.assert_array_equal(loaded["model"][new], value.numpy())
    for old, new in HAND_CHECKED.items():
        if old in expected:
            assert to_detectron2_key(old) == new
            assert new in loaded["model"]


def test_torchvision_export_loads_into_resnet50(tmp_path):
    source = resnet50(weights=None)
    state = export_torchvision(source, tmp_path / "r50.pth")
    assert not any(k.startswith(("fc.", "backbone.")) for k in state)
    target = resnet50(weights=None)
    result = target.load_state_dict(torch.load(tmp_path / "r50.pth"), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    assert torch.equal(target.layer3[2].conv2.weight, source.layer3[2].conv2.weight)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_timm_export_loads_with_only_the_classifier_missing(name, tmp_path):
    source = getattr(torchvision.models, name)(weights=None)
    torch.nn.init.normal_(source.layer4[0].bn1.running_mean)  # non-trivial buffers
    state = export_timm(source, tmp_path / "backbone.pth")
    assert resnet_name(state) == name
    target = timm.create_model(name, pretrained=False, num_classes=10)
    result = target.load_state_dict(torch.load(tmp_path / "backbone.pth"), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(target.state_dict()[key], value), key
    source.eval(), target.eval()
    source.fc = target.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target(x), source(x))  # same function, not only same names


def test_resnet_name_of_other_layouts():
    assert resnet_name(torchvision.models.resnet34(weights=None).state_dict()) == "resnet34"
    assert resnet_name({"conv1.weight": torch.zeros(1)}) is None


def test_export_from_lightning_checkpoint(tiny_fit, tmp_path):
    state = load_checkpoint_state_dict(tiny_fit.checkpoint)
    tv = export_torchvision(tiny_fit.checkpoint, tmp_path / "r18.pth")
    result = resnet18(weights=None).load_state_dict(torch.load(tmp_path / "r18.pth"), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    assert torch.equal(tv["layer2.1.bn2.running_mean"], state["backbone.layer2.1.bn2.running_mean"])
    momentum = backbone_state_dict(tiny_fit.checkpoint, encoder="momentum")
    assert torch.equal(momentum["conv1.weight"], state["backbone_momentum.conv1.weight"])
    assert not torch.equal(momentum["conv1.weight"], tv["conv1.weight"])  # 3 EMA steps apart

    d2 = export_detectron2(tiny_fit.checkpoint, tmp_path / "r18.pkl")
    with open(tmp_path / "r18.pkl", "rb") as f:
        assert pickle.load(f)["model"].keys() == d2["model"].keys()
    np.testing.assert_array_equal(
        d2["model"]["res3.0.shortcut.norm.weight"],
        state["backbone.layer2.0.downsample.1.weight"].numpy(),
    )


def test_export_from_module_matches_backbone(tmp_path):
    model = HCLMoCoV2(
        backbone="resnet18", proj_hidden_dim=8, out_dim=8, queue_size=8, hcl_queue_size=8
    )
    state = backbone_state_dict(model)
    assert state.keys() == model.backbone.state_dict().keys()
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in state.items())


def test_small_input_stem_warns():
    backbone, _ = build_resnet("resnet18", small_input=True)
    with pytest.warns(UserWarning, match="small-input stem"):
        backbone_state_dict(backbone)


def test_bare_state_dict_is_accepted():
    source = resnet18(weights=None)
    state = backbone_state_dict(source.state_dict())
    assert "layer1.0.conv1.weight" in state and "fc.weight" not in state


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="encoder"):
        backbone_state_dict(resnet18(weights=None), encoder="target")
    with pytest.raises(ValueError, match="no torchvision ResNet"):
        backbone_state_dict({"head.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError):
        export_torchvision(tmp_path / "missing.ckpt", tmp_path / "out.pth")
