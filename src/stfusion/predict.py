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

from stfusion.blocks import check_fusion_inputs
from stfusion.dataset import degrade_array
from stfusion.tiling import Mosaic, Tile, tile_grid, tile_rows

#: Batch predictor: three (N, C, h, w) arrays (coarse t1, fine t1, coarse t2) -> (N, C, h, w).
BatchPredictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TileOptions:
    """Tile size (rows, cols), overlap (rows, cols) and tiles per batch for scene prediction."""

    tile: tuple[int, int] = (1024, 768)
    overlap: tuple[int, int] = (64, 64)
    batch_size: int = 1


#: Tile reader: a tile of the scene -> its (coarse t1, fine t1, coarse t2), each (C, h, w) float32
#: reflectance with NaN = invalid, exactly as the model must see them (coarse already degraded).
TileReader = Callable[[Tile], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _batches(tiles: Sequence[Tile], size: int) -> Iterator[Sequence[Tile]]:
    for start in range(0, len(tiles), size):
        yield tiles[start : start + size]


def _predict_tiles(
    read_tile: TileReader, predict_batch: BatchPredictor, tiles: Sequence[Tile]
) -> list[np.ndarray]:
    """Predict a batch of tiles; pixels invalid in any input are NaN in each tile's prediction."""
    inputs = [read_tile(tile) for tile in tiles]
    invalid: list[np.ndarray] = [
        np.asarray(~(np.isfinite(c1) & np.isfinite(f1) & np.isfinite(c2)).all(axis=0))
        for c1, f1, c2 in inputs
    ]
    stacks = [
        np.stack(
            [
                np.where(bad[None], 0.0, images[role]).astype(np.float32)
                for images, bad in zip(inputs, invalid, strict=True)
            ]
        )
        for role in range(3)
    ]
    predicted = predict_batch(stacks[0], stacks[1], stacks[2])
    outputs = []
    for values, bad in zip(predicted, invalid, strict=True):
        values = np.array(values, dtype=np.float32)
        values[:, bad] = np.nan
        outputs.append(values)
    return outputs


def iter_blended_rows(
    read_tile: TileReader,
    predict_batch: BatchPredictor,
    *,
    bands: int,
    height: int,
    width: int,
    options: TileOptions = TileOptions(),
    rows: tuple[int, int] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Predict a scene one row of tiles at a time, yielding blended rows as soon as they are final.

    Yields ``(first_row, block)`` with ``block`` (C, n, W) float32 (NaN = no valid input), top to
    bottom, covering rows [rows[0], rows[1]) (the whole scene by default). Only the tiles touching
    those rows are predicted, and each yielded row has every contribution it gets in a whole-scene
    mosaic, so splitting a scene into row ranges (e.g. across processes) gives the same pixels.
    Memory: one strip of tile height x scene width, plus a batch of tiles.
    """
    first, stop = rows if rows is not None else (0, height)
    if not 0 <= first < stop <= height:
        raise ValueError(f"row range {first}..{stop} is not inside a scene of {height} rows")
    tiles = tile_grid(height, width, options.tile, options.overlap)
    tile_height = tiles[0].height
    overlap = (min(options.overlap[0], tile_height - 1), min(options.overlap[1], tiles[0].width - 1))
    groups = [g for g in tile_rows(tiles) if g[0].row < stop and g[0].row + tile_height > first]
    mosaic = Mosaic(bands, tile_height, width, overlap, top=groups[0][0].row)
    for index, group in enumerate(groups):
        for batch in _batches(group, max(1, options.batch_size)):
            for tile, values in zip(batch, _predict_tiles(read_tile, predict_batch, batch), strict=True):
                mosaic.add(tile, values)
        final = groups[index + 1][0].row if index + 1 < len(groups) else group[0].row + tile_height
        block_top = mosaic.top
        block = mosaic.pop_rows(min(final, stop))
        keep = max(first - block_top, 0)
        if keep < block.shape[1]:
            yield block_top + keep, block[:, keep:]


def predict_tiled(
    predict_batch: BatchPredictor,
    coarse_t1: np.ndarray,
    fine_t1: np.ndarray,
    coarse_t2: np.ndarray,
    *,
    options: TileOptions = TileOptions(),
) -> np.ndarray:
    """Predict a whole in-memory (C, H, W) scene tile by tile and blend the tiles.

    Inputs are float32 reflectance with NaN = invalid; NaN is replaced by 0 before ``predict_batch``
    sees a tile, and every pixel invalid in any input is NaN in the returned (C, H, W) float32 image.
    """
    check_fusion_inputs(coarse_t1, fine_t1, coarse_t2)
    bands, height, width = fine_t1.shape

    def read_tile(tile: Tile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        window = (slice(None), *tile.slices)
        return coarse_t1[window], fine_t1[window], coarse_t2[window]

    result = np.empty((bands, height, width), dtype=np.float32)
    for row, block in iter_blended_rows(
        read_tile, predict_batch, bands=bands, height=height, width=width, options=options
    ):
        result[:, row : row + block.shape[1]] = block
    return result


def generator_batch_predictor(
    generator: nn.Module,
    *,
    device: str | torch.device = "cpu",
    amp: bool = False,
    channels_last: bool = True,
    compile: bool = False,
) -> BatchPredictor:
    """Wrap a generator as a BatchPredictor: eval mode, inference_mode, batched tiles.

    Args:
        generator: an MLFFGenerator (any module with the same forward keywords).
        device: where the model runs; tiles are copied there (pinned host memory on CUDA).
        amp: bf16 autocast, CUDA only (opt-in: it changes the numbers by ~1e-3).
        channels_last: NHWC memory layout for the convolutions: the same mathematics (differences
            ~1e-7, float rounding), measurably faster on CPU (oneDNN) and on recent GPUs. Converts
            ``generator``'s parameters in place.
        compile: ``torch.compile`` the generator (slow first batch; for long predictions).
    """
    device = torch.device(device)
    generator = generator.to(device).eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    generator = generator.to(memory_format=layout)  # type: ignore[call-overload]  # (in place)
    model: Callable[..., torch.Tensor] = torch.compile(generator) if compile else generator

    def to_device(array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True).contiguous(memory_format=layout)

    def predict_batch(coarse_t1: np.ndarray, fine_t1: np.ndarray, coarse_t2: np.ndarray) -> np.ndarray:
        tensors = [to_device(x) for x in (coarse_t1, fine_t1, coarse_t2)]
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"),
        ):
            out = model(coarse_t1=tensors[0], fine_t1=tensors[1], coarse_t2=tensors[2])
        return out.float().contiguous().cpu().numpy()

    return predict_batch


def degrade_inputs(
    coarse_t1: np.ndarray, fine_t1: np.ndarray, coarse_t2: np.ndarray, coarse_factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """The degraded coarse images (C, H, W) of a scene or window, NaN where any input is invalid.

    Invalid pixels are zero-filled before the degradation, exactly as :func:`stfusion.dataset.load_case`
    does for training data.
    """
    invalid = ~(np.isfinite(coarse_t1) & np.isfinite(fine_t1) & np.isfinite(coarse_t2)).all(axis=0)
    degraded = [
        np.where(
            invalid[None],
            np.nan,
            degrade_array(np.where(invalid[None], 0.0, c).astype(np.float32), coarse_factor),
        )
        for c in (coarse_t1, coarse_t2)
    ]
    return degraded[0], degraded[1]


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
    coarse = degrade_inputs(coarse_t1, fine_t1, coarse_t2, coarse_factor)
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
