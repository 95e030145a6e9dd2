"""Streaming scene prediction: windows in, rows of tiles predicted and blended, rows written out.

Peak memory depends on the tile size, the batch and the scene width (one strip of tile height), not
on the scene height: each tile's inputs are read as a window (with a halo for the coarse
degradation), and finished rows go to the output GeoTIFF as soon as no later tile touches them.
The pixels equal those of the in-memory path (:func:`stfusion.predict.predict_with_generator` /
:func:`stfusion.predict.predict_tiled`), because both run :func:`stfusion.predict.iter_blended_rows`
and the degradation of a window with a large enough halo equals the same crop of the degraded scene.

A scene can be split by rows across processes (``torchrun``): each rank writes its rows to a part
file, and rank 0 joins the parts into the output once every rank is done.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stfusion import raster
from stfusion.inputs import CaseReader, Window
from stfusion.predict import BatchPredictor, TileOptions, TileReader, degrade_inputs, iter_blended_rows
from stfusion.tiling import Tile, tile_grid, tile_rows
from stfusion.transforms import REFLECTANCE_SCALE

log = logging.getLogger(__name__)

#: Halo, in coarse pixels, read around a tile before degrading: bicubic upsampling uses 4 taps (2 on
#: each side), so 3 keeps every tap inside the window; the window edge is then never clamped.
DEGRADE_HALO: int = 3

INPUT_ROLES: tuple[str, str, str] = ("coarse_t1", "fine_t1", "coarse_t2")


def case_tile_reader(reader: CaseReader, *, coarse_factor: int = 1) -> TileReader:
    """A TileReader over a case's files: reads each tile's window and degrades the coarse images.

    With ``coarse_factor`` > 1 the window is widened by a halo aligned to the degradation grid
    (multiples of the factor from the scene origin) and clipped to the scene, so the degraded tile
    equals the same crop of the whole-scene degradation.
    """

    def read_tile(tile: Tile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if coarse_factor == 1:
            window = Window(tile.row, tile.col, tile.height, tile.width)
            c1, f1, c2 = (reader.read(role, window) for role in INPUT_ROLES)
            return c1, f1, c2
        halo = DEGRADE_HALO * coarse_factor
        top = max(0, (tile.row - halo) // coarse_factor * coarse_factor)
        left = max(0, (tile.col - halo) // coarse_factor * coarse_factor)
        bottom = min(reader.height, tile.row + tile.height + halo)
        right = min(reader.width, tile.col + tile.width + halo)
        window = Window(top, left, bottom - top, right - left)
        c1, f1, c2 = (reader.read(role, window) for role in INPUT_ROLES)
        d1, d2 = degrade_inputs(c1, f1, c2, coarse_factor)
        crop = (
            slice(None),
            slice(tile.row - top, tile.row - top + tile.height),
            slice(tile.col - left, tile.col - left + tile.width),
        )
        return d1[crop], f1[crop], d2[crop]

    return read_tile


@dataclass(frozen=True)
class RankSplit:
    """This process's share of a scene: ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1


def split_rows(height: int, width: int, options: TileOptions, world_size: int) -> list[tuple[int, int]]:
    """Row ranges [first, stop) for each rank, cut at tile-row starts so ranks do similar work.

    Ranks beyond the number of tile rows get no rows (an empty list entry is not produced: the
    result may be shorter than ``world_size``).
    """
    starts = [group[0].row for group in tile_rows(tile_grid(height, width, options.tile, options.overlap))]
    count = min(world_size, len(starts))
    cuts = [starts[round(i * len(starts) / count)] for i in range(count)] + [height]
    return [(cuts[i], cuts[i + 1]) for i in range(count) if cuts[i] < cuts[i + 1]]


def part_path(out: Path, index: int, count: int) -> Path:
    """Where part ``index`` of ``count`` of ``out`` is written (hidden, beside ``out``)."""
    return out.with_name(f".{out.name}.part{index + 1}of{count}.tif")


def predict_to_file(
    reader: CaseReader,
    predict_batch: BatchPredictor,
    out: str | os.PathLike[str],
    *,
    options: TileOptions | None = None,
    coarse_factor: int = 1,
    dtype: str = "int16",
    scale: float = REFLECTANCE_SCALE,
    overwrite: bool = False,
    cog: bool = False,
    split: RankSplit = RankSplit(),
    tags: dict[str, str] | None = None,
) -> Path | None:
    """Predict a case's fine t2 and stream it to ``out``, a GeoTIFF on fine t1's grid.

    Args:
        reader: the case (its files are read window by window).
        predict_batch: the fusion model or method on batches of tiles (see :mod:`stfusion.predict`).
        out: output GeoTIFF (int16 reflectance x 1e4 by default, or float32 reflectance).
        options: tile size, overlap and tiles per batch (TileOptions() by default).
        coarse_factor: MLFF-GAN's degradation factor (from its checkpoint); 1 for baselines.
        cog: write a Cloud Optimized GeoTIFF.
        split: with several ranks, each rank predicts its rows into a part file; the caller must
            then call :func:`join_parts` on rank 0 after all ranks have returned (a barrier).
    Returns:
        ``out`` for a single process, else this rank's part file (None if the rank has no rows).
    """
    out = Path(out)
    options = options or TileOptions()
    height, width, bands = reader.height, reader.width, reader.bands
    read_tile = case_tile_reader(reader, coarse_factor=coarse_factor)
    if split.world_size == 1:
        rows, target = None, out
        raster.check_writable(out, overwrite=overwrite)
    else:
        spans = split_rows(height, width, options, split.world_size)
        if split.rank >= len(spans):
            return None
        rows, target = spans[split.rank], part_path(out, split.rank, len(spans))
        log.info("rank %d: rows %d..%d -> %s", split.rank, rows[0], rows[1], target)
    with raster.row_writer(
        target,
        reader.reference,
        count=bands,
        dtype=dtype,
        scale=scale,
        rows=rows,
        overwrite=True if rows is not None else overwrite,
        band_names=reader.band_names,
        tags=tags,
        cog=cog and rows is None,
    ) as write:
        for first_row, block in iter_blended_rows(
            read_tile, predict_batch, bands=bands, height=height, width=width, options=options, rows=rows
        ):
            write(first_row, block)
    return target


def join_parts(
    reader: CaseReader,
    out: str | os.PathLike[str],
    *,
    options: TileOptions,
    world_size: int,
    overwrite: bool = False,
    cog: bool = False,
) -> Path:
    """Join the part files of a split prediction into ``out`` and remove them (rank 0, after a barrier)."""
    out = Path(out)
    spans = split_rows(reader.height, reader.width, options, world_size)
    parts = [(part_path(out, i, len(spans)), rows) for i, rows in enumerate(spans)]
    missing = [str(path) for path, _ in parts if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{out}: part files missing ({', '.join(missing)}); did a rank fail?")
    raster.join_row_parts(parts, out, reader.reference, overwrite=overwrite, cog=cog)
    for path, _ in parts:
        path.unlink()
    return out
