"""Augmentations of the HCL scene and object crops, built from lightly's transforms."""

from __future__ import annotations

from lightly.transforms import MoCoV2Transform
from lightly.transforms.torchvision_v2_compatibility import torchvision_transforms as T
from lightly.transforms.utils import IMAGENET_NORMALIZE
from PIL.Image import Image
from torch import Tensor

from hcl_lightning.data.crops import CropSpec


def light_transform(
    size: int,
    cj_prob: float = 0.8,
    cj_strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    hf_prob: float = 0.5,
    normalize: dict[str, list[float]] | None = IMAGENET_NORMALIZE,
) -> T.Compose:
    """A light augmentation that keeps the whole region: resize, flip, colour jitter.

    Args:
        size: Output side in pixels (the region is resized to ``size x size``).
        cj_prob: Probability of colour jitter.
        cj_strength: Brightness, contrast, saturation and hue jitter.
        hf_prob: Probability of a horizontal flip.
        normalize: Dictionary with 'mean' and 'std', or None for no normalisation.

    Returns:
        A transform from a PIL image to a (3, size, size) tensor.
    """
    transform = [
        T.Resize((size, size)),
        T.RandomHorizontalFlip(p=hf_prob),
        T.RandomApply([T.ColorJitter(*cj_strength)], p=cj_prob),
        T.ToTensor(),
    ]
    if normalize:
        transform.append(T.Normalize(mean=normalize["mean"], std=normalize["std"]))
    return T.Compose(transform)


class HCLTransform:
    """Crops the object and scene regions of an image and augments them.

    The regions are cropped from the decoded image first, and only the crops are
    resized and augmented. Returns:

    - ``views``: two MoCo v2 augmentations of the object region (lightly's
      :class:`~lightly.transforms.MoCoV2Transform`: random resized crop with scale
      ``(min_scale, 1)`` inside the region, colour jitter (0.4, 0.4, 0.4, 0.1) with
      p=0.8, grayscale p=0.2, Gaussian blur p=0.5, horizontal flip, normalisation).
    - ``scene``: the scene region resized to ``scene_size`` with a light augmentation
      (flip, colour jitter, normalisation) and no random crop, so the object stays in.
    - ``object``: the object region resized to ``object_size``, same light augmentation.

    Args:
        object_size: Side in pixels of ``views`` and ``object``.
        scene_size: Side in pixels of ``scene``.
        min_scale: Minimum area fraction of the random resized crop of the views.
        normalize: Dictionary with 'mean' and 'std', or None for no normalisation.

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
    ) -> None:
        self.views = MoCoV2Transform(
            input_size=object_size, min_scale=min_scale, normalize=normalize
        )
        self.scene = light_transform(scene_size, normalize=normalize)
        self.object = light_transform(object_size, normalize=normalize)

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
