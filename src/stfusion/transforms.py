"""Pixel transforms: the reflectance scale, validity masks and the coarse degradation.

This is the one place where the integer reflectance scale (x 10000) lives, and the one place where the
MLFF-GAN coarse degradation (nearest down by a factor, bicubic up) and its handling of invalid pixels
are defined (:func:`degrade_valid`), so training, validation and prediction cannot disagree about them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where the degradation runs: readers and classical methods skip it
    import torch

#: Stored integer value per reflectance unit: int16 GeoTIFFs hold reflectance x 10000.
REFLECTANCE_SCALE: float = 1e-4


def to_reflectance(
    digital: np.ndarray, *, scale: float = REFLECTANCE_SCALE, clip_negative: bool = False
) -> np.ndarray:
    """Convert stored values (e.g. int16 reflectance x 1e4) to float32 reflectance (0..1).

    Args:
        digital: any shape, integer or float stored values.
        scale: reflectance per stored unit (1e-4 for x 10000 products).
        clip_negative: set negative values to 0 first (the MLFF-GAN reference does this;
            off by default because small negatives are valid atmospheric-correction artefacts).
    """
    values = digital.astype(np.float32, copy=True)
    if clip_negative:
        np.maximum(values, 0.0, out=values)
    values *= np.float32(scale)
    return values


def from_reflectance(
    reflectance: np.ndarray, *, scale: float = REFLECTANCE_SCALE, dtype: str = "int16"
) -> np.ndarray:
    """Convert float reflectance back to stored values: rounded and clipped to ``dtype``'s range.

    Float dtypes are returned unscaled (reflectance itself). NaN becomes 0 for integer dtypes;
    callers mark those pixels as nodata separately.
    """
    if np.dtype(dtype).kind == "f":
        return reflectance.astype(dtype)
    info = np.iinfo(np.dtype(dtype))
    stored = np.rint(np.nan_to_num(reflectance, nan=0.0) / scale)
    return np.clip(stored, info.min, info.max).astype(dtype)


def degrade_coarse(coarse: torch.Tensor, factor: int) -> torch.Tensor:
    """Simulate a coarse sensor on the fine grid: nearest down by ``factor``, bicubic up.

    The MLFF-GAN step (spec section 5): keep the top-left pixel of each ``factor`` x ``factor`` block,
    then bicubic upsampling (align_corners=False, no clamping) back to the input size. Sizes that are
    not multiples of ``factor`` keep the partial last block (ceil division) and are cropped back.

    Args:
        coarse: (B, C, H, W) coarse image on the fine grid, reflectance.
        factor: coarse/fine pixel-size ratio (16 for full-resolution CIA/LGC, 8 for the 50 m sample);
            1 returns the input unchanged.
    Returns:
        (B, C, H, W) degraded image, same dtype and device.
    """
    if factor < 1:
        raise ValueError(f"coarse degradation factor must be >= 1, got {factor}")
    if factor == 1:
        return coarse
    import torch.nn.functional as F

    height, width = coarse.shape[-2:]
    small = coarse[..., ::factor, ::factor]
    # a factor at least the image's size keeps one pixel along that axis, which the bicubic taps all
    # read: upsampling it to the image's size instead of the factor gives the same constant (to
    # rounding) without allocating factor-sized rows
    size = tuple(
        n * factor if n > 1 else extent for n, extent in zip(small.shape[-2:], (height, width), strict=True)
    )
    up = F.interpolate(small, size=size, mode="bicubic", align_corners=False)
    return up[..., :height, :width].contiguous()


def degrade_array(image: np.ndarray, factor: int) -> np.ndarray:
    """:func:`degrade_coarse` for one (C, H, W) NumPy image (float32 in, float32 out)."""
    if factor == 1:
        return image
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(image))[None]
    return degrade_coarse(tensor, factor)[0].numpy()


def degrade_valid(coarse: np.ndarray, valid: np.ndarray, factor: int) -> np.ndarray:
    """Degrade a coarse image whose invalid pixels are zero-filled first; NaN where invalid.

    Zero-filling keeps NaN out of the bicubic interpolation, and training, validation and prediction all
    fill the same pixels (those invalid in any input), so a model sees the same values in each.

    Args:
        coarse: (C, H, W) float32 reflectance on the fine grid; values at invalid pixels are ignored.
        valid: (H, W) bool, True = valid in every input of the case (:func:`valid_mask`).
        factor: the degradation factor (1: no degradation, the image is only masked).
    Returns:
        (C, H, W) float32, NaN where ``valid`` is False.
    """
    filled = np.where(valid[None], coarse, np.float32(0)).astype(np.float32)
    return np.where(valid[None], degrade_array(filled, factor), np.float32(np.nan)).astype(np.float32)


def valid_mask(*images: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """Pixels valid in every image: finite in all bands and not equal to ``nodata`` in any band.

    Args:
        images: arrays (C, H, W) on one grid.
        nodata: stored nodata value compared against every band, or None.
    Returns:
        (H, W) bool, True = valid.
    """
    if not images:
        raise ValueError("valid_mask needs at least one image")
    mask = np.ones(images[0].shape[-2:], dtype=bool)
    for image in images:
        mask &= np.isfinite(image).all(axis=0)
        if nodata is not None:
            mask &= ~(image == nodata).any(axis=0)
    return mask
