"""CaseReader: masks, coarse images at native resolution in another CRS, windows, value checks.

Acceptance tests of issue 7: a cloud-masked block changes no metric on the other pixels and is nodata
in every method's prediction; a MODIS-like coarse image at 500 m in another CRS gives a prediction
close to the one from the pre-resampled input (tolerances measured and stated below).
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_bounds

from stfusion import fusion, raster, scenes, workflows
from stfusion.baselines import coarse_delta as coarse_delta_method
from stfusion.checkpoint import load as load_checkpoint
from stfusion.cli import cli
from stfusion.errors import InputError
from stfusion.inputs import CaseReader, ReadOptions, check_values, quality_flags
from stfusion.metrics import compute_metrics
from stfusion.raster import footprint_fraction
from stfusion.sample import DATASETS, SAMPLE_ROOT
from stfusion.tiling import Window
from tests.conftest import random_scene, write_tif, write_tiny_checkpoint

SAMPLE_CASE = scenes.discover(SAMPLE_ROOT).split("test")[0]  # 2001-10-17 -> 2001-11-02, 250 x 250 x 6


def crop_sample(folder: Path, *, row: int = 60, col: int = 60, size: int = 96) -> scenes.FusionCase:
    """The sample's test case cropped to ``size`` px (georeferencing kept), in a pair folder."""
    folder.mkdir(parents=True)
    for path in SAMPLE_CASE.paths().values():
        with rasterio.open(path) as src:
            window = rasterio.windows.Window(col, row, size, size)
            profile = dict(src.profile)
            profile.update(height=size, width=size, transform=src.window_transform(window))
            profile.pop("blockxsize", None), profile.pop("blockysize", None)
            profile["tiled"] = False
            with rasterio.open(folder / path.name, "w", **profile) as dst:
                dst.write(src.read(window=window))
                dst.descriptions = src.descriptions
    case, _ = scenes.read_pair_folder(folder)
    return case


def to_native(path: Path, out: Path, crs: str, *, factor: int = 10, shift: int = 0) -> Path:
    """A MODIS-like version of a coarse image on the fine grid: pixels ``factor`` times larger, in
    ``crs``, block averages (GDAL ``average``), int16 with nodata -32768, footprint padded by one pixel.
    ``shift`` moves the georeferencing east by that many coarse pixels (a deliberate misregistration).
    """
    with rasterio.open(path) as src:
        data = src.read().astype(np.float32)
        default, _, _ = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        res = (abs(default.a) * factor, abs(default.e) * factor)
        left, bottom, right, top = transform_bounds(src.crs, crs, *src.bounds, densify_pts=21)
        width = int(np.ceil((right - left) / res[0])) + 2
        height = int(np.ceil((top - bottom) / res[1])) + 2
        transform = from_origin(left - res[0], top + res[1], *res)
        native = np.full((src.count, height, width), np.nan, np.float32)
        reproject(
            data,
            native,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs=crs,
            resampling=Resampling.average,
            dst_nodata=np.nan,
        )
        names = src.descriptions
    stored = np.where(np.isfinite(native), np.rint(native), -32768).astype(np.int16)
    written = from_origin(left - res[0] + shift * res[0], top + res[1], *res)
    profile = {
        "driver": "GTiff",
        "count": stored.shape[0],
        "height": height,
        "width": width,
        "dtype": "int16",
        "crs": crs,
        "transform": written,
        "nodata": -32768,
    }
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(stored)
        dst.descriptions = names
    return out


def native_case(tmp_path: Path, crs: str, *, shift: int = 0) -> scenes.FusionCase:
    c1 = to_native(SAMPLE_CASE.coarse_t1, tmp_path / "MOD09GA_A2001290_native.tif", crs, shift=shift)
    c2 = to_native(SAMPLE_CASE.coarse_t2, tmp_path / "MOD09GA_A2001306_native.tif", crs, shift=shift)
    return scenes.explicit_case(
        coarse_t1=c1, fine_t1=SAMPLE_CASE.fine_t1, coarse_t2=c2, fine_t2=SAMPLE_CASE.fine_t2
    )


def crop(whole: np.ndarray, window: Window) -> np.ndarray:
    """The window of a (C, H, W) or (H, W) array, NaN (or True for bool) outside it."""
    height, width = whole.shape[-2:]
    fill = True if whole.dtype == bool else np.nan
    out = np.full((*whole.shape[:-2], window.height, window.width), fill, dtype=whole.dtype)
    r0, c0 = max(window.row, 0), max(window.col, 0)
    r1, c1 = min(window.row + window.height, height), min(window.col + window.width, width)
    if r1 > r0 and c1 > c0:
        out[..., r0 - window.row : r1 - window.row, c0 - window.col : c1 - window.col] = whole[
            ..., r0:r1, c0:c1
        ]
    return out


WINDOWS = [
    Window(0, 0, 250, 250),
    Window(17, 33, 64, 80),
    Window(-20, -7, 50, 40),  # over the top-left corner
    Window(230, 240, 40, 30),  # over the bottom-right corner
    Window(100, 249, 1, 1),
    Window(300, 300, 8, 8),  # entirely outside
]


# --------------------------------------------------------------------------------------------------
# coarse images at native resolution, in another CRS


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:32756"])
def test_native_coarse_is_reprojected_close_to_the_pre_resampled_input(
    tmp_path: Path, crs: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 7 acceptance: MODIS-like 500 m coarse images in another CRS are accepted.

    Measured on the sample (250 x 250 x 6, 50 m, EPSG:32755) with the coarse images block-averaged to
    ~500 m in EPSG:4326 / EPSG:32756 and read back onto the fine grid with bilinear resampling:
    coarse t1 differs from the pre-resampled file by MAE 0.0073 / 0.0072 reflectance (RMSE 0.012); the
    coarse-delta prediction differs from the one made from the pre-resampled inputs by MAE 0.0091 /
    0.0090 (RMSE 0.016), and its RMSE against the truth is 0.0374 / 0.0375 instead of 0.0392.
    Tolerances: MAE 0.010 (coarse), 0.012 (prediction), RMSE-vs-truth change 0.003. They can fail: the
    same images misregistered by one coarse pixel give MAE 0.0156 (coarse) and 0.0158 (prediction),
    checked below.
    """
    case = native_case(tmp_path, crs)
    with caplog.at_level(logging.INFO, logger="stfusion.inputs"):
        native = CaseReader(case)
    assert native.reprojected == ("coarse_t1", "coarse_t2")
    assert "reprojected onto fine t1's grid (250x250, EPSG:32755) with bilinear" in caplog.text
    pre = CaseReader(SAMPLE_CASE)
    assert pre.reprojected == ()
    coarse_t1 = native.read("coarse_t1")
    assert coarse_t1.shape == (6, 250, 250) and np.isfinite(coarse_t1).all()
    assert np.abs(coarse_t1 - pre.read("coarse_t1")).mean() < 0.010

    coarse_delta = coarse_delta_method
    fine_t1, truth = pre.read("fine_t1"), pre.read("fine_t2")
    from_pre = coarse_delta(pre.read("coarse_t1"), fine_t1, pre.read("coarse_t2"))
    from_native = coarse_delta(coarse_t1, fine_t1, native.read("coarse_t2"))
    assert np.abs(from_native - from_pre).mean() < 0.012
    rmse_pre = compute_metrics(from_pre, truth).mean["rmse"]
    rmse_native = compute_metrics(from_native, truth).mean["rmse"]
    assert rmse_pre is not None and rmse_native is not None
    assert abs(rmse_native - rmse_pre) < 0.003

    # negative control: one coarse pixel of misregistration breaks both tolerances
    (tmp_path / "shifted").mkdir()
    shifted = CaseReader(native_case(tmp_path / "shifted", crs, shift=1))
    shifted_c1 = shifted.read("coarse_t1")
    assert np.nanmean(np.abs(shifted_c1 - pre.read("coarse_t1"))) > 0.010
    shifted_prediction = coarse_delta(shifted_c1, fine_t1, shifted.read("coarse_t2"))
    assert np.nanmean(np.abs(shifted_prediction - from_pre)) > 0.012


def test_windows_equal_crops_of_the_whole_scene(tmp_path: Path) -> None:
    """Streaming relies on it: every window read equals the same crop of a whole read (NaN outside),
    for images on the grid, reprojected coarse images, masks on the fine grid and on the coarse grid."""
    case = native_case(tmp_path, "EPSG:4326")
    fine_mask = np.zeros((250, 250), np.uint8)
    fine_mask[40:90, 100:180] = 1
    with rasterio.open(case.coarse_t2) as src:
        coarse_mask = np.zeros(src.shape, np.uint8)
        coarse_mask[5:8, 10:12] = 3
        mask_profile = {"crs": src.crs, "transform": src.transform}
    masks = {
        "fine_t1": write_tif(tmp_path / "fine_mask.tif", fine_mask, nodata=0),
        "coarse_t2": write_tif(tmp_path / "coarse_mask.tif", coarse_mask, **mask_profile),
    }
    case = scenes.explicit_case(**{k: v for k, v in case.paths().items()}, masks=masks)
    for resampling in ("bilinear", "cubic", "nearest"):
        reader = CaseReader(case, options=ReadOptions(resampling=resampling))
        wholes = {role: reader.read(role) for role in reader.roles}
        assert np.isnan(wholes["fine_t1"][:, 40:90, 100:180]).all()
        assert np.isfinite(wholes["fine_t1"]).all(axis=0).sum() == 250 * 250 - 50 * 80
        masked = np.isnan(wholes["coarse_t2"]).all(axis=0)
        assert 0 < masked.sum() < 0.2 * 250 * 250
        for window in WINDOWS:
            for role, whole in wholes.items():
                np.testing.assert_array_equal(reader.read(role, window), crop(whole, window), err_msg=role)
            np.testing.assert_array_equal(
                reader.quality(window),
                quality_flags({r: crop(wholes[r], window) for r in ("coarse_t1", "fine_t1", "coarse_t2")}),
            )


def test_mask_on_the_coarse_grid_covers_its_footprint(tmp_path: Path) -> None:
    """A masked coarse pixel invalidates every fine pixel it contributes to, and no far pixel."""
    case = native_case(tmp_path, "EPSG:32756")
    with rasterio.open(case.coarse_t2) as src:
        mask = np.zeros(src.shape, np.uint8)
        mask[12, 14] = 1
        profile = {"crs": src.crs, "transform": src.transform}
        bounds = src.window_bounds(rasterio.windows.Window(14, 12, 1, 1))
    mask_path = write_tif(tmp_path / "qa.tif", mask, **profile)
    masked_case = scenes.explicit_case(**dict(case.paths()), masks={"coarse_t2": mask_path})
    # fine pixels whose centre lies inside the masked coarse pixel (transformed to the fine CRS)
    left, bottom, right, top = transform_bounds("EPSG:32756", "EPSG:32755", *bounds)
    reference = CaseReader(case).reference
    a, _, c, _, e, f = reference.transform
    cols = (c + (np.arange(250) + 0.5) * a - left) / (right - left)
    rows = (f + (np.arange(250) + 0.5) * e - bottom) / (top - bottom)
    inside = ((rows > 0.1) & (rows < 0.9))[:, None] & ((cols > 0.1) & (cols < 0.9))[None, :]
    far = ((rows < -1.6) | (rows > 2.6))[:, None] | ((cols < -1.6) | (cols > 2.6))[None, :]
    assert inside.sum() > 50
    for resampling in ("nearest", "bilinear"):
        reader = CaseReader(masked_case, options=ReadOptions(resampling=resampling))
        invalid = np.isnan(reader.read("coarse_t2")).all(axis=0)
        assert invalid[inside].all(), resampling
        assert not invalid[far].any(), resampling
        assert np.isfinite(reader.read("coarse_t1")).all()  # the mask is coarse t2's only


def test_coarse_footprint_errors(tmp_path: Path) -> None:
    case = native_case(tmp_path, "EPSG:4326")
    assert footprint_fraction(raster.inspect(case.coarse_t1), raster.inspect(case.fine_t1)) == 1.0
    with rasterio.open(case.coarse_t1, "r+") as dst:
        t = dst.transform
        dst.transform = from_origin(t.c + 0.1, t.f, t.a, -t.e)  # ~9 km east: 32% of the grid left
    with pytest.raises(
        InputError,
        match=r"MOD09GA_A2001290_native.tif: footprint \(CRS EPSG:4326\) covers 32% of the grid of "
        r"L71093084_08420011017_HRF_modtran_surf_ref_agd66.tif, less than the 50% required",
    ):
        CaseReader(case)
    reader = CaseReader(case, options=ReadOptions(min_overlap=0.3))
    outside = np.isnan(reader.read("coarse_t1")).all(axis=0)
    assert 0.6 < outside.mean() < 0.75  # no data where the coarse image does not reach: nodata there
    with pytest.raises(InputError, match="resampling 'sinc'"):
        ReadOptions(resampling="sinc")
    with pytest.raises(InputError, match=r"within 0\.\.1"):
        ReadOptions(min_overlap=1.5)


# --------------------------------------------------------------------------------------------------
# cloud masks: excluded from metrics, nodata in predictions


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    return write_tiny_checkpoint(tmp_path / "tiny.ckpt", bands=6, coarse_factor=1)


def _alter_block(path: Path, rows: slice, cols: slice, value: int) -> None:
    with rasterio.open(path, "r+") as dst:
        data = dst.read()
        data[:, rows, cols] = value
        dst.write(data)


def test_cloud_mask_changes_no_metric_and_is_nodata(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Issue 7 acceptance: mask a block of fine t1 and of the truth (sidecar ``<stem>_mask.tif`` files,
    declaring nodata 0 as cloud masks often do). Altering the masked values changes no metric of any
    method (persistence, coarse-delta, STARFM, FSDAF, MLFF-GAN): metrics use the other pixels only, and
    no method lets a masked value leak into its neighbours. Every prediction is nodata in the block.
    """
    case = crop_sample(tmp_path / "data" / "2001_290_1017-2001_306_1102")
    rows, cols = slice(30, 60), slice(40, 70)
    block = np.zeros((96, 96), np.uint8)
    block[rows, cols] = 1
    for image in (case.fine_t1, case.fine_t2):
        assert image is not None
        with rasterio.open(image) as src:
            write_tif(image.with_name(f"{image.stem}_mask.tif"), block, nodata=0, transform=src.transform)
    case, _ = scenes.read_pair_folder(case.fine_t1.parent)
    assert set(case.masks) == {"fine_t1", "fine_t2"}
    predictors = {
        name: fusion.get(name).preparer({"scale_factor": 10} if name == "fsdaf" else {})
        for name in ("persistence", "coarse-delta", "starfm", "fsdaf")
    }
    predictors["mlffgan"] = fusion.get("mlffgan").preparer(checkpoint=load_checkpoint(tiny_checkpoint))
    unmasked = scenes.explicit_case(**dict(case.paths()), sidecar_masks=False)
    # the same files named one by one (as `stfusion predict` does) take their sidecar masks
    assert scenes.explicit_case(**dict(case.paths())).masks == case.masks
    control = {"starfm": predictors["starfm"]}
    first = workflows.run_methods([case], predictors, out_dir=tmp_path / "first", ratio=0.1)
    control_first = workflows.run_methods([unmasked], control, out_dir=tmp_path / "c1")
    control_first_prediction = control_first[unmasked.name]["starfm"].prediction
    assert case.fine_t2 is not None
    _alter_block(case.fine_t1, rows, cols, 9000)
    _alter_block(case.fine_t2, rows, cols, -500)
    second = workflows.run_methods([case], predictors, out_dir=tmp_path / "second", ratio=0.1)
    control_second = workflows.run_methods([unmasked], control, out_dir=tmp_path / "c2")
    control_second_prediction = control_second[unmasked.name]["starfm"].prediction
    for method in predictors:
        before, after = first[case.name][method], second[case.name][method]
        assert before.metrics is not None and after.metrics is not None
        assert before.metrics.to_dict() == after.metrics.to_dict(), method
        np.testing.assert_array_equal(before.prediction, after.prediction, err_msg=method)
        assert np.isnan(after.prediction[:, rows, cols]).all(), method
        assert after.output is not None
        with rasterio.open(after.output) as src:
            assert (src.read()[:, rows, cols] == src.nodata).all()
    # the control (the test can fail): unmasked, the altered block leaks into STARFM's prediction
    # of the pixels around it
    outside = np.ones((96, 96), bool)
    outside[rows, cols] = False
    assert not np.array_equal(control_first_prediction[:, outside], control_second_prediction[:, outside])


def test_quality_flags() -> None:
    image = np.ones((2, 3, 4), np.float32)
    c1, f1, c2 = image.copy(), image.copy(), image.copy()
    f1[0, 0, 0] = np.nan
    c1[1, 0, 0] = np.nan
    c2[:, 2, 3] = np.nan
    flags = quality_flags({"coarse_t1": c1, "fine_t1": f1, "coarse_t2": c2})
    assert flags.dtype == np.uint8
    assert flags[0, 0] == 1 + 2 and flags[2, 3] == 4 and flags.sum() == 7


# --------------------------------------------------------------------------------------------------
# value checks


def test_value_checks_warn_and_refuse(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    good = write_tif(tmp_path / "good.tif", random_scene(rng))
    with caplog.at_level(logging.WARNING):
        check_values(good)
    assert not caplog.records
    dn = write_tif(tmp_path / "dn.tif", (random_scene(rng) * 10).astype(np.uint16))
    with caplog.at_level(logging.WARNING):
        check_values(dn)
    assert "dn.tif: values look like digital numbers" in caplog.text and "--fine-scale" in caplog.text
    caplog.clear()
    floats = write_tif(tmp_path / "float.tif", random_scene(rng).astype(np.float32) * 1e-4)
    with caplog.at_level(logging.WARNING):
        sample = check_values(floats)  # reflectance floats: automatic scale 1, nothing to warn about
        assert not caplog.records and sample.scaling is not None and sample.scaling.scale == 1.0
        check_values(floats, scale=1e-4)
        assert "every value is below reflectance 0.002" in caplog.text and "--fine-scale 1" in caplog.text
    with_nan = random_scene(rng).astype(np.float32)
    with_nan[0, 0, :3] = [np.nan, np.inf, -np.inf]
    with caplog.at_level(logging.WARNING):
        check_values(write_tif(tmp_path / "nan.tif", with_nan))
    assert "nan.tif: 3 of 1920 sampled values are NaN/inf" in caplog.text
    empty = write_tif(tmp_path / "empty.tif", np.full((2, 5, 6), -9999, np.int16), nodata=-9999)
    with pytest.raises(InputError, match=r"empty.tif: no valid pixel .* nodata = -9999"):
        check_values(empty)


# --------------------------------------------------------------------------------------------------
# fill values nobody declared (float32's extremes, ArcGIS's usual fill) and offsets of untagged files

FILLS = {"-3.4028235e38": -3.4028235e38, "+3.4e38": 3.4e38}


def _fill_case(folder: Path, fill: float) -> tuple[dict[str, Path], np.ndarray]:
    """A float32 reflectance case without nodata tags whose fine t1 (a block) and coarse t2 (a pixel)
    hold ``fill`` (NaN or a fill value): the input files by role, and the (H, W) pixels filled."""
    rng = np.random.default_rng(5)
    images = {
        role: (random_scene(rng) * 1e-4).astype(np.float32) for role in ("fine_t1", "coarse_t1", "coarse_t2")
    }
    where = np.zeros((20, 24), bool)
    images["fine_t1"][:, 4:8, 6:11] = np.float32(fill)
    where[4:8, 6:11] = True
    images["coarse_t2"][:, 15, 3] = np.float32(fill)
    where[15, 3] = True
    return {role: write_tif(folder / f"{role}.tif", image) for role, image in images.items()}, where


def _predict(files: dict[str, Path], out: Path, *options: str) -> tuple[int, str]:
    args = ["predict", *options, "--out", str(out)]
    for role, path in files.items():
        args += [f"--{role.replace('_', '-')}", str(path)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. the overflow of fill values in a division
        result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def test_undeclared_fill_values_warn_once_per_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = np.full((2, 10, 12), 0.2, np.float32)
    image[:, 0, :5] = np.float32(-3.4028235e38)
    image[1, 1, 1] = np.nan
    path = write_tif(tmp_path / "arcgis.tif", image)
    with caplog.at_level(logging.WARNING):
        sample = check_values(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: 11 of 240 sampled values are NaN/inf or fill values (|value| >= 1e30) that are not the "
        "declared nodata; they are treated as invalid"
    ]
    assert sample.values.size == 240 - 11 and sample.scaling is not None and sample.scaling.scale == 1.0
    only_fill = write_tif(tmp_path / "only.tif", np.full((1, 4, 4), 3.4e38, np.float32))
    with pytest.raises(
        InputError, match=r"only.tif: no valid pixel \(every value is nodata, masked, NaN/inf or a fill"
    ):
        check_values(only_fill)


@pytest.mark.parametrize("method", ["coarse-delta", "starfm"])
@pytest.mark.parametrize("fill", list(FILLS.values()), ids=list(FILLS))
def test_predictions_from_undeclared_fill_values_equal_those_from_nan(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, method: str, fill: float
) -> None:
    """The user's report: with -3.4028235e38 fill and no nodata tag, `predict --method starfm
    --fine-scale 1` wrote -3.2767 (int16 clipped) as valid there, with an overflow warning; the fill
    is now invalid like NaN: nodata exactly there, the same prediction as from NaN."""
    filled, where = _fill_case(tmp_path / "fill", fill)
    with_nan, _ = _fill_case(tmp_path / "nan", np.nan)
    options = ("--method", method, "--fine-scale", "1", "--dtype", "float32")
    with caplog.at_level(logging.WARNING):
        code, output = _predict(filled, tmp_path / "fill.tif", *options)
    assert code == 0, output
    for role, count in (("fine_t1", 4 * 20), ("coarse_t2", 4)):
        assert (
            f"{filled[role]}: {count} of 1920 sampled values are NaN/inf or fill values (|value| >= 1e30)"
            in caplog.text
        )
    code, output = _predict(with_nan, tmp_path / "nan.tif", *options)
    assert code == 0, output
    with rasterio.open(tmp_path / "fill.tif") as a, rasterio.open(tmp_path / "nan.tif") as b:
        predicted, expected = a.read(), b.read()
        assert a.nodata is not None and np.isnan(a.nodata)
    np.testing.assert_array_equal(np.isnan(predicted), np.broadcast_to(where, predicted.shape))
    np.testing.assert_array_equal(predicted, expected)
    assert np.abs(predicted[:, ~where]).max() < 1.0
    # int16 output (the default): nodata there too, never the clipped -32767
    code, output = _predict(filled, tmp_path / "fill16.tif", "--method", method, "--fine-scale", "1")
    assert code == 0, output
    with rasterio.open(tmp_path / "fill16.tif") as src:
        stored = src.read()
        np.testing.assert_array_equal(stored == src.nodata, np.broadcast_to(where, stored.shape))
        assert stored[:, ~where].min() > 0


LANDSAT_C2_L2 = (2.75e-5, -0.2)  # USGS Collection 2 Level-2 surface reflectance: DN x 2.75e-5 - 0.2


def _landsat_case(folder: Path, *, tagged: bool) -> dict[str, Path]:
    """Fine t1 as Landsat C2 L2 uint16 digital numbers (nodata 0), with or without their GDAL
    scale/offset tags; coarse images int16 reflectance x 10000 (automatic scale)."""
    rng = np.random.default_rng(11)
    scale, offset = LANDSAT_C2_L2
    dn = np.rint((random_scene(rng) * 1e-4 - offset) / scale).astype(np.uint16)
    dn[:, 0, 0] = 0
    folder.mkdir(parents=True)
    fine = write_tif(folder / "LC08_SR.tif", dn, nodata=0)
    if tagged:
        with rasterio.open(fine, "r+") as dst:
            dst.scales = [scale] * dn.shape[0]
            dst.offsets = [offset] * dn.shape[0]
    coarse = {
        role: write_tif(folder / f"{role}.tif", random_scene(rng)) for role in ("coarse_t1", "coarse_t2")
    }
    return {"fine_t1": fine, **coarse}


def test_offsets_read_untagged_landsat_like_its_tags(tmp_path: Path) -> None:
    scale, offset = LANDSAT_C2_L2
    tagged = _landsat_case(tmp_path / "tagged", tagged=True)
    plain = _landsat_case(tmp_path / "plain", tagged=False)
    assert raster.resolve_scaling(plain["fine_t1"]).source == "auto"
    options = ReadOptions(fine_scale=scale, fine_offset=offset)
    assert options.offset_for("fine_t1") == offset and options.offset_for("coarse_t2") is None
    given = CaseReader(scenes.explicit_case(**plain), options=options)
    tags = CaseReader(scenes.explicit_case(**tagged))
    for role in given.roles:
        np.testing.assert_array_equal(given.read(role), tags.read(role), err_msg=role)
    window = Window(-3, 5, 10, 12)
    np.testing.assert_array_equal(given.read("fine_t1", window), tags.read("fine_t1", window))
    reflectance = given.read("fine_t1")
    assert np.isnan(reflectance[:, 0, 0]).all() and 0.1 < np.nanmedian(reflectance) < 0.35
    # a training configuration carries them into its reads
    from stfusion.train import TrainConfig

    config = TrainConfig.from_dict({"save_dir": "run", "fine_scale": scale, "fine_offset": offset})
    assert config.read_options() == options
    for bad, message in [
        ({"fine_scale": scale, "fine_offset": float("nan")}, "fine_offset: expected a finite number"),
        ({"coarse_scale": 1e-4, "coarse_offset": "x"}, "coarse_offset: expected a finite number"),
        ({"fine_offset": -0.2}, "fine_offset: -0.2 needs fine_scale too"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_dict({"save_dir": "run", **bad})


def test_read_options_refuse_bad_offsets_and_take_the_per_image_ones_first() -> None:
    from stfusion.cli.options import read_options

    with pytest.raises(InputError, match="fine offset nan: must be a finite number"):
        ReadOptions(fine_scale=1e-4, fine_offset=float("nan"))
    with pytest.raises(InputError, match="coarse offset inf: must be a finite number"):
        ReadOptions(coarse_scale=1e-4, coarse_offset=float("inf"))
    with pytest.raises(
        InputError, match=r"fine offset -0\.2 \(--offset or --fine-offset\) needs a fine scale"
    ):
        ReadOptions(fine_offset=-0.2)
    options = read_options(scale=1e-4, offset=-0.1, fine_scale=2.75e-5, fine_offset=-0.2)
    assert (options.fine_scale, options.fine_offset) == (2.75e-5, -0.2)
    assert (options.coarse_scale, options.coarse_offset) == (1e-4, -0.1)
    assert read_options(scale=1e-4, coarse_offset=0.0).coarse_offset == 0.0


def test_offset_options_reach_the_reads_of_predict(tmp_path: Path) -> None:
    """`predict --fine-scale 2.75e-5 --fine-offset -0.2` on an untagged Landsat C2 L2 file writes what
    the same file with its scale/offset tags gives; --fine-offset wins over --offset, and bad offsets
    are one-line usage errors before any work."""
    tagged = _landsat_case(tmp_path / "tagged", tagged=True)
    plain = _landsat_case(tmp_path / "plain", tagged=False)
    for method in ("coarse-delta", "starfm"):
        code, output = _predict(tagged, tmp_path / f"{method}-tags.tif", "--method", method)
        assert code == 0, output
        runs = {
            "fine": ("--fine-scale", "2.75e-5", "--fine-offset", "-0.2"),
            "precedence": (
                "--scale",
                "2.75e-5",
                "--offset",
                "-0.2",
                "--coarse-scale",
                "1e-4",
                "--coarse-offset",
                "0",
            ),
        }
        for name, options in runs.items():
            out = tmp_path / f"{method}-{name}.tif"
            code, output = _predict(plain, out, "--method", method, *options)
            assert code == 0, output
            with rasterio.open(out) as a, rasterio.open(tmp_path / f"{method}-tags.tif") as b:
                np.testing.assert_array_equal(a.read(), b.read(), err_msg=f"{method} {name}")
    refused = {
        ("--fine-scale", "2.75e-5", "--fine-offset", "nan"): "fine offset nan: must be a finite number",
        ("--fine-offset", "-0.2"): "fine offset -0.2 (--offset or --fine-offset) needs a fine scale",
        (
            "--fine-scale",
            "2.75e-5",
            "--offset",
            "-0.2",
        ): "coarse offset -0.2 (--offset or --coarse-offset) needs",
        ("--fine-scale", "2.75e-5", "--fine-offset", "abc"): "'abc' is not a valid float",
    }
    for options, message in refused.items():
        out = tmp_path / "refused.tif"
        code, output = _predict(plain, out, "--method", "coarse-delta", *options)
        errors = [line for line in output.splitlines() if line.startswith("Error:")]
        assert code == 2 and "Traceback" not in output, output
        assert len(errors) == 1 and message in errors[0], output
        assert not out.exists()


def test_all_nodata_check_is_exact_on_large_rasters(tmp_path: Path) -> None:
    """The sample is decimated on large rasters; a lone valid pixel it misses is still found."""
    data = np.full((1, 700, 700), -9999, np.int16)
    path = write_tif(tmp_path / "big.tif", data, nodata=-9999)
    with pytest.raises(InputError, match="no valid pixel"):
        check_values(path)
    data[0, 351, 351] = 1200
    write_tif(path, data, nodata=-9999)
    sample = check_values(path)
    assert not sample.complete and sample.values.size == 0


def test_predict_cli_streams_native_coarse_images(tmp_path: Path) -> None:
    """`stfusion predict` reads tiles as windows through CaseReader: with reprojected coarse images the
    written prediction equals (to int16 rounding) coarse-delta on whole-scene reads."""
    from click.testing import CliRunner

    from stfusion.cli import cli

    case = native_case(tmp_path, "EPSG:4326")
    out = tmp_path / "pred.tif"
    args = ["predict", "--method", "coarse-delta", "--tile", "64", "96", "--overlap", "8", "--out", str(out)]
    for role in ("fine_t1", "coarse_t1", "coarse_t2"):
        args += [f"--{role.replace('_', '-')}", str(case.paths()[role])]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"reprojecting {case.coarse_t1}, {case.coarse_t2} onto the grid of {case.fine_t1}" in result.output
    reader = CaseReader(case)
    expected = coarse_delta_method(*(reader.read(r) for r in ("coarse_t1", "fine_t1", "coarse_t2")))
    written = raster.read(out).data
    np.testing.assert_allclose(written, expected, rtol=0, atol=0.51e-4)


def test_coarse_bands_in_mod09ga_order_give_the_same_prediction(tmp_path: Path) -> None:
    """A 7-band MOD09GA-ordered coarse file read with --coarse-bands 3,4,1,2,6,7 (to match Landsat
    blue, green, red, nir, swir1, swir2) predicts exactly what the pre-reordered 6-band file does."""
    root = DATASETS["cia-crop"]
    fine = root / "fine_20011017.tif"
    coarse = {d: raster.read(root / f"coarse_2001{d}.tif").data for d in ("1017", "1102")}
    modis = {}
    for date, image in coarse.items():
        stored = np.rint(image * 1e4).astype(np.int16)
        extra = stored[3:4] // 2  # MODIS band 5 (1240 nm), absent from Landsat
        ordered = np.concatenate([stored[2:3], stored[3:4], stored[0:1], stored[1:2], extra, stored[4:6]])
        with rasterio.open(root / f"coarse_2001{date}.tif") as src:
            transform, crs = src.transform, src.crs.to_string()
        modis[date] = write_tif(tmp_path / f"MOD09GA_{date}.tif", ordered, crs=crs, transform=transform)
    common = ["predict", "--method", "coarse-delta", "--fine-t1", str(fine)]
    reordered = CliRunner().invoke(
        cli,
        [
            *common,
            "--coarse-t1",
            str(modis["1017"]),
            "--coarse-t2",
            str(modis["1102"]),
            "--coarse-bands",
            "3,4,1,2,6,7",
            "--out",
            str(tmp_path / "a.tif"),
        ],
    )
    assert reordered.exit_code == 0, reordered.output
    plain = CliRunner().invoke(
        cli,
        [
            *common,
            "--coarse-t1",
            str(root / "coarse_20011017.tif"),
            "--coarse-t2",
            str(root / "coarse_20011102.tif"),
            "--out",
            str(tmp_path / "b.tif"),
        ],
    )
    assert plain.exit_code == 0, plain.output
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    # without the selection the band counts differ: one line naming the fix
    result = CliRunner().invoke(
        cli,
        [
            *common,
            "--coarse-t1",
            str(modis["1017"]),
            "--coarse-t2",
            str(modis["1102"]),
            "--out",
            str(tmp_path / "c.tif"),
        ],
    )
    assert (
        result.exit_code == 2
        and "7 bands, but fine t1" in result.output
        and "--coarse-bands" in result.output
    )
    # by description: the sample's files carry band names
    case = scenes.discover(SAMPLE_ROOT).split("test")[0]
    by_name = ["predict", "--method", "coarse-delta", "--fine-t1", str(case.fine_t1), "--coarse-t1"]
    by_name += [str(case.coarse_t1), "--coarse-t2", str(case.coarse_t2), "--bands", "red,nir"]
    named = CliRunner().invoke(cli, [*by_name, "--out", str(tmp_path / "d.tif")])
    assert named.exit_code == 0, named.output
    with rasterio.open(tmp_path / "d.tif") as d, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(d.read(), b.read()[2:4])
        assert d.descriptions == ("red", "nir")
    # bands named alike in another order: refused (red would meet blue), and the named selection works
    landsat = ("blue", "green", "red", "nir", "swir1", "swir2")
    named_fine = tmp_path / "fine_named.tif"
    shutil.copy(fine, named_fine)
    raster.set_band_names(named_fine, landsat)
    for date in ("1017", "1102"):
        drop = [0, 1, 2, 3, 5, 6]  # without MODIS band 5
        with rasterio.open(modis[date]) as src:
            write_tif(
                tmp_path / f"M6_{date}.tif",
                src.read()[drop],
                crs=src.crs.to_string(),
                transform=src.transform,
            )
        raster.set_band_names(tmp_path / f"M6_{date}.tif", ("red", "nir", "blue", "green", "swir1", "swir2"))
    swapped = ["predict", "--method", "coarse-delta", "--fine-t1", str(named_fine)]
    swapped += ["--coarse-t1", str(tmp_path / "M6_1017.tif"), "--coarse-t2", str(tmp_path / "M6_1102.tif")]
    refused = CliRunner().invoke(cli, [*swapped, "--out", str(tmp_path / "e.tif")])
    assert refused.exit_code == 2 and not (tmp_path / "e.tif").exists(), refused.output
    expected = "bands red, nir, blue, green, swir1, swir2 would be fused with fine t1's blue, green, red, nir"
    assert expected in refused.output
    assert "--coarse-bands blue,green,red,nir,swir1,swir2" in refused.output
    # fine t1's band numbers applied to coarse files in another order (--bands 3,4 is red, nir of the
    # fine image, blue, green of the coarse ones): refused; by name it selects red and nir of each
    by_number = CliRunner().invoke(cli, [*swapped, "--bands", "3,4", "--out", str(tmp_path / "e.tif")])
    assert by_number.exit_code == 2 and not (tmp_path / "e.tif").exists(), by_number.output
    expected = "bands blue, green would be fused with fine t1's red, nir; select them in its order by name"
    assert expected in by_number.output and "--coarse-bands red,nir" in by_number.output, by_number.output
    names = CliRunner().invoke(cli, [*swapped, "--bands", "red,nir", "--out", str(tmp_path / "e.tif")])
    assert names.exit_code == 0, names.output
    with rasterio.open(tmp_path / "e.tif") as e, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(e.read(), b.read()[2:4])
    (tmp_path / "e.tif").unlink()
    fixed = CliRunner().invoke(
        cli, [*swapped, "--coarse-bands", ",".join(landsat), "--out", str(tmp_path / "e.tif")]
    )
    assert fixed.exit_code == 0, fixed.output
    with rasterio.open(tmp_path / "e.tif") as e, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(e.read(), b.read())
    # names asked of coarse files that have none: the message says how to select them instead
    unnamed = ["predict", "--fine-t1", str(named_fine), "--coarse-t1", str(root / "coarse_20011017.tif")]
    unnamed += ["--coarse-t2", str(root / "coarse_20011102.tif"), "--bands", "red,nir"]
    result = CliRunner().invoke(cli, [*unnamed, "--out", str(tmp_path / "f.tif")])
    assert (
        result.exit_code == 2
        and "has no band descriptions; select its bands by number with --coarse-bands (1 to 6)"
        in result.output
    ), result.output


def test_sidecar_masks_reach_predict_and_evaluate_as_they_reach_compare(tmp_path: Path) -> None:
    """Files named one by one (`predict`, `evaluate`) take their `<stem>_mask.tif` as a discovered
    folder does: the masked block is nodata in the prediction, and evaluate leaves the truth's masked
    pixels out as compare does."""
    from click.testing import CliRunner

    from stfusion.cli import cli
    from stfusion.sample import DATASETS

    data = tmp_path / "data"
    data.mkdir()
    for name in ("fine_20011008", "coarse_20011008", "coarse_20011017", "fine_20011017"):
        shutil.copy(DATASETS["cia-crop"] / f"{name}.tif", data)
    blocks = {
        "fine_20011008": (slice(100, 140), slice(100, 160)),
        "fine_20011017": (slice(10, 30), slice(10, 40)),
    }
    for name, (rows, cols) in blocks.items():  # a cloud on the reference, another on the truth
        block = np.zeros((250, 250), np.uint8)
        block[rows, cols] = 1
        with rasterio.open(data / f"{name}.tif") as src:
            write_tif(data / f"{name}_mask.tif", block, crs=src.crs.to_string(), transform=src.transform)
    runner = CliRunner()
    out = tmp_path / "pred.tif"
    args = [
        "predict",
        "--method",
        "coarse-delta",
        "--out",
        str(out),
        "--fine-t1",
        str(data / "fine_20011008.tif"),
    ]
    args += [
        "--coarse-t1",
        str(data / "coarse_20011008.tif"),
        "--coarse-t2",
        str(data / "coarse_20011017.tif"),
    ]
    assert (result := runner.invoke(cli, args)).exit_code == 0, result.output
    with rasterio.open(out) as src:
        predicted = src.read()
        assert (predicted[:, 100:140, 100:160] == src.nodata).all()
        assert (predicted[:, :100] != src.nodata).all()
    evaluated = runner.invoke(
        cli, ["evaluate", "--pred", str(out), "--truth", str(data / "fine_20011017.tif")]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert f"mask: {data / 'fine_20011017_mask.tif'} (beside the truth" in evaluated.output
    # out: the prediction's nodata (the reference's cloud, 2400 px) and the truth's cloud (600 px)
    assert "valid pixels=59500, excluded=3000" in evaluated.output, evaluated.output


def test_evaluate_scores_a_band_subset_by_name_or_by_bands(tmp_path: Path) -> None:
    """A prediction of some bands (`fuse --bands red,nir`) is scored against a full truth: by the
    prediction's band names, or by --bands; without either, one line says how."""
    from click.testing import CliRunner

    from stfusion.cli import cli
    from stfusion.sample import DATASETS

    truth = tmp_path / "truth.tif"
    shutil.copy(DATASETS["cia-crop"] / "fine_20011017.tif", truth)
    raster.set_band_names(truth, ("blue", "green", "red", "nir", "swir1", "swir2"))
    with rasterio.open(truth) as src:
        subset, crs, transform = src.read()[2:4], src.crs.to_string(), src.transform
    pred = write_tif(tmp_path / "pred.tif", subset, crs=crs, transform=transform)
    runner = CliRunner()
    unnamed = runner.invoke(cli, ["evaluate", "--pred", str(pred), "--truth", str(truth)])
    assert unnamed.exit_code == 2, unnamed.output
    assert "2 bands, the truth" in unnamed.output and "with --bands" in unnamed.output
    for extra in (["--bands", "3,4"], ["--bands", "red,nir"]):
        result = runner.invoke(cli, ["evaluate", "--pred", str(pred), "--truth", str(truth), *extra])
        assert result.exit_code == 0, result.output
        assert "red" in result.output and "nir" in result.output and "blue" not in result.output
        rows = [line.split() for line in result.output.splitlines() if line.startswith(("red", "nir"))]
        assert len(rows) == 2 and all(float(row[1]) == 0.0 for row in rows), result.output  # RMSE 0
    raster.set_band_names(pred, ("red", "nir"))
    named = runner.invoke(cli, ["evaluate", "--pred", str(pred), "--truth", str(truth)])
    assert named.exit_code == 0 and "blue" not in named.output, named.output
    # as many bands in another order: matched by name, not crossed
    two = write_tif(tmp_path / "two.tif", subset[::-1], crs=crs, transform=transform)
    raster.set_band_names(two, ("nir", "red"))
    crossed = runner.invoke(cli, ["evaluate", "--pred", str(two), "--truth", str(pred)])
    assert crossed.exit_code == 0, crossed.output
    forced = runner.invoke(cli, ["evaluate", "--pred", str(two), "--truth", str(pred), "--bands", "red,nir"])
    assert forced.exit_code == 2 and "holds nir, red in that order; give --bands nir,red" in forced.output
    rows = [line.split() for line in crossed.output.splitlines() if line.startswith(("red", "nir"))]
    assert len(rows) == 2 and all(float(row[1]) == 0.0 for row in rows), crossed.output
    # names that only partly agree, crossed (nir, red, swir-2 against red, nir, swir2): refused
    three = write_tif(
        tmp_path / "three.tif", np.stack([subset[1], subset[0], subset[0]]), crs=crs, transform=transform
    )
    raster.set_band_names(three, ("nir", "red", "swir-2"))
    partly = write_tif(
        tmp_path / "partly.tif", np.stack([subset[0], subset[1], subset[1]]), crs=crs, transform=transform
    )
    raster.set_band_names(partly, ("red", "nir", "swir2"))
    crossed3 = runner.invoke(cli, ["evaluate", "--pred", str(three), "--truth", str(partly)])
    assert (
        crossed3.exit_code == 2 and "would be scored against the truth's red, nir, swir2" in crossed3.output
    )
    wrong = runner.invoke(cli, ["evaluate", "--pred", str(pred), "--truth", str(truth), "--bands", "1"])
    assert wrong.exit_code == 2 and "--bands selects 1 bands" in wrong.output, wrong.output
    # a prediction of more bands than the truth: its bands named like the truth's are scored; with
    # --bands, the named bands of both files
    for args in (["--pred", str(truth), "--truth", str(pred)], ["--pred", str(truth), "--truth", str(truth)]):
        picked = [*args, "--bands", "red,nir"] if args[-1] == str(truth) else args
        result = runner.invoke(cli, ["evaluate", *picked])
        assert result.exit_code == 0, result.output
        rows = [line.split() for line in result.output.splitlines() if line.startswith(("red", "nir"))]
        assert len(rows) == 2 and all(float(row[1]) == 0.0 for row in rows), result.output
        assert "blue" not in result.output and "swir" not in result.output, result.output
