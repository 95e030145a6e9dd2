"""Streaming prediction of a case to a GeoTIFF: the one path every method takes to a file.

:func:`predict_case` runs any prepared method (:class:`~stfusion.blocks.Prediction`, from the registry in
:mod:`stfusion.fusion`) over a case read window by window (:class:`~stfusion.inputs.CaseReader`), and
writes each block of rows as soon as the method yields it, so peak memory depends on the method's block
(a strip of tiles for MLFF-GAN, a row block plus halo for STARFM, ESTARFM and FSDAF), not on the scene.
The pixels equal those of the same method on the same scene in memory
(:func:`stfusion.blocks.predict_scene` on an :class:`~stfusion.blocks.ArraySource`), because both run
the same blocks.

A scene can be split by rows across processes (``torchrun``): each rank writes its rows to a part file,
cut at the method's block starts, and rank 0 joins the parts into the output once every rank is done.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stfusion import raster
from stfusion.atomic import OutputError
from stfusion.blocks import Prediction
from stfusion.errors import NothingPredictedError
from stfusion.inputs import CaseReader, quality_bit
from stfusion.tiling import Window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankSplit:
    """This process's share of a scene: ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1


def split_rows(starts: list[int], height: int, world_size: int) -> list[tuple[int, int]]:
    """Row ranges [first, stop) for each rank, cut at block starts so ranks do similar work.

    Ranks beyond the number of blocks get no rows (the result may be shorter than ``world_size``).
    """
    count = min(world_size, len(starts))
    cuts = [starts[round(i * len(starts) / count)] for i in range(count)] + [height]
    return [(cuts[i], cuts[i + 1]) for i in range(count) if cuts[i] < cuts[i + 1]]


def part_path(out: Path, index: int, count: int) -> Path:
    """Where part ``index`` of ``count`` of ``out`` is written (hidden, beside ``out``)."""
    return out.with_name(f".{out.name}.part{index + 1}of{count}.tif")


def predict_case(
    reader: CaseReader,
    prediction: Prediction,
    out: str | os.PathLike[str],
    *,
    dtype: str = "int16",
    overwrite: bool = False,
    cog: bool = False,
    split: RankSplit = RankSplit(),
    tags: dict[str, str] | None = None,
    on_rows: Callable[[int], None] | None = None,
    clip: tuple[float, float] | None = None,
) -> Path | None:
    """Predict a case's fine t2 with a prepared method and stream it to ``out`` (fine t1's grid).

    Args:
        reader: the case (its files are read block by block).
        prediction: the method prepared on this case (``fusion.get(name).preparer(...)(reader)``).
        out: output GeoTIFF: int16 reflectance x 10000 (default) or float32 reflectance.
        cog: write a Cloud Optimized GeoTIFF.
        split: with several ranks, each rank predicts its rows into a part file; the caller must
            then call :func:`join_parts` on rank 0 after all ranks have returned (a barrier).
        tags: GeoTIFF metadata tags (provenance).
        on_rows: called with the number of rows written after each block (progress bars).
        clip: (low, high) reflectance range the predictions are clipped to (e.g. (0, 1)); None: as
            predicted (small negative reflectances are then kept, like those of atmospheric correction).
    Returns:
        ``out`` for a single process, else this rank's part file (None if the rank has no rows).
    """
    out = Path(out)
    height = reader.height
    if split.world_size == 1:
        rows, target = (0, height), out
        raster.check_writable(out, overwrite=overwrite)
    else:
        spans = split_rows(prediction.row_starts(height, reader.width), height, split.world_size)
        if split.rank >= len(spans):
            return None
        rows, target = spans[split.rank], part_path(out, split.rank, len(spans))
        log.info("rank %d: rows %d..%d -> %s", split.rank, rows[0], rows[1], target)
    with raster.row_writer(
        target,
        reader.reference,
        count=reader.bands,
        dtype=dtype,
        rows=None if split.world_size == 1 else rows,
        overwrite=True if split.world_size > 1 else overwrite,
        band_names=reader.band_names,
        tags=tags,
        cog=cog and split.world_size == 1,
    ) as write:
        predicted = 0
        for first_row, block in prediction.iter_rows(reader, *rows):
            if clip is not None:
                block = np.clip(block, *clip)  # NaN (no prediction) stays NaN
            write(first_row, block)
            predicted += int(np.isfinite(block).all(axis=0).sum())
            if on_rows is not None:
                on_rows(block.shape[1])
        if predicted == 0 and split.world_size == 1:  # (a rank's part may legitimately be empty)
            raise NothingPredictedError(
                f"{out}: no pixel could be predicted: every pixel is invalid (nodata, masked or outside "
                "a coarse footprint) in some input; check the masks and nodata values"
            )
    return target


def join_parts(
    reader: CaseReader,
    prediction: Prediction,
    out: str | os.PathLike[str],
    *,
    world_size: int,
    overwrite: bool = False,
    cog: bool = False,
) -> Path:
    """Join the part files of a split prediction into ``out`` and remove them (rank 0, after a barrier)."""
    out = Path(out)
    spans = split_rows(prediction.row_starts(reader.height, reader.width), reader.height, world_size)
    parts = [(part_path(out, i, len(spans)), rows) for i, rows in enumerate(spans)]
    missing = [str(path) for path, _ in parts if not path.exists()]
    if missing:
        raise OutputError(f"{out}: part files missing ({', '.join(missing)}); did a rank fail?")
    raster.join_row_parts(parts, out, reader.reference, overwrite=overwrite, cog=cog)
    for path, _ in parts:
        path.unlink()
    return out


def quality_description(reader: CaseReader) -> str:
    """The legend of the quality band (:func:`write_quality`) for this case's roles."""
    bits = ", ".join(f"{quality_bit(role)} = {role} invalid" for role in reader.input_roles())
    return f"0 = all inputs valid; else the sum of {bits}"


def write_quality(
    reader: CaseReader, out: str | os.PathLike[str], *, overwrite: bool = False, rows_per_block: int = 256
) -> Path:
    """Write the quality band of a case's prediction (which inputs are invalid), block by block."""
    flags = np.concatenate(
        [
            reader.quality(Window(top, 0, min(rows_per_block, reader.height - top), reader.width))
            for top in range(0, reader.height, rows_per_block)
        ]
    )
    return raster.write_quality(
        out, flags, reader.reference, overwrite=overwrite, description=quality_description(reader)
    )
