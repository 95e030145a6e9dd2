"""Pure window math for whole-scene prediction: an overlapping tile grid and smooth blending.

Tiles cover the whole image: starts step by ``tile - overlap`` and the last tile is aligned to the
bottom/right edge, so no margin is left out. Each tile's prediction is weighted by a separable ramp that
rises linearly across the overlap from the tile's inner edges (never reaching zero), and the mosaic is
sum(weight * value) / sum(weight): seams fade smoothly, and a constant prediction gives a constant mosaic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """Rows [row, row + height) and columns [col, col + width) of a grid (may extend outside it).

    The one window type of the package: tiles, read windows and blocks are all Windows (rasterio's own
    window class stays inside :mod:`stfusion.raster`).
    """

    row: int
    col: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap`` overlap.

    The last start is ``size - tile`` so the far edge is covered; a tile larger than the image is
    shrunk to the image (one start, 0).
    """
    if size < 1 or tile < 1:
        raise ValueError(f"size and tile must be positive, got size={size}, tile={tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


@dataclass(frozen=True)
class TileOptions:
    """Window size (rows, cols), overlap (rows, cols) and tiles per batch for scene prediction."""

    tile: tuple[int, int] = (1024, 768)
    overlap: tuple[int, int] = (64, 64)
    batch_size: int = 1


def tile_grid(height: int, width: int, tile: tuple[int, int], overlap: tuple[int, int]) -> list[Window]:
    """All tiles, row-major, covering an image of ``height`` x ``width``."""
    tile_h, tile_w = min(tile[0], height), min(tile[1], width)
    overlap_h, overlap_w = min(overlap[0], tile_h - 1), min(overlap[1], tile_w - 1)
    rows = tile_starts(height, tile_h, overlap_h)
    cols = tile_starts(width, tile_w, overlap_w)
    return [Window(r, c, tile_h, tile_w) for r in rows for c in cols]


def ramp(length: int, overlap: int) -> np.ndarray:
    """1-D blending weights: linear from 1/(overlap+1) up to 1 over ``overlap`` pixels at each end."""
    weights = np.ones(length, dtype=np.float64)
    if overlap > 0:
        rise = np.arange(1, overlap + 1, dtype=np.float64) / (overlap + 1)
        n = min(overlap, length)
        weights[:n] = np.minimum(weights[:n], rise[:n])
        weights[length - n :] = np.minimum(weights[length - n :], rise[:n][::-1])
    return weights


def blend_weights(height: int, width: int, overlap: tuple[int, int]) -> np.ndarray:
    """(height, width) float64 separable ramp weights, positive everywhere."""
    return np.outer(ramp(height, overlap[0]), ramp(width, overlap[1]))


def tile_rows(tiles: list[Window]) -> list[list[Window]]:
    """Group a row-major tile grid into rows of tiles (same start row), top to bottom."""
    rows: dict[int, list[Window]] = {}
    for tile in tiles:
        rows.setdefault(tile.row, []).append(tile)
    return [rows[start] for start in sorted(rows)]


class Mosaic:
    """Accumulates weighted tile predictions into rows [top, top + height) of a (C, H, W) scene.

    A whole-scene mosaic has ``top=0, height=H``. For streaming, a strip as tall as one tile slides
    down the scene: :meth:`pop_rows` returns finished rows and makes room below. Accumulators are
    float32 (at most four tiles meet at a pixel); the weights are one (height, W) plane shared by the
    bands. A tile's pixel that is NaN in any band contributes nothing (in any band); a pixel that no
    tile gives a value stays NaN.
    """

    def __init__(
        self, bands: int, height: int, width: int, overlap: tuple[int, int], *, top: int = 0
    ) -> None:
        self.overlap = overlap
        self.top = top
        self.total = np.zeros((bands, height, width), dtype=np.float32)
        self.weight = np.zeros((height, width), dtype=np.float32)
        self._weights: dict[tuple[int, int], np.ndarray] = {}

    def add(self, tile: Window, values: np.ndarray) -> None:
        """Add a (C, tile.height, tile.width) prediction; the tile must lie inside the strip."""
        key = (tile.height, tile.width)
        if key not in self._weights:
            self._weights[key] = blend_weights(tile.height, tile.width, self.overlap).astype(np.float32)
        if tile.row < self.top or tile.row + tile.height > self.top + self.total.shape[1]:
            raise ValueError(f"tile rows {tile.row}..{tile.row + tile.height} outside the mosaic strip")
        missing = np.isnan(values).any(axis=0)
        weights = np.where(missing, np.float32(0), self._weights[key])
        rows = slice(tile.row - self.top, tile.row - self.top + tile.height)
        cols = slice(tile.col, tile.col + tile.width)
        self.total[:, rows, cols] += (
            np.where(missing[None], np.float32(0), values).astype(np.float32) * weights
        )
        self.weight[rows, cols] += weights

    def _blend(self, stop: int) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            blended = self.total[:, :stop] / self.weight[None, :stop]
        blended[:, self.weight[:stop] == 0] = np.nan
        return blended

    def result(self) -> np.ndarray:
        """The blended (C, height, W) float32 strip; NaN where no tile gave a value."""
        return self._blend(self.total.shape[1])

    def pop_rows(self, stop: int) -> np.ndarray:
        """Blended rows [top, stop) (no tile added later may touch them); the strip moves down to stop."""
        count = stop - self.top
        if not 0 <= count <= self.total.shape[1]:
            raise ValueError(f"cannot pop rows {self.top}..{stop} of a strip starting at {self.top}")
        finished = self._blend(count)
        height = self.total.shape[1]
        self.total[:, : height - count] = self.total[:, count:].copy()  # the few rows still open
        self.total[:, height - count :] = 0
        self.weight[: height - count] = self.weight[count:].copy()
        self.weight[height - count :] = 0
        self.top = stop
        return finished
