"""MLFF-GAN scene prediction: overlapping tiles read as windows, predicted in batches, smoothly blended.

Any scene size works: the tile grid of :mod:`stfusion.tiling` covers every pixel, each tile's inputs are
read from a :class:`~stfusion.blocks.SceneSource` as a window (with a halo for the coarse degradation),
tiles are predicted in batches and blended with ramp weights, and finished rows are yielded as soon as
no later tile touches them (:func:`iter_blended_rows`), so memory depends on the tile size and the scene
width, not its height. Pixels without valid input (NaN in any input) are NaN in the output.

The coarse degradation of MLFF-GAN (:func:`stfusion.transforms.degrade_valid`) is applied per tile on a
window widened by a halo aligned to the degradation grid, which gives exactly the same crop of the
degraded scene that training sees. :class:`MlffganPrediction` is the method's
:class:`~stfusion.blocks.Prediction` (what the registry's ``mlffgan`` entry prepares); the same code runs
for a GeoTIFF case (streaming) and for arrays in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stfusion.blocks import ArraySource, SceneSource, check_fusion_inputs, predict_scene
from stfusion.checkpoint import Checkpoint
from stfusion.tiling import Mosaic, TileOptions, Window, tile_grid, tile_rows
from stfusion.transforms import degrade_valid, valid_mask

log = logging.getLogger(__name__)

#: Batch predictor: three (N, C, h, w) arrays (coarse t1, fine t1, coarse t2) -> (N, C, h, w).
BatchPredictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


#: Window reader: a tile of the scene -> its (coarse t1, fine t1, coarse t2), each (C, h, w) float32
#: reflectance with NaN = invalid, exactly as the model must see them (coarse already degraded).
TileReader = Callable[[Window], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _batches(tiles: Sequence[Window], size: int) -> Iterator[Sequence[Window]]:
    for start in range(0, len(tiles), size):
        yield tiles[start : start + size]


def _predict_tiles(
    read_tile: TileReader, predict_batch: BatchPredictor, tiles: Sequence[Window]
) -> list[np.ndarray]:
    """Predict a batch of tiles; pixels invalid in any input are NaN in each tile's prediction."""
    inputs = [read_tile(tile) for tile in tiles]
    invalid: list[np.ndarray] = [~valid_mask(c1, f1, c2) for c1, f1, c2 in inputs]
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
    if amp and device.type != "cuda":
        log.warning("--amp has no effect on %s: bf16 autocast is used on CUDA devices only", device)
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


#: Halo, in coarse pixels, read around a tile before degrading: bicubic upsampling uses 4 taps (2 on
#: each side), so 3 keeps every tap inside the window; the window edge is then never clamped.
DEGRADE_HALO: int = 3


def source_tile_reader(source: SceneSource, *, coarse_factor: int = 1) -> TileReader:
    """A TileReader over a one-pair scene: each tile's window, coarse images degraded (NaN = invalid).

    With ``coarse_factor`` > 1 the window is widened by a halo aligned to the degradation grid
    (multiples of the factor from the scene origin) and clipped to the scene, so the degraded tile
    equals the same crop of the whole-scene degradation.
    """
    if source.n_pairs != 1:
        raise ValueError(f"MLFF-GAN takes one reference pair, got {source.n_pairs}")

    def read_tile(tile: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if coarse_factor == 1:
            block = source.read_window(tile)
            return block.pairs[0].coarse, block.pairs[0].fine, block.coarse_t2
        halo = DEGRADE_HALO * coarse_factor
        top = max(0, (tile.row - halo) // coarse_factor * coarse_factor)
        left = max(0, (tile.col - halo) // coarse_factor * coarse_factor)
        bottom = min(source.height, tile.row + tile.height + halo)
        right = min(source.width, tile.col + tile.width + halo)
        block = source.read_window(Window(top, left, bottom - top, right - left))
        valid = block.valid()
        coarse_t1 = degrade_valid(block.pairs[0].coarse, valid, coarse_factor)
        coarse_t2 = degrade_valid(block.coarse_t2, valid, coarse_factor)
        crop = (
            slice(None),
            slice(tile.row - top, tile.row - top + tile.height),
            slice(tile.col - left, tile.col - left + tile.width),
        )
        return coarse_t1[crop], block.pairs[0].fine[crop], coarse_t2[crop]

    return read_tile


@dataclass(frozen=True)
class MlffganPrediction:
    """A generator (or any BatchPredictor) as a :class:`~stfusion.blocks.Prediction` over tiles.

    Attributes:
        predict_batch: the model on batches of tiles (:func:`generator_batch_predictor`).
        coarse_factor: the degradation factor the model was trained with (from its checkpoint).
        tiles: tile size, overlap and tiles per batch.
    """

    predict_batch: BatchPredictor
    coarse_factor: int = 1
    tiles: TileOptions = TileOptions()

    def row_starts(self, height: int, width: int) -> list[int]:
        return [
            group[0].row for group in tile_rows(tile_grid(height, width, self.tiles.tile, self.tiles.overlap))
        ]

    def iter_rows(self, source: SceneSource, first: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        return iter_blended_rows(
            source_tile_reader(source, coarse_factor=self.coarse_factor),
            self.predict_batch,
            bands=source.bands,
            height=source.height,
            width=source.width,
            options=self.tiles,
            rows=(first, stop),
        )


@dataclass(frozen=True)
class MlffganModel:
    """A checkpoint's generator loaded once (on its device), ready to predict many scenes."""

    checkpoint: Checkpoint
    predict_batch: BatchPredictor

    @classmethod
    def load(
        cls,
        checkpoint: Checkpoint,
        *,
        device: str | torch.device = "cpu",
        amp: bool = False,
        compile: bool = False,
    ) -> MlffganModel:
        generator = checkpoint.build_generator()
        return cls(checkpoint, generator_batch_predictor(generator, device=device, amp=amp, compile=compile))


def per_band(predict_batch: BatchPredictor) -> BatchPredictor:
    """A one-band model applied to every band of C-band tiles (the bands become the batch)."""

    def predict(coarse_t1: np.ndarray, fine_t1: np.ndarray, coarse_t2: np.ndarray) -> np.ndarray:
        n, c, h, w = fine_t1.shape
        flat = [x.reshape(n * c, 1, h, w) for x in (coarse_t1, fine_t1, coarse_t2)]
        return predict_batch(*flat).reshape(n, c, h, w)

    return predict


def prepare(
    source: SceneSource, *, model: MlffganModel, tiles: TileOptions = TileOptions()
) -> MlffganPrediction:
    """The ``mlffgan`` method on a scene (registry entry point): checks bands, returns the Prediction.

    A one-band model (trained band by band) predicts each band of any scene on its own.
    """
    if source.n_pairs != 1:
        raise ValueError(f"MLFF-GAN takes one reference pair, got {source.n_pairs}")
    predict_batch = model.predict_batch
    if model.checkpoint.bands == 1 and source.bands > 1:
        predict_batch = per_band(predict_batch)
    else:
        model.checkpoint.check_bands(source.bands, "the scene")
    return MlffganPrediction(predict_batch, coarse_factor=model.checkpoint.coarse_factor, tiles=tiles)


def predict_tiled(
    predict_batch: BatchPredictor,
    coarse_t1: np.ndarray,
    fine_t1: np.ndarray,
    coarse_t2: np.ndarray,
    *,
    options: TileOptions = TileOptions(),
    coarse_factor: int = 1,
) -> np.ndarray:
    """Predict a whole in-memory (C, H, W) scene tile by tile and blend the tiles.

    Inputs are float32 reflectance with NaN = invalid; NaN is replaced by 0 before ``predict_batch``
    sees a tile, and every pixel invalid in any input is NaN in the returned (C, H, W) float32 image.
    ``coarse_factor`` > 1 degrades the coarse images first (as :class:`MlffganPrediction` does).
    """
    check_fusion_inputs(coarse_t1, fine_t1, coarse_t2)
    method = MlffganPrediction(predict_batch, coarse_factor=coarse_factor, tiles=options)
    return predict_scene(method, ArraySource([(coarse_t1, fine_t1)], coarse_t2))
