from __future__ import annotations

import numpy as np
import pytest
import torch

from stfusion.transforms import degrade_coarse, from_reflectance, to_reflectance, valid_mask


def test_reflectance_round_trip_rounds_and_clips() -> None:
    stored = np.array([[-120, 0, 1234, 10000]], dtype=np.int16)
    reflectance = to_reflectance(stored)
    assert reflectance.dtype == np.float32
    np.testing.assert_array_equal(from_reflectance(reflectance), stored)
    assert to_reflectance(stored, clip_negative=True).min() == 0.0
    np.testing.assert_array_equal(
        from_reflectance(np.array([0.00016, -0.00016, 9.0, -9.0, np.nan])),
        np.array([2, -2, 32767, -32768, 0], dtype=np.int16),
    )


def test_degrade_coarse_keeps_block_top_left_then_bicubic() -> None:
    torch.manual_seed(0)
    image = torch.rand(2, 3, 32, 48)
    degraded = degrade_coarse(image, 16)
    assert degraded.shape == image.shape
    small = image[..., ::16, ::16]
    expected = torch.nn.functional.interpolate(small, scale_factor=16, mode="bicubic", align_corners=False)
    torch.testing.assert_close(degraded, expected)
    # a constant image stays constant; factor 1 is the identity
    constant = torch.full((1, 2, 20, 20), 0.3)
    torch.testing.assert_close(degrade_coarse(constant, 8), constant)
    assert degrade_coarse(image, 1) is image


def test_degrade_coarse_any_size_and_bad_factor() -> None:
    image = torch.rand(1, 2, 37, 50)
    assert degrade_coarse(image, 16).shape == image.shape
    # only the block top-left pixels matter
    changed = image.clone()
    changed[..., 1::16, :] += 1.0
    torch.testing.assert_close(degrade_coarse(changed, 16), degrade_coarse(image, 16))
    with pytest.raises(ValueError, match=">= 1"):
        degrade_coarse(image, 0)


def test_degrade_coarse_with_a_factor_beyond_the_image() -> None:
    """A factor at least the image's size along an axis leaves one coarse pixel there: the result is
    what a factor-sized upsampling gives (to rounding), without allocating rows of that size."""
    torch.manual_seed(1)
    image = torch.rand(1, 2, 9, 40)
    for factor in (9, 12, 16):  # one pixel along the rows, three (or fewer) along the columns
        small = image[..., ::factor, ::factor]
        full = torch.nn.functional.interpolate(
            small, scale_factor=factor, mode="bicubic", align_corners=False
        )[..., :9, :40]
        torch.testing.assert_close(degrade_coarse(image, factor), full, rtol=0, atol=1e-6)
    huge = degrade_coarse(image, 10**6)  # once a 1e12-pixel allocation: now the image's size
    torch.testing.assert_close(huge, image[..., :1, :1].expand_as(image), rtol=0, atol=1e-6)


def test_valid_mask() -> None:
    a = np.ones((2, 3, 3), np.float32)
    b = np.ones((2, 3, 3), np.float32)
    a[1, 0, 0] = np.nan
    b[0, 2, 2] = -9999
    mask = valid_mask(a, b, nodata=-9999)
    assert not mask[0, 0] and not mask[2, 2] and mask.sum() == 7
