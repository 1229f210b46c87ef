"""FusedColorJitter: one affine colour pass against per-operation references."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import ColorJitter

from hcl_lightning.data.color import LUMA, FusedColorJitter, colour_matrix
from hcl_lightning.data.transforms import WeakAugmentation

STRENGTH = (0.4, 0.4, 0.4, 0.1)
NAMES = ("brightness", "contrast", "saturation", "hue")


def mid_range_image(seed: int, size: int = 32) -> Image.Image:
    """Smooth-ish colours in [60, 196): no operation of the tests leaves [0, 255]."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(60, 196, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.BILINEAR)


def sequential_reference(pixels: np.ndarray, order, b, c, s, h) -> np.ndarray:
    """The four operations one after the other on float64 pixels (no rounding/clipping),
    each written from its definition; hue as a complex rotation of the YIQ chroma."""
    yiq = np.array(
        [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
    )
    x = pixels.astype(np.float64)
    for index in order:
        if index == 0 and b is not None:
            x = b * x
        elif index == 1 and c is not None:
            x = c * x + (1 - c) * (x @ LUMA).mean()  # grey level of the current image
        elif index == 2 and s is not None:
            x = s * x + (1 - s) * (x @ LUMA)[:, None]
        elif index == 3 and h is not None:
            y, i, q = (x @ yiq.T).T
            chroma = (i + 1j * q) * np.exp(-2j * math.pi * h)  # against the I-Q angle
            x = np.linalg.solve(yiq, np.stack([y, chroma.real, chroma.imag]))
            x = x.T
    return x


@pytest.mark.parametrize("seed", range(6))
def test_colour_matrix_equals_the_operations_applied_one_by_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0, 255, (50, 3))
    order = rng.permutation(4).tolist()
    factors = [rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4)]
    factors.append(rng.uniform(-0.1, 0.1))
    if seed % 3 == 0:
        factors[seed % 4] = None  # a zero-strength operation is skipped
    matrix, offset = colour_matrix(order, *factors, pixels.mean(axis=0))
    expected = sequential_reference(pixels, order, *factors)
    np.testing.assert_allclose(pixels @ matrix.T + offset, expected, rtol=0, atol=1e-9)


def test_output_is_the_rounded_clipped_affine_map_with_torchvisions_random_numbers() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), np.uint8))
    jitter = FusedColorJitter(*STRENGTH)
    for seed in range(5):
        torch.manual_seed(seed)
        order, *factors = ColorJitter.get_params(*(getattr(jitter.ranges, n) for n in NAMES))
        expected_state = torch.get_rng_state()
        torch.manual_seed(seed)
        out = np.asarray(jitter(image), dtype=np.float64)
        assert torch.equal(torch.get_rng_state(), expected_state)  # the same draws
        pixels = np.asarray(image, dtype=np.float64).reshape(-1, 3)
        mean = np.round(pixels.mean(axis=0))  # PIL's box reduction rounds the mean
        matrix, offset = colour_matrix(order.tolist(), *factors, mean)
        expected = np.clip(np.floor(pixels @ matrix.T + offset + 0.5), 0, 255)
        assert np.abs(out.reshape(-1, 3) - expected).max() <= 1  # float32 in PIL


@pytest.mark.parametrize("seed", range(8))
def test_without_hue_it_matches_torchvision_up_to_rounding(seed: int) -> None:
    """Brightness, contrast and saturation are exactly affine: on colours that never
    leave [0, 255] the only difference is torchvision's rounding after each step."""
    image = mid_range_image(seed)
    torch.manual_seed(seed)
    ours = np.asarray(FusedColorJitter(0.3, 0.3, 0.3, 0.0)(image), dtype=np.float64)
    ours_state = torch.get_rng_state()
    torch.manual_seed(seed)
    theirs = np.asarray(ColorJitter(0.3, 0.3, 0.3, 0.0)(image), dtype=np.float64)
    assert torch.equal(torch.get_rng_state(), ours_state)
    assert np.abs(ours - theirs).max() <= 4 and np.abs(ours - theirs).mean() < 2


@pytest.mark.parametrize("hue", [-0.1, -0.03, 0.03, 0.1])
def test_hue_turns_like_torchvision_and_keeps_the_luma(hue: float) -> None:
    """Moderately saturated colours (no channel is clipped): the HSV hue turns the way
    torchvision's does, by roughly as much, and the luma stays (to rounding)."""
    colours = [(180, 100, 100), (100, 170, 100), (100, 100, 190), (180, 150, 90), (140, 100, 170)]
    image = Image.fromarray(np.array([colours], dtype=np.uint8))
    jitter = FusedColorJitter(hue=(hue, hue))
    ours = np.asarray(jitter(image), dtype=np.float64)[0]
    theirs = ColorJitter(hue=(hue, hue))(image)
    for before, after, reference in zip(colours, ours, np.asarray(theirs)[0], strict=True):
        turn = _hue(after) - _hue(before)
        expected = _hue(reference) - _hue(before)
        turn, expected = (math.remainder(t, 1.0) for t in (turn, expected))
        assert np.sign(turn) == np.sign(expected) == np.sign(hue)
        assert 0.4 * abs(hue) < abs(turn) < 1.6 * abs(hue)
        assert abs(LUMA @ after - LUMA @ np.asarray(before)) <= 1.0


def _hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(float(v) / 255 for v in rgb))[0]


def test_zero_strength_is_the_identity_and_bad_input_is_named() -> None:
    image = mid_range_image(0)
    assert np.array_equal(np.asarray(FusedColorJitter()(image)), np.asarray(image))
    with pytest.raises(ValueError, match="needs an RGB image, got mode 'L'"):
        FusedColorJitter(*STRENGTH)(image.convert("L"))
    with pytest.raises(ValueError, match="hue"):
        FusedColorJitter(hue=0.7)  # torchvision's own range check


def test_light_transform_with_fused_jitter_draws_the_same_random_numbers() -> None:
    image = mid_range_image(3, size=48)
    outputs, states = [], []
    for fused in (False, True):
        torch.manual_seed(0)
        outputs.append(WeakAugmentation(32, fused_color_jitter=fused)(image))
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[1])
    assert outputs[0].shape == outputs[1].shape == (3, 32, 32)
    assert not torch.equal(outputs[0], outputs[1])  # YIQ hue and one rounding
    assert (outputs[0] - outputs[1]).abs().mean() < 0.15  # ~8 grey levels / std 0.225
