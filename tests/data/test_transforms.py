"""WeakAugmentation against torchvision's pipeline, and the HCLTransform output contract."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from lightly.transforms.utils import IMAGENET_NORMALIZE
from PIL import Image
from torchvision.transforms import v2

from hcl_lightning.data import CropSpec, HCLTransform
from hcl_lightning.data.transforms import LightTransform, WeakAugmentation


def random_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def reference_pipeline(size, cj_prob, cj_strength, hf_prob, normalize) -> v2.Compose:
    """The documented light augmentation, composed from torchvision's v2 transforms."""
    steps = [
        v2.Resize((size, size)),
        v2.RandomHorizontalFlip(p=hf_prob),
        v2.RandomApply([v2.ColorJitter(*cj_strength)], p=cj_prob),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if normalize:
        steps.append(v2.Normalize(mean=normalize["mean"], std=normalize["std"]))
    return v2.Compose(steps)


@pytest.mark.parametrize(
    ("size", "cj_prob", "cj_strength", "hf_prob", "normalize"),
    [
        (24, 0.8, (0.4, 0.4, 0.4, 0.1), 0.5, IMAGENET_NORMALIZE),
        (17, 1.0, (0.8, 0.2, 0.6, 0.3), 1.0, None),
        (32, 0.0, (0.4, 0.4, 0.4, 0.1), 0.0, IMAGENET_NORMALIZE),
    ],
)
def test_light_transform_equals_torchvision_pipeline(
    size, cj_prob, cj_strength, hf_prob, normalize
) -> None:
    ours = WeakAugmentation(size, cj_prob, cj_strength, hf_prob, normalize)
    reference = reference_pipeline(size, cj_prob, cj_strength, hf_prob, normalize)
    images = [random_image(w, h, seed) for seed, (w, h) in enumerate([(40, 30), (9, 50), (24, 24)])]
    outputs = []
    for transform in (ours, reference):
        torch.manual_seed(0)
        outputs.append([transform(image) for _ in range(6) for image in images])
        outputs[-1].append(torch.rand(1))  # the same random numbers were drawn
    for out, expected in zip(*outputs, strict=True):
        assert out.dtype == torch.float32 and out.shape == expected.shape
        assert torch.equal(out, expected)
    assert outputs[0][0].shape == (3, size, size)


def test_light_transform_flips_and_jitters_at_the_given_rates() -> None:
    image = random_image(16, 16, 0)
    plain = WeakAugmentation(16, cj_prob=0.0, hf_prob=0.0, normalize=None)(image)
    transform = WeakAugmentation(16, cj_prob=0.5, hf_prob=0.5, normalize=None)
    torch.manual_seed(0)
    outputs = [transform(image) for _ in range(400)]
    flipped = sum(torch.equal(out, plain.flip(-1)) for out in outputs)
    unchanged = sum(torch.equal(out, plain) for out in outputs)
    assert 70 <= flipped <= 130 and 70 <= unchanged <= 130  # 100 expected each


def test_hcl_transform_contract_and_seeding() -> None:
    image = random_image(80, 60, 1)
    crop = CropSpec(
        object_box=(10, 5, 40, 45), scene_box=(0, 0, 70, 60), n_objects=1, label=0, box_index=0
    )
    transform = HCLTransform(object_size=32, scene_size=20)
    samples = []
    for _ in range(2):
        pl.seed_everything(3, verbose=False)  # torch's and numpy's (lightly's blur) state
        samples.append(transform(image, crop))
    first, again = samples
    assert set(first) == {"views", "scene", "object"} and len(first["views"]) == 2
    for view in first["views"]:
        assert view.shape == (3, 32, 32) and view.dtype == torch.float32
    assert first["object"].shape == (3, 32, 32) and first["scene"].shape == (3, 20, 20)
    for key in ("scene", "object"):
        assert torch.equal(first[key], again[key])
    assert all(torch.equal(a, b) for a, b in zip(first["views"], again["views"], strict=True))
    assert not torch.equal(first["views"][0], first["views"][1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "size must be >= 1, got 0"),
        ({"size": 8, "cj_prob": 1.5}, r"cj_prob must be in \[0, 1\], got 1.5"),
        ({"size": 8, "hf_prob": -0.1}, r"hf_prob must be in \[0, 1\], got -0.1"),
    ],
)
def test_light_transform_rejects_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        WeakAugmentation(**kwargs)


def test_light_transform_is_a_deprecated_alias_of_weak_augmentation() -> None:
    with pytest.warns(DeprecationWarning, match="WeakAugmentation"):
        transform = LightTransform(16, cj_prob=0.0, hf_prob=0.0, normalize=None)
    assert isinstance(transform, WeakAugmentation)
    image = Image.new("RGB", (20, 12), (10, 200, 30))
    expected = WeakAugmentation(16, cj_prob=0.0, hf_prob=0.0, normalize=None)(image)
    assert torch.equal(transform(image), expected)
