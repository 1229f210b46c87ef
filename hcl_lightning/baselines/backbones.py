"""ResNet backbones for the baselines.

The backbone *is* a torchvision ResNet whose classifier ``fc`` is replaced by
``nn.Identity`` (and, for small images, whose ``maxpool`` is replaced too), so its
``state_dict`` keeps torchvision's names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``)
and can be exported to torchvision or detectron2 without renaming keys.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet

#: ResNet constructors accepted by :func:`build_resnet`, by torchvision name.
RESNETS = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
    "resnet152": resnet.resnet152,
    "resnext50_32x4d": resnet.resnext50_32x4d,
    "resnext101_32x8d": resnet.resnext101_32x8d,
    "resnext101_64x4d": resnet.resnext101_64x4d,
    "wide_resnet50_2": resnet.wide_resnet50_2,
    "wide_resnet101_2": resnet.wide_resnet101_2,
}


def build_resnet(name: str = "resnet50", small_input: bool = False) -> tuple[nn.Module, int]:
    """Builds a randomly initialised torchvision ResNet that outputs pooled features.

    Args:
        name: torchvision model name, one of :data:`RESNETS` (``resnet18``,
            ``resnet50``, ...).
        small_input: use a CIFAR-style stem for 32-96 px images: ``conv1`` becomes a
            3x3 convolution with stride 1 and the max-pooling layer is removed, as in
            SimCLR's and solo-learn's CIFAR setups.

    Returns:
        ``(backbone, feat_dim)``: the ResNet with ``fc = nn.Identity()``, mapping
        ``(B, 3, H, W)`` images to ``(B, feat_dim)`` features (512 for ResNet-18/34,
        2048 for ResNet-50 and larger).

    Raises:
        ValueError: if ``name`` is not a known ResNet.

    Examples:
        >>> backbone, dim = build_resnet("resnet18", small_input=True)
        >>> backbone(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 512])
    """
    if name not in RESNETS:
        raise ValueError(f"Unknown backbone {name!r}; allowed names: {', '.join(sorted(RESNETS))}")
    model = RESNETS[name](weights=None)  # random init, never downloads weights
    feat_dim = model.fc.in_features
    model.fc = nn.Identity()
    if small_input:
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    return model, feat_dim
