"""Tests of the block contract every fusion method implements (stfusion.blocks)."""

from __future__ import annotations

import numpy as np
import pytest

from stfusion.blocks import ArraySource, Block, RowBlocks, SourceView, iter_source_blocks, predict_scene
from stfusion.tiling import Window


def _scene(seed: int = 0, shape: tuple[int, int, int] = (2, 37, 11)) -> ArraySource:
    rng = np.random.default_rng(seed)
    c1, f1, c2 = (rng.uniform(0, 0.5, shape).astype(np.float32) for _ in range(3))
    return ArraySource([(c1, f1)], c2)


def _box_mean_rows(halo: int):
    """A method whose row r is the mean of F1 rows r-halo..r+halo (clipped): needs exactly `halo` rows."""

    def predict(block: Block, halo_top: int, halo_bottom: int) -> np.ndarray:
        fine = block.pairs[0].fine
        out = np.empty((fine.shape[0], block.rows - halo_top - halo_bottom, fine.shape[2]), np.float32)
        for i, r in enumerate(range(halo_top, block.rows - halo_bottom)):
            out[:, i] = fine[:, max(0, r - halo) : r + halo + 1].mean(axis=1)
        return out

    return predict


@pytest.mark.parametrize("block_rows", [1, 4, 10, 37, 100])
def test_row_blocks_equal_the_whole_scene_computation(block_rows: int) -> None:
    source = _scene()
    whole = RowBlocks(_box_mean_rows(3), halo=3, block_rows=10_000)
    blocked = RowBlocks(_box_mean_rows(3), halo=3, block_rows=block_rows)
    np.testing.assert_array_equal(predict_scene(blocked, source), predict_scene(whole, source))
    # hand check of one row: row 0 is the mean of rows 0..3
    expected = source.pairs[0].fine[:, 0:4].mean(axis=1)
    np.testing.assert_allclose(predict_scene(blocked, source)[:, 0], expected, rtol=1e-6)


def test_a_row_range_gives_the_same_rows_as_the_whole_scene() -> None:
    source = _scene()
    method = RowBlocks(_box_mean_rows(2), halo=2, block_rows=8)
    whole = predict_scene(method, source)
    rows = list(method.iter_rows(source, 8, 24))
    assert [r for r, _ in rows] == [8, 16]
    np.testing.assert_array_equal(np.concatenate([b for _, b in rows], axis=1), whole[:, 8:24])
    with pytest.raises(ValueError, match="not inside"):
        list(method.iter_rows(source, 0, 38))


def test_explicit_starts_and_sources() -> None:
    source = _scene(shape=(1, 9, 3))
    method = RowBlocks(_box_mean_rows(0), starts=lambda h, w: [0, 5])
    assert [r for r, _ in method.iter_rows(source, 0, 9)] == [0, 5]
    assert [b.top for b in iter_source_blocks(source, rows=4)] == [0, 4, 8]
    assert source.block(2, 5).valid().shape == (3, 3)
    with pytest.raises(ValueError, match="one"):
        ArraySource([(np.zeros((1, 2, 2)), np.zeros((1, 3, 2)))], np.zeros((1, 2, 2)))
    assert Window(1, 2, 3, 4).slices == (slice(1, 4), slice(2, 6))


def test_a_source_view_passes_everything_through() -> None:
    rng = np.random.default_rng(1)
    c1, f1, c2 = (rng.uniform(0, 1, (2, 6, 5)).astype(np.float32) for _ in range(3))
    source = ArraySource([(c1, f1)], c2, coarse_ratio=4.0)
    view = SourceView(source)
    assert (view.bands, view.height, view.width, view.n_pairs, view.coarse_ratio) == (2, 6, 5, 1, 4.0)
    np.testing.assert_array_equal(view.block(1, 4).pairs[0].fine, f1[:, 1:4])
    window = view.read_window(Window(-1, 0, 3, 5))
    assert window.top == -1 and np.isnan(window.coarse_t2[:, 0]).all()
    np.testing.assert_array_equal(window.coarse_t2[:, 1:], c2[:, :2])
