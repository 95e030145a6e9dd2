from __future__ import annotations

import itertools

import numpy as np
import pytest

from stfusion.tiling import Mosaic, Window, blend_weights, ramp, tile_grid, tile_rows, tile_starts


@pytest.mark.parametrize(
    "size, tile, overlap", [(250, 128, 32), (256, 256, 0), (100, 256, 16), (517, 96, 40)]
)
def test_tiles_cover_every_pixel(size: int, tile: int, overlap: int) -> None:
    starts = tile_starts(size, tile, overlap)
    covered = np.zeros(size, bool)
    length = min(size, tile)
    for start in starts:
        assert 0 <= start <= size - length
        covered[start : start + length] = True
    assert covered.all()
    assert starts[-1] + length == size
    # neighbouring tiles overlap by at least `overlap`
    for a, b in itertools.pairwise(starts):
        assert a + length - b >= min(overlap, length - 1)


def test_tile_starts_errors() -> None:
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(100, 32, 32)


def test_ramp_positive_and_symmetric() -> None:
    weights = ramp(10, 3)
    assert (weights > 0).all() and weights.max() == 1.0
    np.testing.assert_allclose(weights, weights[::-1])
    assert blend_weights(5, 7, (2, 2)).shape == (5, 7)


def test_constant_prediction_gives_constant_mosaic() -> None:
    mosaic = Mosaic(2, 333, 517, overlap=(24, 24))
    for tile in tile_grid(333, 517, (96, 128), (24, 24)):
        mosaic.add(tile, np.full((2, tile.height, tile.width), 0.37))
    result = mosaic.result()
    np.testing.assert_allclose(result, 0.37, rtol=0, atol=1e-7)


def test_mosaic_reproduces_a_tile_independent_function() -> None:
    rng = np.random.default_rng(0)
    scene = rng.random((3, 70, 90))
    mosaic = Mosaic(3, 70, 90, overlap=(10, 10))
    for tile in tile_grid(70, 90, (32, 32), (10, 10)):
        rows, cols = tile.slices
        mosaic.add(tile, scene[:, rows, cols])
    np.testing.assert_allclose(mosaic.result(), scene, rtol=1e-6)


def test_nan_contributions_are_ignored() -> None:
    mosaic = Mosaic(1, 10, 10, overlap=(0, 0))
    tiles = tile_grid(10, 10, (10, 10), (0, 0))
    values = np.ones((1, 10, 10))
    values[0, 0, 0] = np.nan
    mosaic.add(tiles[0], values)
    result = mosaic.result()
    assert np.isnan(result[0, 0, 0]) and np.nansum(result) == 99


def test_strip_mosaic_pop_rows_equals_whole_mosaic() -> None:
    rng = np.random.default_rng(1)
    tiles = tile_grid(50, 40, (16, 16), (4, 4))
    values = {t: rng.random((2, t.height, t.width)).astype(np.float32) for t in tiles}
    whole = Mosaic(2, 50, 40, overlap=(4, 4))
    for tile in tiles:
        whole.add(tile, values[tile])
    strip = Mosaic(2, 16, 40, overlap=(4, 4), top=0)
    rows = tile_rows(tiles)
    blocks = []
    for index, group in enumerate(rows):
        for tile in group:
            strip.add(tile, values[tile])
        stop = rows[index + 1][0].row if index + 1 < len(rows) else 50
        blocks.append(strip.pop_rows(stop))
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), whole.result())


def test_strip_mosaic_refuses_tiles_outside_the_strip() -> None:
    strip = Mosaic(1, 10, 10, overlap=(0, 0), top=20)
    with pytest.raises(ValueError, match="outside"):
        strip.add(tile_grid(40, 10, (10, 10), (0, 0))[0], np.ones((1, 10, 10)))


def test_a_pixel_nan_in_one_band_of_a_tile_contributes_in_no_band() -> None:
    mosaic = Mosaic(2, 1, 10, overlap=(0, 4))
    left, right = Window(0, 0, 1, 6), Window(0, 4, 1, 6)
    left_values = np.full((2, 1, 6), 1.0, np.float32)
    left_values[0, 0, 5] = np.nan  # scene column 5, band 0 only
    left_values[1, 0, 0] = np.nan  # scene column 0, no other tile covers it
    mosaic.add(left, left_values)
    mosaic.add(right, np.full((2, 1, 6), 3.0, np.float32))
    result = mosaic.result()
    assert result[0, 0, 5] == result[1, 0, 5] == 3.0  # only the right tile counts there, in both bands
    assert np.isnan(result[:, 0, 0]).all()
    assert 1.0 < result[0, 0, 4] < 3.0  # blended where both tiles are valid
