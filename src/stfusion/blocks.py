"""What a fusion method sees: full-width row blocks of a scene, and how a prepared method predicts rows.

Every fusion method runs through one path. Its registry entry (:mod:`stfusion.fusion`) *prepares* it on
a :class:`SceneSource`: a method with global statistics (STARFM's similarity tolerances, FSDAF's classes
and class changes, ...) reads the scene once, block by block, to compute them. The result is a
:class:`Prediction`, which yields the predicted rows of any row range of the scene, top to bottom.

A :class:`SceneSource` is either a case read from GeoTIFFs window by window
(:class:`stfusion.inputs.CaseReader`) or arrays in memory (:class:`ArraySource`): whole-scene and
streaming predictions are the same computation, and memory depends on the block size, not the scene.

Most methods predict a block of rows from those rows plus ``halo`` rows of context above and below
(fewer at the scene's edges): :class:`RowBlocks` turns such a ``predict_block`` function into a
:class:`Prediction`. Methods whose result depends on where blocks start (FSDAF fits one spline per
block) give their own block starts, so every path cuts the scene at the same rows.

Arrays are float32 reflectance (0..1) on the fine grid, bands first, NaN = invalid (nodata, masked,
outside the scene). Reference pairs are ordered as the case lists them (pair 0 is "t1").
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from stfusion.tiling import Window


@dataclass(frozen=True)
class ReferencePair:
    """The fine and coarse images of one reference date: (C, n, W) float32 reflectance, NaN = invalid."""

    coarse: np.ndarray
    fine: np.ndarray


@dataclass(frozen=True)
class Block:
    """Scene rows [top, top + rows) of every input: the reference pairs and the coarse image at t2.

    Attributes:
        top: first scene row of the block.
        pairs: K >= 1 reference pairs, each (C, rows, W).
        coarse_t2: (C, rows, W) coarse image at the target date.
    """

    top: int
    pairs: tuple[ReferencePair, ...]
    coarse_t2: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.coarse_t2.shape[1])

    def valid(self) -> np.ndarray:
        """(rows, W) bool: finite in every band of every input."""
        valid = np.isfinite(self.coarse_t2).all(axis=0)
        for pair in self.pairs:
            valid &= np.isfinite(pair.coarse).all(axis=0) & np.isfinite(pair.fine).all(axis=0)
        return valid


class SceneSource(Protocol):
    """A scene whose inputs can be read as full-width row blocks (see module docstring)."""

    @property
    def bands(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def n_pairs(self) -> int: ...

    def block(self, top: int, stop: int) -> Block:
        """Scene rows [top, stop) of every input (0 <= top < stop <= height)."""
        ...

    def read_window(self, window: Window) -> Block:
        """Any window of every input; parts outside the scene are NaN (``Block.top`` = window.row)."""
        ...

    @property
    def coarse_ratio(self) -> float | None:
        """Coarse / fine pixel size when known (an option, or native coarse images), else None."""
        ...


class Prediction(Protocol):
    """A method prepared on one scene: it predicts any range of the scene's rows."""

    def row_starts(self, height: int, width: int) -> list[int]:
        """Rows where the method's blocks start (0 first): where a scene may be split across processes."""
        ...

    def iter_rows(self, source: SceneSource, first: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(row, block)`` covering scene rows [first, stop) in order; ``block`` (C, n, W) float32.

        ``first`` is one of :meth:`row_starts` (or 0); rows are identical whichever range they are
        predicted in.
        """
        ...


#: predict_block(block, halo_top, halo_bottom) -> (C, block.rows - halo_top - halo_bottom, W) prediction
#: of the block's rows between its halos.
BlockPredictor = Callable[[Block, int, int], np.ndarray]


@dataclass(frozen=True)
class RowBlocks:
    """A :class:`Prediction` from a function that predicts row blocks given ``halo`` rows of context.

    Attributes:
        predict_block: see :data:`BlockPredictor`; the halos are ``halo`` rows except at the scene's
            top and bottom edges, where they are what exists.
        halo: context rows needed above and below the predicted rows.
        block_rows: predicted rows per block (the last block of a range may be shorter).
        starts: explicit block starts (e.g. aligned to coarse cells); default every ``block_rows``.
    """

    predict_block: BlockPredictor
    halo: int = 0
    block_rows: int = 256
    starts: Callable[[int, int], list[int]] | None = None

    def row_starts(self, height: int, width: int) -> list[int]:
        if self.starts is not None:
            return self.starts(height, width)
        return list(range(0, height, max(1, self.block_rows)))

    def iter_rows(self, source: SceneSource, first: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        height = source.height
        if not 0 <= first < stop <= height:
            raise ValueError(f"row range {first}..{stop} is not inside a scene of {height} rows")
        bounds = [*self.row_starts(height, source.width), height]
        for r0, r1 in itertools.pairwise(bounds):
            r0, r1 = max(r0, first), min(r1, stop)
            if r0 >= r1:
                continue
            top, bottom = max(0, r0 - self.halo), min(height, r1 + self.halo)
            block = source.block(top, bottom)
            yield r0, self.predict_block(block, r0 - top, bottom - r1)


class SourceView:
    """A :class:`SceneSource` over another one, every property and read passed through: the base of
    views that change part of a scene (one pair of it, a padded scene, ...) by overriding what they
    change."""

    def __init__(self, source: SceneSource) -> None:
        self.source = source

    @property
    def bands(self) -> int:
        return self.source.bands

    @property
    def height(self) -> int:
        return self.source.height

    @property
    def width(self) -> int:
        return self.source.width

    @property
    def n_pairs(self) -> int:
        return self.source.n_pairs

    @property
    def coarse_ratio(self) -> float | None:
        return self.source.coarse_ratio

    def block(self, top: int, stop: int) -> Block:
        return self.source.block(top, stop)

    def read_window(self, window: Window) -> Block:
        return self.source.read_window(window)


class ArraySource:
    """A scene held in memory as arrays: K reference pairs and the coarse image at t2, each (C, H, W)."""

    def __init__(
        self,
        pairs: Sequence[tuple[np.ndarray, np.ndarray]],
        coarse_t2: np.ndarray,
        *,
        coarse_ratio: float | None = None,
    ) -> None:
        """``pairs`` are (coarse, fine) tuples; every image is (C, H, W) of one shape. ``coarse_ratio``:
        coarse / fine pixel size when known (methods that need it estimate it otherwise)."""
        self.coarse_ratio = coarse_ratio
        if not pairs:
            raise ValueError("a scene needs at least one reference pair")
        shapes = {image.shape for pair in pairs for image in pair} | {coarse_t2.shape}
        if len(shapes) != 1 or coarse_t2.ndim != 3:
            raise ValueError(f"inputs must share one (C, H, W) shape, got {sorted(shapes)}")
        self.pairs = tuple(ReferencePair(coarse=c, fine=f) for c, f in pairs)
        self.coarse_t2 = coarse_t2

    @property
    def bands(self) -> int:
        return int(self.coarse_t2.shape[0])

    @property
    def height(self) -> int:
        return int(self.coarse_t2.shape[1])

    @property
    def width(self) -> int:
        return int(self.coarse_t2.shape[2])

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    def block(self, top: int, stop: int) -> Block:
        if not 0 <= top < stop <= self.height:
            raise ValueError(f"rows {top}..{stop} are not inside a scene of {self.height} rows")
        rows = slice(top, stop)
        return Block(
            top=top,
            pairs=tuple(ReferencePair(coarse=p.coarse[:, rows], fine=p.fine[:, rows]) for p in self.pairs),
            coarse_t2=self.coarse_t2[:, rows],
        )

    def read_window(self, window: Window) -> Block:
        def crop(image: np.ndarray) -> np.ndarray:
            dtype = np.result_type(image.dtype, np.float32)
            out = np.full((image.shape[0], window.height, window.width), np.nan, dtype=dtype)
            r0, c0 = max(window.row, 0), max(window.col, 0)
            r1, c1 = min(window.row + window.height, self.height), min(window.col + window.width, self.width)
            if r0 < r1 and c0 < c1:
                out[:, r0 - window.row : r1 - window.row, c0 - window.col : c1 - window.col] = image[
                    :, r0:r1, c0:c1
                ]
            return out

        return Block(
            top=window.row,
            pairs=tuple(ReferencePair(coarse=crop(p.coarse), fine=crop(p.fine)) for p in self.pairs),
            coarse_t2=crop(self.coarse_t2),
        )


def check_fusion_inputs(coarse_t1: np.ndarray, fine_t1: np.ndarray, coarse_t2: np.ndarray) -> None:
    """Raise ValueError unless the three inputs are (C, H, W) arrays of one shape."""
    for name, image in (("coarse_t1", coarse_t1), ("fine_t1", fine_t1), ("coarse_t2", coarse_t2)):
        if image.ndim != 3:
            raise ValueError(f"{name} must have shape (C, H, W), got {image.shape}")
    if not (coarse_t1.shape == fine_t1.shape == coarse_t2.shape):
        raise ValueError(
            "fusion inputs must share one shape (C, H, W): "
            f"coarse_t1 {coarse_t1.shape}, fine_t1 {fine_t1.shape}, coarse_t2 {coarse_t2.shape}"
        )


#: Median |value| above which an array given as reflectance holds something else (x 10000, digital
#: numbers): methods whose thresholds and clipping assume reflectance 0..1 refuse it.
MAX_MEDIAN_REFLECTANCE = 1.5


def check_reflectance(method: str, **images: np.ndarray) -> None:
    """ValueError when an image given to ``method`` (as reflectance 0..1) looks like reflectance x 10000
    or digital numbers: the median of a strided sample of its finite |values| above
    :data:`MAX_MEDIAN_REFLECTANCE`. Cheap on any size (at most ~100 000 values per image)."""
    for name, image in images.items():
        flat = np.asarray(image).reshape(-1)
        sample = np.abs(flat[:: max(1, flat.size // 100_000)].astype(np.float64))
        sample = sample[np.isfinite(sample)]
        if sample.size and (median := float(np.median(sample))) > MAX_MEDIAN_REFLECTANCE:
            raise ValueError(
                f"{method}: {name} does not hold reflectance 0..1 (median |value| {median:.4g}): reflectance "
                "x 10000 or digital numbers? divide by 10000 (stored integers: "
                "stfusion.transforms.to_reflectance), or read files with stfusion.raster.read"
            )


def predict_scene(prediction: Prediction, source: SceneSource) -> np.ndarray:
    """All rows of a scene in memory: (C, H, W) float32, NaN where the method gives no value."""
    result = np.full((source.bands, source.height, source.width), np.nan, dtype=np.float32)
    for row, values in prediction.iter_rows(source, 0, source.height):
        result[:, row : row + values.shape[1]] = values
    return result


def iter_source_blocks(source: SceneSource, rows: int = 256) -> Iterator[Block]:
    """The scene as consecutive blocks of ``rows`` rows (no halo): for passes computing global statistics."""
    for top in range(0, source.height, rows):
        yield source.block(top, min(source.height, top + rows))
