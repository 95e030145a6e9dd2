"""Several reference pairs for a one-pair method: local temporal weights, invalid pairs, streaming."""

from __future__ import annotations

import numpy as np

from stfusion import fusion, pairs
from stfusion.blocks import ArraySource, Block, Prediction, RowBlocks, SceneSource, predict_scene


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
