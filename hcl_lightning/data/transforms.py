"""Augmentations of the HCL scene and object crops, built from lightly's transforms."""

from __future__ import annotations

import warnings

import torch
from lightly.transforms import MoCoV2Transform
from lightly.transforms.torchvision_v2_compatibility import torchvision_transforms as T
from lightly.transforms.utils import IMAGENET_NORMALIZE
from PIL.Image import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from hcl_lightning.data.color import FusedColorJitter
from hcl_lightning.data.crops import CropSpec

__all__ = ["HCLTransform", "LightTransform", "WeakAugmentation"]


class WeakAugmentation:
    """A weak augmentation that keeps the whole region: resize, flip, colour jitter.

    In this order: resize to ``size x size`` (PIL, bilinear), horizontal flip with
    probability ``hf_prob``, colour jitter (torchvision's ``ColorJitter``) with
    probability ``cj_prob``, conversion to a float tensor in [0, 1], normalisation.
    The output and the random numbers drawn are those of the torchvision pipeline
    ``Compose([Resize, RandomHorizontalFlip, RandomApply([ColorJitter]), ToTensor,
    Normalize])``, without its per-transform dispatch. With ``fused_color_jitter`` the
    jitter is a :class:`~hcl_lightning.data.color.FusedColorJitter` instead (the same
    random numbers, one affine colour pass, YIQ hue).

    Args:
        size: Output side in pixels (the region is resized to ``size x size``).
        cj_prob: Probability of colour jitter.
        cj_strength: Brightness, contrast, saturation and hue jitter.
        hf_prob: Probability of a horizontal flip.
        normalize: Dictionary with 'mean' and 'std', or None for no normalisation.
        fused_color_jitter: Jitter with ``FusedColorJitter`` instead of torchvision's.

    Raises:
        ValueError: If ``size`` < 1 or a probability is outside [0, 1].

    Examples:
        >>> transform = WeakAugmentation(64)
        >>> transform(image).shape  # image: a PIL image
        torch.Size([3, 64, 64])
    """

    def __init__(
        self,
        size: int,
        cj_prob: float = 0.8,
        cj_strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        hf_prob: float = 0.5,
        normalize: dict[str, list[float]] | None = IMAGENET_NORMALIZE,
        fused_color_jitter: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        for name, value in (("cj_prob", cj_prob), ("hf_prob", hf_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.size = [size, size]
        self.cj_prob = cj_prob
        self.hf_prob = hf_prob
        jitter = FusedColorJitter if fused_color_jitter else T.ColorJitter
        self.color_jitter = jitter(*cj_strength)
        self.normalize = normalize

    def __call__(self, image: Image) -> Tensor:
        """Augments one region.

        Args:
            image: RGB region.

        Returns:
            A float32 tensor of shape (3, size, size).
        """
        image = F.resize(image, self.size)
        # torch.rand(1) >= p skips, as in RandomHorizontalFlip and RandomApply.
        if torch.rand(1) < self.hf_prob:
            image = F.horizontal_flip(image)
        if torch.rand(1) < self.cj_prob:
            image = self.color_jitter(image)
        tensor = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
        if self.normalize:
            tensor = F.normalize(tensor, mean=self.normalize["mean"], std=self.normalize["std"])
        return tensor


class LightTransform(WeakAugmentation):
    """Deprecated name of :class:`WeakAugmentation` (same arguments); warns when made."""

    def __init__(self, *args, **kwargs) -> None:
        warnings.warn(
            "LightTransform is deprecated; use WeakAugmentation (the same class)",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)


class HCLTransform:
    """Crops the object and scene regions of an image and augments them.

    The regions are cropped from the decoded image first, and only the crops are
    resized and augmented. Returns:

    - ``views``: two MoCo v2 augmentations of the object region (lightly's
      :class:`~lightly.transforms.MoCoV2Transform`: random resized crop with scale
      ``(min_scale, 1)`` inside the region, colour jitter (0.4, 0.4, 0.4, 0.1) with
      p=0.8, grayscale p=0.2, Gaussian blur p=0.5, horizontal flip, normalisation).
    - ``scene``: the scene region resized to ``scene_size`` with a light augmentation
      (:class:`WeakAugmentation`: flip, colour jitter, normalisation) and no random crop,
      so the object stays in.
    - ``object``: the object region resized to ``object_size``, same light augmentation.

    Args:
        object_size: Side in pixels of ``views`` and ``object``.
        scene_size: Side in pixels of ``scene``.
        min_scale: Minimum area fraction of the random resized crop of the views.
        normalize: Dictionary with 'mean' and 'std', or None for no normalisation.
        fused_color_jitter: Colour-jitter ``scene`` and ``object`` with
            :class:`~hcl_lightning.data.color.FusedColorJitter` (faster; the views keep
            lightly's MoCo v2 augmentation).

    Examples:
        >>> transform = HCLTransform(object_size=224, scene_size=224)
        >>> out = transform(image, crop)  # crop: a CropSpec
        >>> out["views"][0].shape, out["scene"].shape
        (torch.Size([3, 224, 224]), torch.Size([3, 224, 224]))
    """

    def __init__(
        self,
        object_size: int = 224,
        scene_size: int = 224,
        min_scale: float = 0.2,
        normalize: dict[str, list[float]] | None = IMAGENET_NORMALIZE,
        fused_color_jitter: bool = False,
    ) -> None:
        self.views = MoCoV2Transform(
            input_size=object_size, min_scale=min_scale, normalize=normalize
        )
        light = {"normalize": normalize, "fused_color_jitter": fused_color_jitter}
        self.scene = WeakAugmentation(scene_size, **light)
        self.object = WeakAugmentation(object_size, **light)

    def __call__(self, image: Image, crop: CropSpec) -> dict[str, Tensor | list[Tensor]]:
        """Crops and augments one image.

        Args:
            image: Decoded RGB image.
            crop: Object and scene regions in pixels of ``image``.

        Returns:
            A dict with ``views`` (list of 2 tensors), ``scene`` and ``object``.
        """
        object_region = image.crop(crop.object_box)
        return {
            "views": self.views(object_region),
            "scene": self.scene(image.crop(crop.scene_box)),
            "object": self.object(object_region),
        }
