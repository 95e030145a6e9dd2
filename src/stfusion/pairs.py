"""Several reference pairs for a method that takes one: one prediction per pair, combined locally.

A case may hold K >= 1 reference pairs (e.g. one before and one after the target date). STARFM and
ESTARFM use several pairs natively; every other method (coarse-delta, FSDAF, MLFF-GAN, ...) is run once
per pair, and the K predictions F̂_k are combined pixel by pixel with ESTARFM's temporal weights (Zhu et
al. 2010, eq. 18), computed from the coarse images in a local window:

    Δ_k(x, b) = mean_{q ∈ N(x)} C2(q, b) − mean_{q ∈ N(x)} C_k(q, b)
    T_k(x, b) = (1 / (|Δ_k| + ε)) / Σ_j (1 / (|Δ_j| + ε))
    F̂(x, b)  = Σ_k T_k(x, b) F̂_k(x, b)

N(x) is the (2h + 1)² window around x clipped at the scene's edges (h = :data:`HALF_WINDOW` fine pixels,
about three MODIS pixels at 30 m, ESTARFM's window), the means are over pixels valid in C2 and C_k, and
ε = 1e-6 reflectance. The pair whose coarse image changed least towards the target date weighs most.
A pixel where a pair's prediction (or its Δ) is invalid takes the other pairs' prediction (the weights
are renormalised over the valid pairs); it is NaN only where every pair is.

Combining streams like any method: rows come from the K per-pair predictions as they are produced, and
the weights of a block of rows need ``h`` rows of context above and below it.

A method that takes several pairs at once may need every pair valid at a pixel (ESTARFM does): a cloud
in one reference image leaves a hole although the other pair could predict there.
:class:`GapFilledPrediction` fills such pixels from a method run pair by pair as above, prepared and
computed only for the row blocks that have such pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
from scipy import ndimage

from stfusion.blocks import Block, Prediction, ReferencePair, SceneSource, SourceView
from stfusion.errors import InputError
from stfusion.tiling import Window

logger = logging.getLogger(__name__)

#: Half side h of the window of the local coarse means (fine pixels).
HALF_WINDOW: int = 25
#: ε of the temporal weights (reflectance): keeps 1 / |Δ| finite when a pair's coarse image is unchanged.
EPSILON: float = 1e-6


class PairView(SourceView):
    """One reference pair of a scene, seen as a one-pair scene (a :class:`SceneSource`)."""

    def __init__(self, source: SceneSource, index: int) -> None:
        if not 0 <= index < source.n_pairs:
            raise ValueError(f"pair {index} of a scene with {source.n_pairs} pairs")
        super().__init__(source)
        self.index = index

    @property
    def n_pairs(self) -> int:
        return 1

    def _one(self, block: Block) -> Block:
        return Block(top=block.top, pairs=(block.pairs[self.index],), coarse_t2=block.coarse_t2)

    def block(self, top: int, stop: int) -> Block:
        return self._one(self.source.block(top, stop))

    def read_window(self, window: Window) -> Block:
        return self._one(self.source.read_window(window))


def local_mean(image: np.ndarray, half_window: int) -> np.ndarray:
    """Mean over the finite values of a (2h+1)² window clipped at the edges; NaN where none.

    Args:
        image: (C, n, W) float, NaN = invalid.
    Returns:
        (C, n, W) float64.
    """
    valid = np.isfinite(image)
    size = (1, 2 * half_window + 1, 2 * half_window + 1)
    sums = ndimage.uniform_filter(np.where(valid, image, 0.0).astype(np.float64), size, mode="constant")
    counts = ndimage.uniform_filter(valid.astype(np.float64), size, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        # uniform_filter returns window means with zeros outside: the ratio is the clipped mean
        return np.where(counts > 1e-12, sums / np.maximum(counts, 1e-300), np.nan)


def temporal_weights(block: Block, half_window: int = HALF_WINDOW) -> np.ndarray:
    """ESTARFM-style weights T_k of each pair (see module docstring) for every pixel of a block.

    Args:
        block: rows of every input; the weights of its inner rows are exact when it holds
            ``half_window`` rows of context above and below them.
    Returns:
        (K, C, n, W) float64 weights summing to 1 over k where at least one Δ_k is defined, NaN
        where a pair's Δ is undefined.
    """
    target = local_mean(block.coarse_t2, half_window)
    inverse = []
    for pair in block.pairs:
        delta = target - local_mean(np.where(np.isfinite(block.coarse_t2), pair.coarse, np.nan), half_window)
        inverse.append(1.0 / (np.abs(delta) + EPSILON))
    stacked = np.stack(inverse)
    with np.errstate(invalid="ignore"):
        return stacked / np.nansum(stacked, axis=0, keepdims=True)


def combine(predictions: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Σ_k T_k F̂_k with the weights renormalised over the pairs valid at each pixel.

    Args:
        predictions: K arrays (C, n, W), NaN where a pair gives no value.
        weights: (K, C, n, W) from :func:`temporal_weights` (NaN where undefined).
    Returns:
        (C, n, W) float32; NaN only where no pair is valid.
    """
    stacked = np.stack(predictions).astype(np.float64)
    usable = np.isfinite(stacked) & np.isfinite(weights)
    # a pair without a defined weight but with a value still counts when it is the only one
    weights = np.where(usable, weights, 0.0)
    total = weights.sum(axis=0)
    fallback = np.isfinite(stacked) & (total == 0)[None]
    weights = np.where(fallback, 1.0, weights)
    total = weights.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        combined = (np.where(weights > 0, stacked, 0.0) * weights).sum(axis=0) / total
    return np.where(total > 0, combined, np.nan).astype(np.float32)


class CombinedPrediction:
    """K one-pair predictions of one scene combined by :func:`temporal_weights` (a Prediction)."""

    def __init__(self, parts: list[Prediction], views: list[PairView], half_window: int = HALF_WINDOW):
        self.parts, self.views, self.half_window = parts, views, half_window

    def row_starts(self, height: int, width: int) -> list[int]:
        # where every part's blocks start (parts may cut a scene differently, e.g. FSDAF's cells laid
        # on each pair's coarse pixels): a range from one of these is predicted as the whole scene is
        common = set(self.parts[0].row_starts(height, width))
        for part in self.parts[1:]:
            common &= set(part.row_starts(height, width))
        return sorted(common | {0})

    def iter_rows(self, source: SceneSource, first: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        streams = [
            part.iter_rows(view, first, stop) for part, view in zip(self.parts, self.views, strict=True)
        ]
        pending: list[list[np.ndarray]] = [[] for _ in streams]
        ready = [first] * len(streams)  # rows of each stream received up to (exclusive)
        done = first
        while done < stop:
            # pull from the stream that lags most, until every stream has rows beyond `done`
            lagging = int(np.argmin(ready))
            row, values = next(streams[lagging])
            if row != ready[lagging]:
                raise RuntimeError(f"pair {lagging} yielded rows from {row}, expected {ready[lagging]}")
            pending[lagging].append(values)
            ready[lagging] += values.shape[1]
            common = min(ready)
            if common > done:
                parts = [self._take(pending[k], common - done) for k in range(len(streams))]
                yield done, self._combine(source, parts, done, common)
                done = common

    @staticmethod
    def _take(queue: list[np.ndarray], rows: int) -> np.ndarray:
        taken, need = [], rows
        while need:
            head = queue[0]
            if head.shape[1] <= need:
                taken.append(queue.pop(0))
                need -= head.shape[1]
            else:
                taken.append(head[:, :need])
                queue[0] = head[:, need:]
                need = 0
        return np.concatenate(taken, axis=1)

    def _combine(self, source: SceneSource, parts: list[np.ndarray], top: int, stop: int) -> np.ndarray:
        halo = self.half_window
        read_top, read_stop = max(0, top - halo), min(source.height, stop + halo)
        weights = temporal_weights(source.block(read_top, read_stop), halo)
        inner = slice(top - read_top, top - read_top + (stop - top))
        return combine(parts, weights[:, :, inner])


def combine_pairs(source: SceneSource, prepare_one: Callable[[SceneSource], Prediction]) -> Prediction:
    """A method taking one pair, run on each pair of ``source`` and combined (see module docstring)."""
    views = [PairView(source, k) for k in range(source.n_pairs)]
    return CombinedPrediction([prepare_one(view) for view in views], views)


def usable(block: Block) -> np.ndarray:
    """(rows, W) bool: the coarse image at t2 and at least one whole reference pair valid (every band)."""
    pair_valid = [np.isfinite(p.coarse).all(axis=0) & np.isfinite(p.fine).all(axis=0) for p in block.pairs]
    return np.isfinite(block.coarse_t2).all(axis=0) & np.logical_or.reduce(pair_valid)


class _RememberingSource(SourceView):
    """A :class:`SceneSource` that keeps the last block it read, so that rows inside it are not read again."""

    def __init__(self, source: SceneSource) -> None:
        super().__init__(source)
        self.last: Block | None = None

    def block(self, top: int, stop: int) -> Block:
        self.last = self.source.block(top, stop)
        return self.last

    def rows(self, top: int, stop: int) -> Block:
        """Scene rows [top, stop), sliced from the last block read when it holds them."""
        last = self.last
        if last is not None and last.top <= top and stop <= last.top + last.rows:
            rows = slice(top - last.top, stop - last.top)
            return Block(
                top=top,
                pairs=tuple(ReferencePair(p.coarse[:, rows], p.fine[:, rows]) for p in last.pairs),
                coarse_t2=last.coarse_t2[:, rows],
            )
        return self.source.block(top, stop)


class _RowStream:
    """Rows of a :class:`Prediction` taken in increasing ranges, computing as few of its blocks as it can."""

    def __init__(self, prediction: Prediction, source: SceneSource) -> None:
        self.prediction, self.source = prediction, source
        self.starts = prediction.row_starts(source.height, source.width)
        self.rows: Iterator[tuple[int, np.ndarray]] | None = None
        self.next_row = 0  # first row the iterator has not yielded
        self.pending: list[tuple[int, np.ndarray]] = []
        self.last_top = 0

    def take(self, top: int, stop: int) -> np.ndarray:
        """Rows [top, stop): (C, stop - top, W); ``top`` at least the last call's ``top``."""
        if top < self.last_top:
            raise ValueError(f"rows from {top} asked after rows from {self.last_top}: rows go down the scene")
        self.last_top = top
        start = max([s for s in self.starts if s <= top], default=0)
        if self.rows is None or start > self.next_row:
            # a block start lies between the rows computed so far and those asked for: start there
            self.close()
            self.rows = self.prediction.iter_rows(self.source, start, self.source.height)
            self.next_row, self.pending = start, []
        while self.next_row < stop:
            row, values = next(self.rows)
            self.pending.append((row, values))
            self.next_row = row + values.shape[1]
        self.pending = [(row, v) for row, v in self.pending if row + v.shape[1] > top]
        parts = [v[:, max(0, top - row) : stop - row] for row, v in self.pending if row < stop]
        return np.concatenate(parts, axis=1)

    def close(self) -> None:
        """Stop the prediction's iterator (its blocks are not needed any more)."""
        if self.rows is not None and hasattr(self.rows, "close"):
            self.rows.close()
        self.rows = None


class GapFilledPrediction:
    """A prediction whose NaN pixels are filled from another where the scene can be predicted.

    Where ``primary`` gives NaN at a pixel of which the coarse image at t2 and at least one reference pair
    are valid (:func:`usable`), the value comes from the ``fallback`` prediction (a method run pair by
    pair, :func:`combine_pairs`). The fallback is prepared on first need (``prepare_fallback()``) and
    computed only for the row blocks with such pixels; the inputs' validity is taken from the block the
    primary read when it holds the rows (else they are read again). If the fallback cannot be prepared
    on the scene (an :class:`InputError`, e.g. a scene too small for it), the gaps stay NaN and a
    warning says why. Rows and row starts are the primary's. :attr:`filled` counts the pixels filled by
    the last :meth:`iter_rows`, and a warning says how many.
    """

    def __init__(
        self,
        primary: Prediction,
        prepare_fallback: Callable[[], Prediction],
        name: str,
        fallback_name: str = "the fallback",
    ) -> None:
        """``name``, ``fallback_name``: the methods' names, for messages."""
        self.primary, self.prepare_fallback = primary, prepare_fallback
        self.name, self.fallback_name = name, fallback_name
        self._fallback: Prediction | None = None
        self._failed = False
        self.filled = 0  # pixels filled (all bands) by the last iter_rows

    def row_starts(self, height: int, width: int) -> list[int]:
        return self.primary.row_starts(height, width)

    def _stream(self, source: SceneSource) -> _RowStream | None:
        if self._fallback is None and not self._failed:
            try:
                self._fallback = self.prepare_fallback()
            except InputError as exc:
                self._failed = True
                logger.warning("%s: pixels with one usable reference pair are left NaN: %s", self.name, exc)
        return None if self._fallback is None else _RowStream(self._fallback, source)

    def iter_rows(self, source: SceneSource, first: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        stream: _RowStream | None = None
        remembering = _RememberingSource(source)
        self.filled = 0
        try:
            for row, values in self.primary.iter_rows(remembering, first, stop):
                gaps = np.isnan(values)
                if gaps.any() and not self._failed:
                    gaps &= usable(remembering.rows(row, row + values.shape[1]))[None]
                    if gaps.any():
                        stream = stream or self._stream(source)
                        if stream is not None:
                            fill = stream.take(row, row + values.shape[1])
                            values = np.where(gaps, fill, values).astype(values.dtype, copy=False)
                            self.filled += int((gaps.any(axis=0) & np.isfinite(fill).all(axis=0)).sum())
                yield row, values
        finally:
            if stream is not None:
                stream.close()
        if self.filled:
            logger.warning(
                "%s: %d pixels (%.1f%%) of rows %d-%d predicted by %s from one reference pair (the other "
                "is invalid there; --option fill_gaps=false leaves them nodata)",
                self.name, self.filled, 100 * self.filled / max(1, (stop - first) * source.width), first,
                stop - 1, self.fallback_name,
            )  # fmt: skip
