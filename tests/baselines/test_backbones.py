import pytest
import torch
import torchvision
from torch import nn

from hcl_lightning.baselines import build_resnet


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("resnet50", 2048)])
def test_output_is_pooled_features(name, dim):
    torch.manual_seed(0)
    backbone, feat_dim = build_resnet(name)
    assert feat_dim == dim
    assert isinstance(backbone, torchvision.models.ResNet)
    assert isinstance(backbone.fc, nn.Identity)
    with torch.no_grad():
        out = backbone.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, dim)


def test_small_input_stem():
    backbone, _ = build_resnet("resnet18", small_input=True)
    assert backbone.conv1.kernel_size == (3, 3)
    assert backbone.conv1.stride == (1, 1)
    assert backbone.conv1.padding == (1, 1)
    assert isinstance(backbone.maxpool, nn.Identity)
    # the default stem keeps torchvision's 7x7/2 conv and max-pooling
    default, _ = build_resnet("resnet18")
    assert default.conv1.kernel_size == (7, 7) and default.conv1.stride == (2, 2)
    assert isinstance(default.maxpool, nn.MaxPool2d)

    # the small stem keeps spatial resolution: layer4 sees 4x4 instead of 1x1 at 32 px
    x = torch.randn(2, 3, 32, 32)
    stem_small = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
    stem_default = nn.Sequential(default.conv1, default.bn1, default.relu, default.maxpool)
    assert stem_small(x).shape[-2:] == (32, 32)
    assert stem_default(x).shape[-2:] == (8, 8)
    assert backbone(x).shape == (2, 512)


def test_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError, match="resnet18") as info:
        build_resnet("resnet19")
    message = str(info.value)
    assert "resnet19" in message
    for name in ("resnet34", "resnet50", "resnet101"):
        assert name in message


def test_random_init_is_not_pretrained():
    torch.manual_seed(0)
    a, _ = build_resnet("resnet18")
    torch.manual_seed(1)
    b, _ = build_resnet("resnet18")
    assert not torch.equal(a.conv1.weight, b.conv1.weight)


@pytest.mark.parametrize("small_input", [False, True])
def test_state_dict_keeps_torchvision_names(small_input):
    backbone, _ = build_resnet("resnet18", small_input=small_input)
    state = backbone.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.1.bn2.weight"):
        assert key in state
    assert not any(k.startswith("fc.") for k in state)

    reference = torchvision.models.resnet18()
    if small_input:
        reference.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    result = reference.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert torch.equal(reference.layer1[0].conv1.weight, backbone.layer1[0].conv1.weight)
