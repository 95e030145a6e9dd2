"""Several reference pairs for a one-pair method: local temporal weights, invalid pairs, streaming."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from stfusion import fusion, pairs
from stfusion.blocks import ArraySource, Block, Prediction, RowBlocks, SceneSource, predict_scene
from stfusion.errors import InputError


def two_pair_scene(rng: np.random.Generator, shape: tuple[int, int, int] = (2, 40, 30)) -> ArraySource:
    c1, f1, c3, f3, c2 = (rng.uniform(0.05, 0.4, shape).astype(np.float32) for _ in range(5))
    return ArraySource([(c1, f1), (c3, f3)], c2)


def test_the_pair_whose_coarse_image_did_not_change_takes_the_weight(rng: np.random.Generator) -> None:
    source = two_pair_scene(rng)
    changed = source.coarse_t2 + np.float32(0.05)  # pair 3's coarse image differs by 0.05 everywhere
    unchanged = ArraySource(
        [(source.coarse_t2.copy(), source.pairs[0].fine), (changed, source.pairs[1].fine)], source.coarse_t2
    )
    weights = pairs.temporal_weights(unchanged.block(0, unchanged.height), half_window=3)
    assert weights.shape == (2, 2, 40, 30)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, rtol=1e-12)
    assert (weights[0] > 0.99).all()


def test_hand_computed_weights() -> None:
    """Uniform images: Δ1 = 0.02, Δ3 = -0.06 -> T1 = (1/0.02) / (1/0.02 + 1/0.06) = 0.75 (ε negligible)."""
    ones = np.ones((1, 5, 5), np.float32)
    source = ArraySource([(0.10 * ones, 0.2 * ones), (0.18 * ones, 0.3 * ones)], 0.12 * ones)
    weights = pairs.temporal_weights(source.block(0, 5), half_window=2)
    np.testing.assert_allclose(weights[0], 0.75, rtol=1e-4)
    combined = pairs.combine([0.2 * ones, 0.3 * ones], weights)
    np.testing.assert_allclose(combined, 0.75 * 0.2 + 0.25 * 0.3, rtol=1e-4)


def test_a_pixel_invalid_in_one_pair_takes_the_other(rng: np.random.Generator) -> None:
    source = two_pair_scene(rng)
    source.pairs[0].fine[:, 5:9, 3:6] = np.nan
    single = ArraySource([(source.pairs[1].coarse, source.pairs[1].fine)], source.coarse_t2)
    preparer = fusion.get("coarse-delta").preparer()
    combined = predict_scene(preparer(source), source)
    alone = predict_scene(preparer(single), single)
    np.testing.assert_allclose(combined[:, 5:9, 3:6], alone[:, 5:9, 3:6], rtol=1e-6)
    assert np.isfinite(combined).all()


def test_streamed_blocks_equal_the_whole_scene(rng: np.random.Generator) -> None:
    """Row blocks of any size (halo from the weights' window) give the whole-scene combination."""
    source = two_pair_scene(rng, (2, 83, 21))
    preparer = fusion.get("coarse-delta").preparer()
    whole = predict_scene(preparer(source), source)

    def small_blocks(view: SceneSource) -> Prediction:
        def predict_block(block: Block, top: int, bottom: int) -> np.ndarray:
            pair = block.pairs[0]
            return pair.fine + block.coarse_t2 - pair.coarse

        return RowBlocks(predict_block, block_rows=7)

    blocked = pairs.combine_pairs(source, small_blocks)
    rows = list(blocked.iter_rows(source, 0, source.height))
    assert len(rows) == 12  # 83 rows in blocks of 7
    # equal to float rounding: the window means of a block's rows are summed over the block, not the scene
    np.testing.assert_allclose(np.concatenate([r for _, r in rows], axis=1), whole, rtol=0, atol=1e-7)
    assert next(r for r, _ in blocked.iter_rows(source, 21, 50)) == 21
    views = [pairs.PairView(source, k) for k in range(2)]
    direct = pairs.combine(
        [predict_scene(preparer(view), view) for view in views],
        pairs.temporal_weights(source.block(0, source.height)),
    )
    np.testing.assert_allclose(whole, direct, rtol=1e-6)


class Counted:
    """A RowBlocks wrapper that records the row ranges it was asked to predict."""

    def __init__(self, prediction: RowBlocks) -> None:
        self.prediction, self.calls = prediction, []

    def row_starts(self, height: int, width: int) -> list[int]:
        return self.prediction.row_starts(height, width)

    def iter_rows(self, source: SceneSource, first: int, stop: int):  # type: ignore[no-untyped-def]
        for row, values in self.prediction.iter_rows(source, first, stop):
            self.calls.append((row, row + values.shape[1]))
            yield row, values


def both_pairs(block: Block, top: int, bottom: int) -> np.ndarray:
    """A toy two-pair method: the mean of both pairs' F + C2 - C, NaN where either pair is invalid."""
    stop = block.rows - bottom
    values = [p.fine + block.coarse_t2 - p.coarse for p in block.pairs]
    return np.asarray((values[0] + values[1])[:, top:stop] / 2, np.float32)


def test_gaps_of_a_two_pair_method_are_filled_from_the_usable_pair(rng: np.random.Generator) -> None:
    source = two_pair_scene(rng, (2, 60, 20))
    source.pairs[0].fine[:, 25:28, 4:9] = np.nan  # a cloud in pair 1 only
    source.pairs[1].fine[0, 26, 5] = np.nan  # both pairs invalid here: no value
    source.coarse_t2[:, 50, 2] = np.nan  # the target's coarse image invalid: no value
    primary = RowBlocks(both_pairs, block_rows=10)

    def sevens(block: Block, top: int, bottom: int) -> np.ndarray:  # a value everywhere, even at no pair
        return np.full((2, block.rows - top - bottom, 20), 7, np.float32)

    fallback = Counted(RowBlocks(sevens, block_rows=10))
    prepared = []

    def prepare() -> Prediction:
        prepared.append(1)
        return fallback

    filled = pairs.GapFilledPrediction(primary, prepare, "toy")
    result = predict_scene(filled, source)
    unfilled = predict_scene(primary, source)
    gaps = np.zeros((60, 20), bool)
    gaps[25:28, 4:9] = True
    gaps[26, 5] = gaps[50, 2] = False
    assert (result[:, gaps] == 7).all()  # the fallback's value
    np.testing.assert_array_equal(result[:, ~gaps], unfilled[:, ~gaps])  # NaN included
    assert np.isnan(result[:, 26, 5]).all() and np.isnan(result[:, 50, 2]).all()
    assert filled.filled == gaps.sum()
    # prepared once, run for the one block with gaps only (rows 20-30; none at row 50 is fillable)
    assert prepared == [1] and fallback.calls == [(20, 30)]


def test_the_fallback_starts_at_its_own_block_starts(rng: np.random.Generator) -> None:
    """Rows asked of the fallback come from its block that holds them: the same values in any range."""
    source = two_pair_scene(rng, (1, 50, 9))
    source.pairs[1].fine[:, 12:14, 2] = np.nan
    source.pairs[1].fine[:, 41, 3] = np.nan

    def by_block(block: Block, top: int, bottom: int) -> np.ndarray:  # a value per block: its first row
        return np.full((1, block.rows - top - bottom, 9), block.top + top, np.float32)

    fallback = Counted(RowBlocks(by_block, block_rows=8))
    filled = pairs.GapFilledPrediction(RowBlocks(both_pairs, block_rows=5), lambda: fallback, "toy")
    result = predict_scene(filled, source)
    assert (result[0, 12:14, 2] == 8).all() and result[0, 41, 3] == 40
    assert fallback.calls == [(8, 16), (40, 48)]  # not the blocks in between
    later = np.concatenate([v for _, v in filled.iter_rows(source, 40, 50)], axis=1)
    np.testing.assert_array_equal(later, result[:, 40:])


def test_a_fallback_that_cannot_run_leaves_the_gaps(
    rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    source = two_pair_scene(rng, (1, 12, 6))
    source.pairs[0].fine[:, 3, 3] = np.nan

    def refuse() -> Prediction:
        raise InputError("scene too small for the fallback")

    filled = pairs.GapFilledPrediction(RowBlocks(both_pairs, block_rows=4), refuse, "toy")
    with caplog.at_level(logging.WARNING):
        result = predict_scene(filled, source)
    assert np.isnan(result[0, 3, 3]) and np.isfinite(np.delete(result.ravel(), 3 * 6 + 3)).all()
    assert "toy: pixels with one usable reference pair are left NaN: scene too small" in caplog.text


class CountingSource(ArraySource):
    """An ArraySource that counts the rows its blocks read."""

    rows_read = 0

    def block(self, top: int, stop: int) -> Block:
        self.rows_read += stop - top
        return super().block(top, stop)


def test_unfillable_gaps_cost_no_second_read(
    rng: np.random.Generator, caplog: pytest.LogCaptureFixture
) -> None:
    """A nodata border (coarse t2 invalid) is NaN in every block: the inputs' validity comes from the
    block the primary read, and the fallback is never prepared; a fill is counted per run and said."""
    images = [rng.uniform(0.05, 0.4, (2, 50, 20)).astype(np.float32) for _ in range(5)]
    images[4][:, :, :3] = np.nan  # coarse t2's nodata border
    source = CountingSource([(images[0], images[1]), (images[2], images[3])], images[4])
    primary = RowBlocks(both_pairs, block_rows=10)
    prepared: list[int] = []

    def prepare() -> Prediction:
        prepared.append(1)
        return RowBlocks(lambda b, t, s: np.full((2, b.rows - t - s, 20), 7, np.float32), block_rows=10)

    filled = pairs.GapFilledPrediction(primary, prepare, "toy", "sevens")
    result = predict_scene(filled, source)
    assert source.rows_read == 50 and not prepared and filled.filled == 0
    assert np.isnan(result[:, :, :3]).all() and np.isfinite(result[:, :, 3:]).all()
    source.pairs[0].fine[:, 12, 10] = np.nan  # now one fillable pixel
    for _ in range(2):  # counted per run, not summed over runs
        with caplog.at_level(logging.WARNING):
            result = predict_scene(filled, source)
        assert filled.filled == 1 and (result[:, 12, 10] == 7).all()
    assert "toy: 1 pixels (0.1%) of rows 0-49 predicted by sevens from one reference pair" in caplog.text
