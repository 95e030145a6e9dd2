"""Whole-scene prediction for any fusion method: overlapping tiles, batched, smoothly blended.

Any scene size works: the tile grid of :mod:`stfusion.tiling` covers every pixel, tiles are predicted in
batches and blended with ramp weights, and pixels without valid input (NaN in any input) are NaN in the
output, which :func:`stfusion.raster.write_like` writes as nodata.

MLFF-GAN's coarse degradation is applied once to the whole coarse images (not per tile), exactly as
the training data are degraded (:func:`stfusion.dataset.load_case`), so the model sees the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from stfusion.dataset import degrade_array
from stfusion.fusion import check_fusion_inputs
from stfusion.tiling import Mosaic, Tile, tile_grid

#: Batch predictor: three (N, C, h, w) arrays (coarse t1, fine t1, coarse t2) -> (N, C, h, w).
BatchPredictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TileOptions:
    """Tile size (rows, cols), overlap (rows, cols) and tiles per batch for scene prediction."""

    tile: tuple[int, int] = (1024, 768)
    overlap: tuple[int, int] = (64, 64)
    batch_size: int = 1


def _batches(tiles: Sequence[Tile], size: int) -> Iterator[Sequence[Tile]]:
    for start in range(0, len(tiles), size):
        yield tiles[start : start + size]


def predict_tiled(
    predict_batch: BatchPredictor,
    coarse_t1: np.ndarray,
    fine_t1: np.ndarray,
    coarse_t2: np.ndarray,
    *,
    options: TileOptions = TileOptions(),
) -> np.ndarray:
    """Predict a whole (C, H, W) scene tile by tile and blend the tiles.

    Inputs are float32 reflectance with NaN = invalid; NaN is replaced by 0 before ``predict_batch``
    sees a tile, and every pixel invalid in any input is NaN in the returned (C, H, W) float32 image.
    """
    check_fusion_inputs(coarse_t1, fine_t1, coarse_t2)
    bands, height, width = fine_t1.shape
    invalid = ~(np.isfinite(coarse_t1) & np.isfinite(fine_t1) & np.isfinite(coarse_t2)).all(axis=0)
    images = [np.where(invalid[None], 0.0, x).astype(np.float32) for x in (coarse_t1, fine_t1, coarse_t2)]
    tiles = tile_grid(height, width, options.tile, options.overlap)
    overlap = (
        min(options.overlap[0], tiles[0].height - 1),
        min(options.overlap[1], tiles[0].width - 1),
    )
    mosaic = Mosaic(bands, height, width, overlap)
    for batch in _batches(tiles, max(1, options.batch_size)):
        stacks = [np.stack([image[(slice(None), *t.slices)] for t in batch]) for image in images]
        predicted = predict_batch(stacks[0], stacks[1], stacks[2])
        for tile, values in zip(batch, predicted, strict=True):
            mosaic.add(tile, values)
    result = mosaic.result()
    result[:, invalid] = np.nan
    return result


def generator_batch_predictor(
    generator: nn.Module, *, device: str | torch.device = "cpu", amp: bool = False
) -> BatchPredictor:
    """Wrap a generator (eval mode, inference_mode, optional autocast on CUDA) as a BatchPredictor."""
    device = torch.device(device)
    generator = generator.to(device).eval()

    def predict_batch(coarse_t1: np.ndarray, fine_t1: np.ndarray, coarse_t2: np.ndarray) -> np.ndarray:
        tensors = [torch.from_numpy(x).to(device) for x in (coarse_t1, fine_t1, coarse_t2)]
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"),
        ):
            out = generator(coarse_t1=tensors[0], fine_t1=tensors[1], coarse_t2=tensors[2])
        return out.float().cpu().numpy()

    return predict_batch


def predict_with_generator(
    generator: nn.Module,
    coarse_t1: np.ndarray,
    fine_t1: np.ndarray,
    coarse_t2: np.ndarray,
    *,
    coarse_factor: int,
    options: TileOptions = TileOptions(),
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> np.ndarray:
    """MLFF-GAN scene prediction: degrade the coarse images (whole scene), then tiled inference.

    Args:
        generator: an MLFFGenerator (any module with the same forward keywords).
        coarse_t1, fine_t1, coarse_t2: (C, H, W) float32 reflectance, NaN = invalid.
        coarse_factor: the degradation factor the model was trained with (from its checkpoint).
    Returns:
        (C, H, W) float32 prediction of fine t2; NaN where an input is invalid.
    """
    invalid = ~(np.isfinite(coarse_t1) & np.isfinite(fine_t1) & np.isfinite(coarse_t2)).all(axis=0)
    coarse = [
        degrade_array(np.where(invalid[None], 0.0, c).astype(np.float32), coarse_factor)
        for c in (coarse_t1, coarse_t2)
    ]
    coarse = [np.where(invalid[None], np.nan, c) for c in coarse]
    predictor = generator_batch_predictor(generator, device=device, amp=amp)
    return predict_tiled(predictor, coarse[0], fine_t1, coarse[1], options=options)


def method_batch_predictor(method: Callable[..., np.ndarray], **method_options: Any) -> BatchPredictor:
    """Wrap a per-scene fusion function (baselines) as a BatchPredictor, one tile at a time."""

    def predict_batch(coarse_t1: np.ndarray, fine_t1: np.ndarray, coarse_t2: np.ndarray) -> np.ndarray:
        return np.stack(
            [
                method(c1, f1, c2, **method_options)
                for c1, f1, c2 in zip(coarse_t1, fine_t1, coarse_t2, strict=True)
            ]
        )

    return predict_batch
