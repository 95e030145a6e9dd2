from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from stfusion import raster
from stfusion.errors import InputError, OutputExistsError
from tests.conftest import TEST_CRS, TEST_TRANSFORM, random_scene, write_tif


def test_read_scales_to_float_reflectance(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = random_scene(rng)
    path = write_tif(tmp_path / "a.tif", stored)
    image = raster.read(path)
    assert image.data.dtype == np.float32
    assert image.data.shape == stored.shape
    np.testing.assert_allclose(image.data, stored * 1e-4, rtol=1e-6)
    assert image.info.crs == TEST_CRS
    assert image.info.transform == tuple(TEST_TRANSFORM)[:6]


def test_read_custom_scale_and_nodata_as_nan(tmp_path: Path) -> None:
    stored = np.full((2, 4, 5), 100, dtype=np.int16)
    stored[:, 1, 2] = -9999
    path = write_tif(tmp_path / "a.tif", stored, nodata=-9999)
    image = raster.read(path, scale=0.5)
    assert np.isnan(image.data[:, 1, 2]).all()
    assert np.nanmax(image.data) == pytest.approx(50.0)


def test_read_window_is_boundless_with_nan_outside(tmp_path: Path, rng: np.random.Generator) -> None:
    stored = random_scene(rng)
    path = write_tif(tmp_path / "a.tif", stored)
    part = raster.read(path, window=Window(col_off=20, row_off=-2, width=8, height=5)).data
    assert part.shape == (4, 5, 8)
    assert np.isnan(part[:, :2]).all() and np.isnan(part[:, :, 4:]).all()
    np.testing.assert_allclose(part[:, 2:, :4], stored[:, 0:3, 20:24] * 1e-4, rtol=1e-6)


def test_write_like_keeps_crs_transform_and_rounds(tmp_path: Path, rng: np.random.Generator) -> None:
    reference = write_tif(tmp_path / "ref.tif", random_scene(rng), nodata=-9999)
    info = raster.inspect(reference)
    prediction = np.full((4, 20, 24), 0.12346, dtype=np.float32)
    prediction[0, 0, 0] = 5.0  # clipped to int16 max
    prediction[1, 0, 0] = -0.00016  # rounds to -2; truncation would give -1
    prediction[2, 0, 0] = np.nan  # becomes nodata
    out = raster.write_like(tmp_path / "out.tif", prediction, info)
    with rasterio.open(out) as src:
        assert src.crs.to_string() == TEST_CRS
        assert tuple(src.transform)[:6] == tuple(TEST_TRANSFORM)[:6]
        assert src.nodata == -9999
        assert src.dtypes[0] == "int16"
        stored = src.read()
    assert stored[0, 0, 0] == 32767
    assert stored[1, 0, 0] == -2
    assert stored[2, 0, 0] == -9999
    assert stored[3, 1, 1] == 1235  # 1234.6 rounds up; a truncating cast would give 1234


def test_write_like_float32_and_default_nodata(tmp_path: Path, rng: np.random.Generator) -> None:
    info = raster.inspect(write_tif(tmp_path / "ref.tif", random_scene(rng)))
    prediction = np.full((4, 20, 24), 0.25, dtype=np.float32)
    prediction[:, 3, 3] = np.nan
    out = raster.write_like(tmp_path / "f.tif", prediction, info, dtype="float32")
    back = raster.read(out, scale=1.0)
    assert np.isnan(back.data[:, 3, 3]).all()
    assert np.nanmax(back.data) == pytest.approx(0.25)
    out16 = raster.write_like(tmp_path / "i.tif", prediction, info)
    assert raster.inspect(out16).nodata == raster.DEFAULT_INT16_NODATA
    assert np.isnan(raster.read(out16).data[:, 3, 3]).all()


def test_write_like_refuses_existing_output_and_leaves_no_partial(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    info = raster.inspect(write_tif(tmp_path / "ref.tif", random_scene(rng)))
    out = tmp_path / "out.tif"
    raster.write_like(out, np.zeros((4, 20, 24), np.float32), info)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        raster.write_like(out, np.zeros((4, 20, 24), np.float32), info)
    raster.write_like(out, np.ones((4, 20, 24), np.float32) * 0.1, info, overwrite=True)
    assert raster.read(out).data.max() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="differs from the reference"):
        raster.write_like(tmp_path / "bad.tif", np.zeros((4, 10, 10), np.float32), info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "ref.tif"]


def test_inspect_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.tif: file not found"):
        raster.inspect(tmp_path / "missing.tif")
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(InputError, match=r"notes\.tif: not a readable raster"):
        raster.inspect(text)
    with pytest.raises(InputError, match="is a folder"):
        raster.inspect(tmp_path)


def test_truncated_raster_is_an_input_error(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_tif(tmp_path / "a.tif", rng.integers(0, 9000, size=(3, 300, 300)).astype(np.int16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"a\.tif: corrupt or truncated raster"):
        raster.read(path)
    # cut inside its header: it does not open, and says why
    path.write_bytes(data[:100])
    with pytest.raises(InputError, match=r"a\.tif: corrupt or truncated TIFF \(.*\); re-download"):
        raster.inspect(path)
    # an uncompressed GeoTIFF cut after its first tags: it would open without its georeferencing
    plain = write_tif(tmp_path / "plain.tif", rng.integers(0, 9000, size=(6, 250, 250)).astype(np.int16))
    plain.write_bytes(plain.read_bytes()[:1000])
    with pytest.raises(
        InputError, match=r"plain\.tif: corrupt or truncated TIFF \(.*IO error during reading"
    ):
        raster.inspect(plain)
    quiet = logging.getLogger("rasterio")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # a caller's quiet logging does not hide the damage
    try:
        with pytest.raises(InputError, match=r"plain\.tif: corrupt or truncated TIFF"):
            raster.inspect(plain)
    finally:
        quiet.setLevel(level)


def test_check_writable(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        raster.check_writable(tmp_path / "nope" / "x.tif", overwrite=False)


def test_same_grid_and_crs(tmp_path: Path, rng: np.random.Generator) -> None:
    a = raster.inspect(write_tif(tmp_path / "a.tif", random_scene(rng)))
    b = raster.inspect(write_tif(tmp_path / "b.tif", random_scene(rng, bands=2)))
    assert raster.same_grid(b, a)  # band counts do not matter
    assert raster.same_crs("EPSG:32755", a.crs) and not raster.same_crs("EPSG:4326", a.crs)
    assert raster.same_crs(None, None) and not raster.same_crs(None, a.crs)
    wkt = rasterio.crs.CRS.from_epsg(32755).to_wkt()
    assert raster.same_crs(wkt, "EPSG:32755")
    off = from_origin(TEST_TRANSFORM.c + 1e-9, TEST_TRANSFORM.f, 50.0, 50.0)
    assert raster.same_grid(
        raster.inspect(write_tif(tmp_path / "c.tif", random_scene(rng), transform=off)), a
    )
    off = from_origin(TEST_TRANSFORM.c + 1.0, TEST_TRANSFORM.f, 50.0, 50.0)
    assert not raster.same_grid(
        raster.inspect(write_tif(tmp_path / "d.tif", random_scene(rng), transform=off)), a
    )
    assert not raster.same_grid(raster.inspect(write_tif(tmp_path / "e.tif", random_scene(rng, width=25))), a)


def test_footprint_fraction(tmp_path: Path, rng: np.random.Generator) -> None:
    grid = raster.inspect(write_tif(tmp_path / "grid.tif", random_scene(rng)))  # 20 x 24 px of 50 m
    half = from_origin(TEST_TRANSFORM.c + 600.0, TEST_TRANSFORM.f, 100.0, 100.0)
    source = raster.inspect(
        write_tif(tmp_path / "half.tif", random_scene(rng, height=10, width=6), transform=half)
    )
    assert raster.footprint_fraction(source, grid) == pytest.approx(0.5)
    nowhere = raster.inspect(write_tif(tmp_path / "far.tif", random_scene(rng), crs="EPSG:4326"))
    assert raster.footprint_fraction(nowhere, grid) == 0.0


def test_read_on_grid_same_grid_is_read_and_other_grid_is_warped(tmp_path: Path) -> None:
    # a 2 x 3 coarse image of 100 m pixels covering the 4 x 6 fine grid of 50 m pixels
    fine = raster.inspect(write_tif(tmp_path / "fine.tif", np.zeros((1, 4, 6), np.int16)))
    coarse_transform = from_origin(TEST_TRANSFORM.c, TEST_TRANSFORM.f, 100.0, 100.0)
    stored = np.array([[[1000, 2000, 3000], [4000, -1, 6000]]], np.int16)
    path = write_tif(tmp_path / "coarse.tif", stored, transform=coarse_transform, nodata=-1)
    near = raster.read_on_grid(path, fine, resampling="nearest")
    expected = np.repeat(np.repeat(stored[0] * 1e-4, 2, axis=0), 2, axis=1).astype(np.float32)
    expected[expected < 0] = np.nan
    np.testing.assert_allclose(near[0], expected, rtol=1e-6)
    window = raster.make_window(-1, 4, 3, 4)
    part = raster.read_on_grid(path, fine, resampling="nearest", window=window)
    assert part.shape == (1, 3, 4) and np.isnan(part[:, 0]).all() and np.isnan(part[:, :, 2:]).all()
    np.testing.assert_allclose(part[0, 1:, :2], expected[:2, 4:], rtol=1e-6)
    same = raster.read_on_grid(tmp_path / "fine.tif", fine)
    np.testing.assert_array_equal(same, raster.read(tmp_path / "fine.tif").data)


def test_read_mask_ignores_declared_nodata(tmp_path: Path) -> None:
    grid = raster.inspect(write_tif(tmp_path / "grid.tif", np.zeros((1, 4, 6), np.int16)))
    mask = np.zeros((2, 4, 6), np.uint8)
    mask[0, 1, 2] = 1
    mask[1, 3, 5] = 255
    path = write_tif(tmp_path / "mask.tif", mask, nodata=0)
    invalid = raster.read_mask_on_grid(path, grid)
    assert invalid.dtype == bool and invalid.sum() == 2 and invalid[1, 2] and invalid[3, 5]
    window = raster.read_mask_on_grid(path, grid, window=raster.make_window(1, 2, 2, 2))
    np.testing.assert_array_equal(window, [[True, False], [False, False]])


def test_write_quality(tmp_path: Path, rng: np.random.Generator) -> None:
    reference = raster.inspect(write_tif(tmp_path / "ref.tif", random_scene(rng), nodata=-9999))
    flags = np.zeros((20, 24), np.uint8)
    flags[3, 4] = 5
    out = raster.write_quality(tmp_path / "q.tif", flags, reference, description="0 = valid")
    with rasterio.open(out) as src:
        assert src.dtypes[0] == "uint8" and src.nodata is None and src.crs.to_string() == TEST_CRS
        assert src.tags()["QUALITY"] == "0 = valid"
        np.testing.assert_array_equal(src.read(1), flags)
    with pytest.raises(OutputExistsError):
        raster.write_quality(out, flags, reference)


def test_sample_values_of_a_large_raster_reads_spread_windows(tmp_path: Path) -> None:
    rows = np.repeat(np.arange(700, dtype=np.int16)[:, None], 900, axis=1)
    path = write_tif(tmp_path / "big.tif", np.stack([rows, rows + 1000]), nodata=-1)
    sample = raster.sample_values(path, max_pixels=64 * 64, grid=4)
    assert not sample.complete
    side = int(np.sqrt(64 * 64 / 16))  # 16 px windows on a 4 x 4 grid
    assert sample.n_pixels == 2 * 16 * side * side
    first_band = sample.values[: sample.values.size // 2]
    assert first_band.min() == 0 and first_band.max() == 699  # reaches the top and the bottom rows
    assert raster.sample_values(tmp_path / "big.tif").values.size < 700 * 900


def test_set_band_names_in_place(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_tif(tmp_path / "a.tif", random_scene(rng, 2, 8, 8))
    before = raster.read(path).data
    raster.set_band_names(path, ("red", "nir"))
    assert raster.inspect(path).band_names == ("red", "nir")
    np.testing.assert_array_equal(raster.read(path).data, before)
    with pytest.raises(InputError, match=r"a\.tif: 2 bands, but 3 names given"):
        raster.set_band_names(path, ("a", "b", "c"))


@pytest.mark.parametrize("crs", [TEST_CRS, None], ids=["crs", "no-crs"])
@pytest.mark.parametrize(("factor", "offset"), [(1.25, -0.797), (1.25, -0.503), (2.0, -0.5), (3.0, -0.6)])
def test_reprojected_reads_are_bilinear_by_hand_in_any_window(
    tmp_path: Path, factor: float, offset: float, crs: str | None
) -> None:
    """A coarser raster warped onto a small grid: every pixel is the textbook bilinear interpolation of
    the four source pixels around its centre, in the whole read and in any window (GDAL, left to
    estimate the resampling scale per window, widened its kernel for the whole 6 x 7 read: 0.09 off)."""

    def write(path: Path, data: np.ndarray, transform: Any) -> Path:  # with a transform even without CRS
        profile = dict(driver="GTiff", count=1, height=data.shape[1], width=data.shape[2], dtype="int16")
        with rasterio.open(path, "w", crs=crs, transform=transform, **profile) as dst:
            dst.write(data)
        return path

    grid_path = write(
        tmp_path / "grid.tif", np.zeros((1, 6, 7), np.int16), from_origin(500000, 6000000, 30, 30)
    )
    grid = raster.inspect(grid_path)
    size = 30 * factor
    x0, y0 = 500000 + offset * size, 6000000 - offset * size
    stored = np.random.default_rng(2).integers(0, 10000, (1, 10, 9)).astype(np.int16)
    source = write(tmp_path / "coarse.tif", stored, from_origin(x0, y0, size, size))
    whole = raster.read_on_grid(source, grid, resampling="bilinear")[0]

    def by_hand(row: int, col: int) -> float:
        u = (500000 + (col + 0.5) * 30 - x0) / size - 0.5  # source column of the grid pixel's centre
        v = (y0 - 6000000 + (row + 0.5) * 30) / size - 0.5
        i, j = int(np.floor(v)), int(np.floor(u))
        fv, fu = v - i, u - j
        values = stored[0].astype(np.float64) * 1e-4
        top = values[i, j] * (1 - fu) + values[i, j + 1] * fu
        bottom = values[i + 1, j] * (1 - fu) + values[i + 1, j + 1] * fu
        return float(top * (1 - fv) + bottom * fv)

    expected = np.array([[by_hand(r, c) for c in range(7)] for r in range(6)])
    np.testing.assert_allclose(whole, expected, rtol=0, atol=1e-6)
    for row, col, height, width in ((1, 1, 3, 3), (-1, 2, 4, 9), (0, 0, 6, 7), (5, 6, 1, 1)):
        part = raster.read_on_grid(
            source, grid, resampling="bilinear", window=raster.make_window(row, col, height, width)
        )
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, 6), min(col + width, 7)
        np.testing.assert_array_equal(part[0, r0 - row : r1 - row, c0 - col : c1 - col], whole[r0:r1, c0:c1])
