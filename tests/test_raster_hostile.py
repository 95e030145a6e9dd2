"""Users' files as they come: any nodata, scale/offset tags, float reflectance, GDAL masks, alpha bands;
and writes that fail (disk full, size limits, concurrent runs). Every file is a real GeoTIFF (or VRT /
ENVI file) written with rasterio in tmp_path."""

from __future__ import annotations

import math
import os
import resource
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from stfusion import raster
from stfusion.atomic import OutputError
from stfusion.errors import InputError, OutputExistsError
from tests.conftest import TEST_CRS, TEST_TRANSFORM

HEIGHT, WIDTH = 12, 16
# a grid of 25 m pixels over the 50 m test grid: reading onto it reprojects (2 x 2 per source pixel)
FINE_TRANSFORM = from_origin(TEST_TRANSFORM.c, TEST_TRANSFORM.f, 25.0, 25.0)


def write_file(
    path: Path,
    stored: np.ndarray,
    *,
    nodata: float | None = None,
    scales: list[float] | None = None,
    offsets: list[float] | None = None,
    mask: np.ndarray | None = None,
    colorinterp: list[ColorInterp] | None = None,
    driver: str = "GTiff",
    env: dict[str, Any] | None = None,
) -> Path:
    """Write (C, H, W) ``stored`` as is (its dtype), with optional tags, GDAL mask (H, W: 0 = no data)
    and colour interpretation (e.g. a last alpha band)."""
    profile: dict[str, Any] = {
        "driver": driver,
        "count": stored.shape[0],
        "height": stored.shape[1],
        "width": stored.shape[2],
        "dtype": str(stored.dtype),
        "crs": TEST_CRS,
        "transform": TEST_TRANSFORM,
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.Env(**(env or {})), rasterio.open(path, "w", **profile) as dst:
        if colorinterp is not None:
            dst.colorinterp = colorinterp
        dst.write(stored)
        if scales is not None:
            dst.scales = scales
        if offsets is not None:
            dst.offsets = offsets
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)
    return path


def raster_colorinterp(path: Path) -> list[ColorInterp]:
    with rasterio.open(path) as src:
        return list(src.colorinterp)


def fine_grid(tmp_path: Path) -> raster.RasterInfo:
    """A 2 x finer grid over the test grid, as a real file's metadata."""
    path = tmp_path / "grid.tif"
    profile = dict(driver="GTiff", count=1, height=2 * HEIGHT, width=2 * WIDTH, dtype="int16", crs=TEST_CRS)
    with rasterio.open(path, "w", transform=FINE_TRANSFORM, **profile) as dst:
        dst.write(np.zeros((1, 2 * HEIGHT, 2 * WIDTH), np.int16))
    return raster.inspect(path)


def upsampled(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C, 2H, 2W) by pixel repetition: what a nearest read on the fine grid gives."""
    return np.repeat(np.repeat(image, 2, axis=1), 2, axis=2)


def reflectance_scene(rng: np.random.Generator, bands: int = 3) -> np.ndarray:
    """Float64 reflectance 0.01..0.6 (C, H, W)."""
    return rng.uniform(0.01, 0.6, size=(bands, HEIGHT, WIDTH))


# --------------------------------------------------------------------------------------------------
# nodata of any dtype

NODATA_CASES = {
    # name: (dtype, nodata, stored value per reflectance unit)
    "float32 NaN (GDAL's usual)": ("float32", float("nan"), 1.0),
    "float32 -3.4e38 (R/terra, ENVI)": ("float32", -3.4e38, 1.0),
    "float32 x 10000, NaN": ("float32", float("nan"), 1e4),
    "uint16 65535": ("uint16", 65535, 1e4),
    "int16 0": ("int16", 0, 1e4),
    "uint8 0": ("uint8", 0, 100.0),
    "int16 none": ("int16", None, 1e4),
}


def hostile_file(tmp_path: Path, rng: np.random.Generator, case: str) -> tuple[Path, np.ndarray, np.ndarray]:
    """A file of one NODATA_CASES case: (path, expected reflectance (C, H, W) float64, invalid (C, H, W))."""
    dtype, nodata, per_unit = NODATA_CASES[case]
    reflectance = reflectance_scene(rng)
    stored = reflectance * per_unit
    if np.dtype(dtype).kind != "f":
        stored = np.rint(stored)
    stored = stored.astype(dtype)
    invalid = np.zeros(stored.shape, dtype=bool)
    if nodata is not None:
        invalid[:, 2, 3] = True  # a pixel missing in all bands
        invalid[1, 5, 7] = True  # and one in band 2 only
        stored[invalid] = np.asarray(nodata).astype(dtype)
    path = write_file(tmp_path / "in.tif", stored, nodata=nodata)
    expected = stored.astype(np.float64) / per_unit
    return path, expected, invalid


@pytest.mark.parametrize("case", list(NODATA_CASES))
def test_any_nodata_reads_as_nan(tmp_path: Path, rng: np.random.Generator, case: str) -> None:
    path, expected, invalid = hostile_file(tmp_path, rng, case)
    per_unit = NODATA_CASES[case][2]
    scale = 1.0 / per_unit if per_unit == 100.0 else None  # uint8 percent: the only one not automatic
    image = raster.read(path, scale=scale)
    np.testing.assert_array_equal(np.isnan(image.data), invalid)
    np.testing.assert_allclose(image.data[~invalid], expected[~invalid], rtol=1e-6)
    # a window reaching outside, and the whole file reprojected onto a finer grid, agree with it
    window = raster.read(path, scale=scale, window=raster.make_window(1, 2, 6, 20)).data
    np.testing.assert_array_equal(window[:, :, :14], image.data[:, 1:7, 2:16])
    assert np.isnan(window[:, :, 14:]).all()
    on_grid = raster.read_on_grid(path, fine_grid(tmp_path), scale=scale, resampling="nearest")
    np.testing.assert_array_equal(on_grid, upsampled(image.data))
    # interpolating kernels use each band's valid pixels only: no nodata value leaks into a neighbour
    smooth = raster.read_on_grid(path, fine_grid(tmp_path), scale=scale, resampling="cubic")
    assert np.nanmin(smooth) > -0.1 and np.nanmax(smooth) < 0.7
    assert np.isnan(smooth[1, 10:12, 14:16]).all() == invalid[1, 5, 7]  # centred on band 2's own hole


def test_float32_nodata_compared_in_float32_even_when_declared_as_float64(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A VRT or ENVI header says -3.4e+38 exactly; the float32 pixels hold -3.3999999521443642e+38."""
    stored = reflectance_scene(rng).astype(np.float32)
    stored[:, 4, 4] = np.float32(-3.4e38)
    tif = write_file(tmp_path / "in.tif", stored, nodata=-3.4e38)
    envi = write_file(tmp_path / "in.envi", stored, nodata=-3.4e38, driver="ENVI")
    vrt = tmp_path / "in.vrt"
    with rasterio.open(tif) as src:
        transform = ", ".join(repr(v) for v in src.transform.to_gdal())
        wkt = src.crs.to_wkt().replace("&", "&amp;").replace("<", "&lt;")
    bands = "".join(
        f'<VRTRasterBand dataType="Float32" band="{b}"><NoDataValue>-3.4e+38</NoDataValue><SimpleSource>'
        f"<SourceFilename>{tif}</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    vrt.write_text(
        f'<VRTDataset rasterXSize="{WIDTH}" rasterYSize="{HEIGHT}"><SRS>{wkt}</SRS>'
        f"<GeoTransform>{transform}</GeoTransform>{bands}</VRTDataset>"
    )
    grid = fine_grid(tmp_path)
    for path in (tif, envi, vrt):
        assert raster.inspect(path).nodata is not None
        data = raster.read(path).data
        assert (
            np.isnan(data[:, 4, 4]).all()
            and np.isfinite(np.delete(data.reshape(3, -1), 4 * WIDTH + 4, 1)).all()
        )
        if path is not envi:  # (rasterio writes ENVI files without georeferencing)
            warped = raster.read_on_grid(path, grid, resampling="nearest")
            np.testing.assert_array_equal(warped, upsampled(data))
        sample = raster.sample_values(path)
        assert sample.n_nodata == 3 and sample.values.size == 3 * (HEIGHT * WIDTH - 1)
    assert raster.inspect(vrt).nodata == -3.4e38  # float64, != the stored float32 bit for bit


def test_nodata_the_dtype_cannot_hold_matches_nothing(tmp_path: Path) -> None:
    stored = np.full((1, HEIGHT, WIDTH), 1200, np.int16)
    tif = write_file(tmp_path / "in.tif", stored)
    path = tmp_path / "in.vrt"  # rasterio refuses to write it, GDAL's VRT (and other drivers) accept it
    path.write_text(
        f'<VRTDataset rasterXSize="{WIDTH}" rasterYSize="{HEIGHT}"><VRTRasterBand dataType="Int16" band="1">'
        f"<NoDataValue>-3.4e+38</NoDataValue><SimpleSource><SourceFilename>{tif}</SourceFilename>"
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
    )
    assert raster.inspect(path).nodata is None  # rasterio drops it (GDAL reports it)
    data = raster.read(path).data
    assert np.isfinite(data).all() and data[0, 0, 0] == pytest.approx(0.12)
    # and where a reader reports one, no stored value of the dtype can equal it
    assert raster._typed_nodata(-3.4e38, "int16") is None and raster._typed_nodata(65535, "int16") is None
    assert raster._typed_nodata(0.5, "uint8") is None and raster._typed_nodata(float("nan"), "uint16") is None
    assert raster._typed_nodata(-3.4e38, "float32") == np.float32(-3.4e38)
    assert raster._typed_nodata(-1e39, "float32") is None  # beyond float32: no stored value


# --------------------------------------------------------------------------------------------------
# fill values nobody declared: float32's extremes in files without a nodata tag

#: Fill values of float files that declare no nodata: ArcGIS's float32 lowest value, and its opposite.
UNDECLARED_FILLS = {"-3.4028235e38 (float32 lowest)": -3.4028235e38, "+3.4e38": 3.4e38}


def filled_pair(tmp_path: Path, rng: np.random.Generator, fill: float) -> tuple[Path, Path, np.ndarray]:
    """The same float32 reflectance twice, without nodata tags: (file with ``fill``, file with NaN at
    the same pixels, where (C, H, W) bool). The fill covers a block in every band (over more than 1% of
    the values, so it would decide the automatic scale if counted) and one pixel of band 2."""
    reflectance = reflectance_scene(rng).astype(np.float32)
    where = np.zeros(reflectance.shape, dtype=bool)
    where[:, 2:5, 3:7] = True
    where[1, 9, 12] = True
    with_fill, with_nan = reflectance.copy(), reflectance.copy()
    with_fill[where] = np.float32(fill)
    with_nan[where] = np.nan
    (tmp_path / "fill").mkdir(exist_ok=True)
    (tmp_path / "nan").mkdir(exist_ok=True)
    filled = write_file(tmp_path / "fill" / "in.tif", with_fill)
    nan = write_file(tmp_path / "nan" / "in.tif", with_nan)
    assert raster.inspect(filled).nodata is None
    return filled, nan, where


@pytest.mark.parametrize("fill", list(UNDECLARED_FILLS.values()), ids=list(UNDECLARED_FILLS))
def test_undeclared_fill_values_are_invalid_like_nan(
    tmp_path: Path, rng: np.random.Generator, fill: float
) -> None:
    filled, nan, where = filled_pair(tmp_path, rng, fill)
    data = raster.read(filled).data
    np.testing.assert_array_equal(np.isnan(data), where)
    np.testing.assert_array_equal(data, raster.read(nan).data)
    for scale in (1.0, 1e-4):  # under any scale: reflectance never reaches 1e26
        assert np.isnan(raster.read(filled, scale=scale).data[where]).all()
    assert raster.resolve_scaling(filled).scale == 1.0  # the fill does not make the file look x 10000
    window = raster.make_window(1, 2, 6, 20)
    np.testing.assert_array_equal(
        raster.read(filled, window=window).data, raster.read(nan, window=window).data
    )
    # reprojected reads: a fill value spoils exactly the grid pixels a NaN would
    grid = fine_grid(tmp_path)
    for resampling in ("nearest", "bilinear", "cubic", "average"):
        warped = raster.read_on_grid(filled, grid, resampling=resampling)
        np.testing.assert_array_equal(warped, raster.read_on_grid(nan, grid, resampling=resampling))
        assert np.nanmax(np.abs(warped)) < 1.0, resampling
    # value checks count them with NaN/inf, outside the valid values
    sample = raster.sample_values(filled)
    assert sample.n_nonfinite == int(where.sum()) and sample.n_nodata == 0
    assert sample.values.size == int((~where).sum()) and np.abs(sample.values).max() < 1.0
    assert raster.has_valid_pixel(filled)


@pytest.mark.parametrize("fill", [math.nan, -3.4028235e38], ids=["NaN", "float32 lowest"])
def test_undeclared_nan_or_fill_is_resampled_as_declared_nodata(
    tmp_path: Path, rng: np.random.Generator, fill: float
) -> None:
    """A float file without a nodata value holding NaN or one fill value is warped as if it declared it:
    the valid neighbours fill the grid pixels next to it, instead of each invalid source pixel spoiling
    every grid pixel it touches."""
    filled, nan, _ = filled_pair(tmp_path, rng, fill)
    stored = raster.read(nan, scale=1.0).data
    declared = write_file(tmp_path / "declared.tif", stored, nodata=math.nan)
    assert raster.implied_nodata(raster.inspect(declared)) is None
    implied = raster.implied_nodata(raster.inspect(filled))
    assert implied is not None and (math.isnan(implied) if math.isnan(fill) else implied == np.float32(fill))
    grid = fine_grid(tmp_path)
    for resampling in ("nearest", "bilinear", "cubic", "average"):
        expected = raster.read_on_grid(declared, grid, resampling=resampling)
        np.testing.assert_array_equal(raster.read_on_grid(filled, grid, resampling=resampling), expected)
        # the 2 x finer grid: a block of 3 x 4 invalid source pixels leaves 6 x 8 grid pixels invalid
        assert np.isnan(expected[0]).sum() == 48, resampling
    # two kinds of invalid values in one file: NaN is declared, the fill value spoils what it touches
    mixed = stored.copy()
    mixed[:, 9, 2] = np.float32(-3.4028235e38)
    both = write_file(tmp_path / "both.tif", mixed)
    assert math.isnan(raster.implied_nodata(raster.inspect(both)) or 0.0)
    warped = raster.read_on_grid(both, grid, resampling="bilinear")
    assert np.isnan(warped[0]).sum() > 48 + 4 and np.nanmax(np.abs(warped)) < 1.0
    assert (
        raster.implied_nodata(raster.inspect(write_file(tmp_path / "i.tif", np.ones((1, 4, 4), np.int16))))
        is None
    )


def test_fill_values_beside_a_declared_nodata_and_files_of_fill_only(tmp_path: Path) -> None:
    stored = np.full((2, HEIGHT, WIDTH), 0.2, np.float32)
    stored[:, 0, 0] = -9999.0  # the declared nodata
    stored[:, 1, 1] = np.float32(-3.4028235e38)  # a fill nobody declared
    stored[:, 2, 2] = np.float32(-9.9e29)  # below the threshold: a value (absurd, but not a fill value)
    path = write_file(tmp_path / "in.tif", stored, nodata=-9999.0)
    data = raster.read(path).data
    assert np.isnan(data[:, 0, 0]).all() and np.isnan(data[:, 1, 1]).all()
    assert int(np.isnan(data).sum()) == 4 and np.isfinite(data[:, 2, 2]).all()
    sample = raster.sample_values(path)
    assert (sample.n_nodata, sample.n_nonfinite) == (2, 2)
    # a declared fill is nodata, not counted as an undeclared one
    declared = write_file(tmp_path / "declared.tif", stored, nodata=-3.4028235e38)
    assert (raster.sample_values(declared).n_nodata, raster.sample_values(declared).n_nonfinite) == (2, 0)
    only_fill = write_file(tmp_path / "fill.tif", np.full((1, HEIGHT, WIDTH), 3.4e38, np.float32))
    assert not raster.has_valid_pixel(only_fill)
    assert raster.sample_values(only_fill).values.size == 0


def test_fill_magnitude_leaves_integer_files_alone(tmp_path: Path) -> None:
    assert raster.FILL_MAGNITUDE == 1e30
    extremes = np.array([[[np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0]]], dtype=np.int64)
    assert not raster._unusable(extremes).any()
    stored = np.full((1, HEIGHT, WIDTH), np.iinfo(np.uint32).max, np.uint32)
    path = write_file(tmp_path / "in.tif", stored)
    assert np.isfinite(raster.read(path).data).all()
    assert raster.sample_values(path).n_nonfinite == 0


# --------------------------------------------------------------------------------------------------
# scale and offset: the file's tags win, then the caller's values, then an automatic choice

TAGGED_PRODUCTS = {
    # name: (dtype, scale, offset, nodata)
    "Landsat C2 L2": ("uint16", 2.75e-5, -0.2, 0),
    "Sentinel-2 L2A 04.00+": ("uint16", 1e-4, -0.1, 0),
    "MOD09GA": ("int16", 1e-4, 0.0, -28672),
}


@pytest.mark.parametrize("product", list(TAGGED_PRODUCTS))
def test_scale_offset_tags_win(tmp_path: Path, rng: np.random.Generator, product: str) -> None:
    dtype, scale, offset, nodata = TAGGED_PRODUCTS[product]
    reflectance = reflectance_scene(rng)
    stored = np.rint((reflectance - offset) / scale).astype(dtype)
    stored[:, 0, 0] = nodata
    path = write_file(tmp_path / "F.tif", stored, nodata=nodata, scales=[scale] * 3, offsets=[offset] * 3)
    scaling = raster.resolve_scaling(path)
    assert (scaling.scale, scaling.offset, scaling.source) == (
        pytest.approx(scale),
        pytest.approx(offset),
        "tags",
    )
    assert scaling.description.startswith(f"F.tif: reflectance = value x {scale:.6g}")
    assert scaling.description.endswith("(GDAL scale/offset tags)")
    # the caller's scale (e.g. --scale 1) loses against the tags, and the description says so
    overruled = raster.resolve_scaling(path, scale=1.0)
    assert overruled.scale == pytest.approx(scale) and "not used" in overruled.description
    expected = stored.astype(np.float64) * scale + offset
    for image in (raster.read(path).data, raster.read(path, scale=1.0).data):
        assert np.isnan(image[:, 0, 0]).all()
        np.testing.assert_allclose(image[:, 1:], expected[:, 1:], atol=3e-7)
    warped = raster.read_on_grid(path, fine_grid(tmp_path), resampling="nearest")
    np.testing.assert_array_equal(warped, upsampled(raster.read(path).data))
    sample = raster.sample_values(path)
    assert sample.scaling == scaling
    np.testing.assert_allclose(sample.reflectance, sample.values * scale + offset, atol=3e-7)


def test_landsat_description_and_float32_precision_over_every_dn(tmp_path: Path) -> None:
    every_dn = np.arange(1, 65536, dtype=np.uint16).reshape(1, 255, 257)  # 0 is nodata
    path = write_file(tmp_path / "F.tif", every_dn, nodata=0, scales=[2.75e-5], offsets=[-0.2])
    assert (
        str(raster.resolve_scaling(path))
        == "F.tif: reflectance = value x 2.75e-05 - 0.2 (GDAL scale/offset tags)"
    )
    exact = every_dn.astype(np.float64) * 2.75e-5 - 0.2
    error = np.abs(raster.read(path).data - exact).max()
    assert error < 3e-7  # float32 arithmetic: ~2 ulps, 1/100 of one DN step (2.75e-5)


def test_per_band_tags(tmp_path: Path) -> None:
    stored = np.full((2, HEIGHT, WIDTH), 1000, np.uint16)
    path = write_file(tmp_path / "in.tif", stored, scales=[1e-4, 2e-4], offsets=[0.0, -0.1])
    scaling = raster.resolve_scaling(path)
    assert scaling.band_scales == (1e-4, 2e-4) and "per band" in scaling.description
    data = raster.read(path).data
    np.testing.assert_allclose(data[:, 0, 0], [0.1, 0.1], atol=1e-7)
    np.testing.assert_allclose(raster.read(path, bands=[2]).data[0, 0, 0], 0.1, atol=1e-7)


def test_automatic_scale_and_the_callers_scale(tmp_path: Path, rng: np.random.Generator) -> None:
    reflectance = reflectance_scene(rng)
    reflectance[0, 0, :2] = 3.0  # two bright or bad pixels do not make a file look like x 10000
    float_reflectance = write_file(tmp_path / "s2.tif", reflectance.astype(np.float32))
    float_dn = write_file(tmp_path / "dn.tif", (reflectance * 1e4).astype(np.float32))
    integer = write_file(tmp_path / "int.tif", np.rint(reflectance * 1e4).astype(np.int16))
    auto = {p.name: raster.resolve_scaling(p) for p in (float_reflectance, float_dn, integer)}
    assert {name: (s.scale, s.source) for name, s in auto.items()} == {
        "s2.tif": (1.0, "auto"),
        "dn.tif": (1e-4, "auto"),
        "int.tif": (1e-4, "auto"),
    }
    assert "reflectance already" in auto["s2.tif"].description
    for path in (float_reflectance, float_dn, integer):
        np.testing.assert_allclose(raster.read(path).data, reflectance, atol=0.6e-4)
    given = raster.resolve_scaling(float_reflectance, scale=0.5, offset=0.01)
    assert (given.scale, given.offset, given.source) == (0.5, 0.01, "option")
    np.testing.assert_allclose(
        raster.read(float_reflectance, scale=0.5, offset=0.01).data, reflectance * 0.5 + 0.01, rtol=1e-6
    )
    with pytest.raises(InputError, match=r"scale 0\.0: must be a finite nonzero number"):
        raster.read(integer, scale=0.0)


@pytest.mark.parametrize("product", ["Landsat C2 L2", "Sentinel-2 L2A 04.00+"])
def test_callers_scale_and_offset_read_untagged_files_like_their_tags(
    tmp_path: Path, rng: np.random.Generator, product: str
) -> None:
    """USGS Landsat Collection 2 Level-2 GeoTIFFs come without scale/offset tags: the caller's scale and
    offset give the reflectance the same file's tags give (float32 rounding of one float64 computation)."""
    dtype, scale, offset, nodata = TAGGED_PRODUCTS[product]
    stored = np.rint((reflectance_scene(rng) - offset) / scale).astype(dtype)
    stored[:, 0, 0] = nodata
    plain = write_file(tmp_path / "plain.tif", stored, nodata=nodata)
    tagged = write_file(
        tmp_path / "tagged.tif", stored, nodata=nodata, scales=[scale] * 3, offsets=[offset] * 3
    )
    assert raster.inspect(plain).scales == (1.0,) * 3 and raster.inspect(plain).offsets == (0.0,) * 3
    given = raster.read(plain, scale=scale, offset=offset)
    assert given.scaling is not None and given.scaling.source == "option"
    assert (
        str(given.scaling)
        == f"plain.tif: reflectance = value x {scale:.6g} - {-offset:g} (given scale/offset)"
    )
    expected = raster.read(tagged).data
    np.testing.assert_array_equal(given.data, expected)
    exact = stored.astype(np.float64) * scale + offset
    np.testing.assert_allclose(given.data[:, 1:], exact[:, 1:], atol=3e-7)
    grid = fine_grid(tmp_path)
    for resampling in ("nearest", "bilinear"):
        np.testing.assert_array_equal(
            raster.read_on_grid(plain, grid, scale=scale, offset=offset, resampling=resampling),
            raster.read_on_grid(tagged, grid, resampling=resampling),
        )
    sample = raster.sample_values(plain, scale=scale, offset=offset)
    np.testing.assert_array_equal(sample.reflectance, raster.sample_values(tagged).reflectance)
    with pytest.raises(InputError, match=r"offset nan: must be a finite number"):
        raster.read(plain, scale=scale, offset=float("nan"))


# --------------------------------------------------------------------------------------------------
# GDAL masks and alpha bands: cloud fill is not data


def masked_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """int16 reflectance x 1e4 (3, H, W) whose 'cloud' pixels hold fill values, and the cloud (H, W)."""
    stored = np.rint(reflectance_scene(rng) * 1e4).astype(np.int16)
    cloud = np.zeros((HEIGHT, WIDTH), dtype=bool)
    cloud[3:6, 4:9] = True
    stored[:, cloud] = 9999  # what cloud fill looks like: plausible numbers
    return stored, cloud


@pytest.mark.parametrize("layout", ["internal mask", "external .msk", "mask and nodata", "alpha band"])
def test_masks_and_alpha_bands_make_pixels_invalid(
    tmp_path: Path, rng: np.random.Generator, layout: str
) -> None:
    stored, cloud = masked_scene(rng)
    path = tmp_path / "in.tif"
    invalid = np.broadcast_to(cloud, stored.shape).copy()
    if layout == "alpha band":
        alpha = np.where(cloud, 0, 255).astype(np.int16)[None]
        interp = [ColorInterp.gray, ColorInterp.undefined, ColorInterp.undefined, ColorInterp.alpha]
        write_file(path, np.concatenate([stored, alpha]), colorinterp=interp)
    elif layout == "mask and nodata":
        stored[:, 10, 12] = -9999
        invalid[:, 10, 12] = True
        write_file(path, stored, nodata=-9999, mask=~cloud)
    else:
        internal = layout == "internal mask"
        write_file(path, stored, mask=~cloud, env={"GDAL_TIFF_INTERNAL_MASK": internal})
        assert (tmp_path / "in.tif.msk").exists() != internal
    info = raster.inspect(path)
    assert info.count == 3 and info.shape == (3, HEIGHT, WIDTH) and info.has_mask
    data = raster.read(path).data
    assert data.shape == (3, HEIGHT, WIDTH)
    np.testing.assert_array_equal(np.isnan(data), invalid)
    np.testing.assert_allclose(data[~invalid], stored[~invalid] * 1e-4, rtol=1e-6)
    window = raster.read(path, window=raster.make_window(-2, 3, 8, 8)).data
    assert np.isnan(window[:, :2]).all()
    np.testing.assert_array_equal(window[:, 2:], data[:, 0:6, 3:11])
    grid = fine_grid(tmp_path)
    np.testing.assert_array_equal(raster.read_on_grid(path, grid, resampling="nearest"), upsampled(data))
    # interpolation: no fill value leaks into a valid pixel (another fill changes nothing beyond 1e-5 of
    # the difference); a window equals the crop of a whole read
    refilled = tmp_path / "refilled" / path.name
    refilled.parent.mkdir()
    with rasterio.open(path) as src:
        profile, values = src.profile, src.read()
        file_mask = src.dataset_mask()
    values[: stored.shape[0], cloud] = -5000
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(refilled, "w", **profile) as dst:
        dst.colorinterp = raster_colorinterp(path)
        dst.write(values)
        if layout != "alpha band":
            dst.write_mask(file_mask)
    for resampling in ("bilinear", "cubic", "lanczos", "average"):
        smooth = raster.read_on_grid(path, grid, resampling=resampling)
        other = raster.read_on_grid(refilled, grid, resampling=resampling)
        np.testing.assert_allclose(other, smooth, atol=(9999 + 5000) * 1e-4 * 1e-5, err_msg=resampling)
        assert np.isnan(smooth[:, 8:10, 10:16]).all() and np.isfinite(smooth[:, 0:4, 0:3]).all(), resampling
        window = raster.make_window(5, 7, 9, 11)
        part = raster.read_on_grid(path, grid, resampling=resampling, window=window)
        np.testing.assert_array_equal(part, smooth[:, 5:14, 7:18])
    sample = raster.sample_values(path)
    assert sample.n_masked == 3 * int(cloud.sum()) and sample.values.size == int((~invalid).sum())
    assert sample.values.max() < 9999
    if layout == "alpha band":
        with rasterio.open(path) as src:
            assert src.count == 4  # the file's fourth band is the alpha band, not data


def test_fully_masked_file_has_no_valid_pixel(tmp_path: Path, rng: np.random.Generator) -> None:
    stored, _ = masked_scene(rng)
    path = write_file(tmp_path / "in.tif", stored, mask=np.zeros((HEIGHT, WIDTH), bool))
    assert not raster.has_valid_pixel(path)
    assert raster.sample_values(path).values.size == 0


def test_masks_are_not_read_for_files_without_one(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For nodata-only files GDAL derives the mask from the values: reading it would decode twice."""
    path, _, invalid = hostile_file(tmp_path, rng, "uint16 65535")

    def no_mask_reads(*args: object, **kwargs: object) -> None:
        raise AssertionError("read_masks called on a file without a mask")

    monkeypatch.setattr(rasterio.io.DatasetReader, "read_masks", no_mask_reads)
    monkeypatch.setattr(rasterio.io.DatasetReader, "dataset_mask", no_mask_reads)
    assert not raster.inspect(path).has_mask
    np.testing.assert_array_equal(np.isnan(raster.read(path).data), invalid)
    raster.read(path, window=raster.make_window(-1, -1, 5, 5))
    raster.read_on_grid(path, fine_grid(tmp_path))
    raster.sample_values(path)
    assert raster.has_valid_pixel(path)


def test_per_band_masks(tmp_path: Path, rng: np.random.Generator) -> None:
    """GDAL per-band masks (here a VRT's <MaskBand> per band): each band's own pixels are no data."""
    stored, _ = masked_scene(rng)
    write_file(tmp_path / "data.tif", stored)
    masks = np.full(stored.shape, 255, np.uint8)
    masks[0, 1, 1] = masks[1, 2, 2] = masks[2, 3, 3] = 0
    write_file(tmp_path / "masks.tif", masks)
    with rasterio.open(tmp_path / "data.tif") as src:
        transform = ", ".join(repr(v) for v in src.transform.to_gdal())
        wkt = src.crs.to_wkt()
    bands = "".join(
        f'<VRTRasterBand dataType="Int16" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">'
        f"data.tif</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource><MaskBand>"
        f'<VRTRasterBand dataType="Byte"><SimpleSource><SourceFilename relativeToVRT="1">masks.tif'
        f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand></MaskBand>"
        "</VRTRasterBand>"
        for b in (1, 2, 3)
    )
    path = tmp_path / "in.vrt"
    path.write_text(
        f'<VRTDataset rasterXSize="{WIDTH}" rasterYSize="{HEIGHT}"><SRS>{wkt}</SRS>'
        f"<GeoTransform>{transform}</GeoTransform>{bands}</VRTDataset>"
    )
    assert raster.inspect(path).mask_kind == "per_band"
    data = raster.read(path).data
    assert np.argwhere(np.isnan(data)).tolist() == [[0, 1, 1], [1, 2, 2], [2, 3, 3]]
    warped = raster.read_on_grid(path, fine_grid(tmp_path), resampling="nearest")
    np.testing.assert_array_equal(warped, upsampled(data))
    assert raster.sample_values(path).n_masked == 3


def test_unusable_scale_tags_are_ignored(tmp_path: Path) -> None:
    stored = np.full((1, HEIGHT, WIDTH), 1000, np.int16)
    path = write_file(tmp_path / "in.tif", stored, scales=[0.0])
    assert raster.resolve_scaling(path).source == "auto"
    assert raster.read(path).data[0, 0, 0] == pytest.approx(0.1)


# --------------------------------------------------------------------------------------------------
# outputs: a nodata the dtype holds, never equal to a valid value, scale tags


@pytest.mark.parametrize("case", list(NODATA_CASES))
def test_predictions_from_any_nodata_write_back(tmp_path: Path, rng: np.random.Generator, case: str) -> None:
    """int16 and float32 outputs declare a nodata value they can hold (used to raise ValueError)."""
    path, _, invalid = hostile_file(tmp_path, rng, case)
    per_unit = NODATA_CASES[case][2]
    image = raster.read(path, scale=1.0 / per_unit if per_unit == 100.0 else None)
    prediction = image.data.copy()
    for dtype, expected_nodata in (("int16", -32768), ("float32", float("nan"))):
        info = raster.inspect(path)
        if dtype == "int16" and info.dtype == "int16" and info.nodata is not None:
            expected_nodata = int(info.nodata)  # the same dtype keeps its own nodata
        out = raster.write_like(tmp_path / f"out_{dtype}.tif", prediction, info, dtype=dtype)
        with rasterio.open(out) as src:
            assert src.dtypes[0] == dtype
            if invalid.any():
                np.testing.assert_equal(src.nodata, expected_nodata)
            elif info.nodata is None:
                assert src.nodata is None
        back = raster.read(out)
        np.testing.assert_array_equal(np.isnan(back.data), invalid)
        np.testing.assert_allclose(back.data[~invalid], prediction[~invalid], atol=0.5e-4 + 1e-7)


def test_alpha_band_is_not_written(tmp_path: Path, rng: np.random.Generator) -> None:
    stored, cloud = masked_scene(rng)
    alpha = np.where(cloud, 0, 255).astype(np.int16)[None]
    interp = [ColorInterp.gray, ColorInterp.undefined, ColorInterp.undefined, ColorInterp.alpha]
    path = write_file(tmp_path / "in.tif", np.concatenate([stored, alpha]), colorinterp=interp)
    image = raster.read(path)
    out = raster.write_like(tmp_path / "out.tif", image.data, image.info)
    with rasterio.open(out) as src:
        assert src.count == 3 and src.nodata == -32768
    np.testing.assert_array_equal(np.isnan(raster.read(out).data), np.isnan(image.data))


def test_int16_output_has_scale_tags_and_reads_back_the_same(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path, _, invalid = hostile_file(tmp_path, rng, "float32 -3.4e38 (R/terra, ENVI)")
    image = raster.read(path)
    prediction = image.data.copy()
    prediction[0, 0, 0] = -3.2768  # stores -32768, the nodata value: nudged to -32767
    prediction[0, 0, 1] = -9.0  # clipped to the int16 range, then off nodata too
    prediction[0, 0, 2] = 4.0  # clipped to 32767
    out = raster.write_like(tmp_path / "out.tif", prediction, image.info)  # used to raise ValueError
    with rasterio.open(out) as src:
        assert src.nodata == -32768 and src.scales == (1e-4,) * 3 and src.offsets == (0.0,) * 3
        stored = src.read()
    assert stored[0, 0, :3].tolist() == [-32767, -32767, 32767]
    assert (stored[invalid] == -32768).all() and (stored[~invalid] != -32768).all()
    back = raster.read(out, scale=1.0)  # the tags say 1e-4, and they win
    assert back.scaling is not None and back.scaling.source == "tags"
    np.testing.assert_array_equal(np.isnan(back.data), invalid)
    np.testing.assert_allclose(back.data[:, 1:], prediction[:, 1:], atol=0.5e-4 + 1e-7)


def test_valid_values_are_nudged_off_a_copied_nodata(tmp_path: Path, rng: np.random.Generator) -> None:
    path, _, invalid = hostile_file(tmp_path, rng, "int16 0")  # int16 nodata 0: kept by int16 outputs
    info = raster.inspect(path)
    prediction = raster.read(path).data
    prediction[2, 0, 0] = 0.0  # dark water: valid, but stored 0 = nodata; becomes 1 (reflectance 1e-4)
    out = raster.write_like(tmp_path / "out.tif", prediction, info)
    with rasterio.open(out) as src:
        assert src.nodata == 0 and src.read(3)[0, 0] == 1
    back = raster.read(out).data
    np.testing.assert_array_equal(np.isnan(back), invalid)
    floats = raster.write_like(tmp_path / "f.tif", prediction, info, dtype="float32", nodata=0.0)
    with rasterio.open(floats) as src:
        assert src.nodata == 0.0 and 0 < src.read(3)[0, 0] < 1e-30  # the next float32 after 0
        assert (src.read()[invalid] == 0).all()


def test_callers_nodata_must_fit_the_dtype(tmp_path: Path, rng: np.random.Generator) -> None:
    path, _, _ = hostile_file(tmp_path, rng, "uint16 65535")
    info = raster.inspect(path)
    prediction = raster.read(path).data
    with pytest.raises(InputError, match="nodata 65535: a int16 output cannot store it"):
        raster.write_like(tmp_path / "out.tif", prediction, info, nodata=65535)
    out = raster.write_like(tmp_path / "out.tif", prediction, info, nodata=-9999)
    assert raster.inspect(out).nodata == -9999
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif"]


def test_row_writer_and_joined_parts_from_a_float_nan_reference(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path, _, invalid = hostile_file(tmp_path, rng, "float32 NaN (GDAL's usual)")
    reference = raster.inspect(path)
    prediction = raster.read(path).data
    with raster.row_writer(tmp_path / "whole.tif", reference, count=3) as write:
        write(0, prediction[:, :7])
        write(7, prediction[:, 7:])
    parts = []
    for index, (first, stop) in enumerate([(0, 5), (5, HEIGHT)]):
        part = tmp_path / f"part{index}.tif"
        with raster.row_writer(part, reference, count=3, rows=(first, stop)) as write:
            write(first, prediction[:, first:stop])
        parts.append((part, (first, stop)))
    joined = raster.join_row_parts(parts, tmp_path / "joined.tif", reference, cog=True)
    for out in (tmp_path / "whole.tif", joined):
        with rasterio.open(out) as src:
            assert src.nodata == -32768 and src.scales == (1e-4,) * 3
        back = raster.read(out).data
        np.testing.assert_array_equal(np.isnan(back), invalid)
        np.testing.assert_allclose(back[~invalid], prediction[~invalid], atol=0.5e-4 + 1e-7)


# --------------------------------------------------------------------------------------------------
# writes that fail: one-line errors, nothing left behind


def _write_big_under_size_limit(folder: str, limit: int, layout: str, report: int) -> None:
    """Child process: write a GeoTIFF larger than the file size limit; on the expected error, write its
    message to the file descriptor ``report`` and exit 3 (GDAL's own messages go to stderr)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so the write gets EFBIG instead of a core dump
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    rng = np.random.default_rng(0)
    reference = raster.inspect(Path(folder) / "ref.tif")
    prediction = rng.uniform(0, 1, size=(2, 512, 512)).astype(np.float32)  # incompressible
    try:
        if layout == "write_like":
            raster.write_like(Path(folder) / "out.tif", prediction, reference)
        else:
            with raster.row_writer(
                Path(folder) / "out.tif", reference, count=2, cog=layout == "cog"
            ) as write:
                for top in range(0, 512, 64):
                    write(top, prediction[:, top : top + 64])
    except OutputError as exc:
        os.write(report, str(exc).encode())
        os._exit(3)
    os._exit(0)


@pytest.mark.parametrize("layout", ["write_like", "row_writer", "cog"])
def test_file_size_limit_is_a_one_line_error_and_leaves_nothing(tmp_path: Path, layout: str) -> None:
    write_file(tmp_path / "ref.tif", np.zeros((2, 512, 512), np.int16))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        _write_big_under_size_limit(str(tmp_path), 64 * 1024, layout, write_end)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3, message
    assert message.startswith(f"{tmp_path / 'out.tif'}: file too large") and "\n" not in message
    assert "ulimit -f: 65536 bytes" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.tif"]


def test_check_writable_refuses_folders_long_names_and_other_suffixes(tmp_path: Path) -> None:
    (tmp_path / "out.tif").mkdir()
    with pytest.raises(InputError, match=r"out\.tif: is a folder; give a file name"):
        raster.check_writable(tmp_path / "out.tif", overwrite=True)
    with pytest.raises(InputError, match=r"file name too long for the filesystem \(304 bytes; at most 255\)"):
        raster.check_writable(tmp_path / ("x" * 300 + ".tif"), overwrite=False)
    with pytest.raises(InputError, match=r"out\.png: the output must be a GeoTIFF named \*\.tif or \*\.tiff"):
        raster.check_writable(tmp_path / "out.png", overwrite=False, suffixes=(".tif", ".tiff"))
    assert raster.check_writable(tmp_path / "OUT.TIFF", overwrite=False, suffixes=(".tif", ".tiff"))
    assert raster.check_writable(tmp_path / "out.png", overwrite=False)  # any suffix by default


def test_output_written_meanwhile_by_another_run_is_kept(tmp_path: Path, rng: np.random.Generator) -> None:
    path, _, _ = hostile_file(tmp_path, rng, "int16 none")
    reference = raster.inspect(path)
    prediction = raster.read(path).data
    out = tmp_path / "out.tif"
    with (
        pytest.raises(OutputExistsError, match="another run wrote it meanwhile"),
        raster.row_writer(out, reference, count=3) as write,
    ):
        write(0, prediction)
        raster.write_like(out, prediction * 0 + 0.5, reference)  # the other run finishes first
    assert np.allclose(raster.read(out).data, 0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif"]
