"""Property tests (hypothesis) of the readers and of scene discovery on random files.

Random small rasters (sizes, band counts, dtypes, nodata, NaN/inf, georeferencing) and random file and
folder names: the readers and discovery either work, with the documented invariants, or raise
:class:`~stfusion.errors.InputError`; nothing else escapes (no unexpected exception, no traceback in
the CLI).
"""

from __future__ import annotations

import datetime as dt
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.warp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from stfusion import raster, scenes
from stfusion.errors import InputError
from stfusion.inputs import CaseReader, ReadOptions, check_values
from stfusion.tiling import Window

FUZZ = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
DTYPES = ("uint8", "int16", "uint16", "int32", "float32", "float64")


@st.composite
def rasters(draw: st.DrawFn, *, height: int | None = None, width: int | None = None) -> dict[str, Any]:
    """A random small raster: data (C, H, W), dtype, nodata, CRS and transform."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = (
        draw(st.integers(1, 3)),
        height if height is not None else draw(st.integers(1, 9)),
        width if width is not None else draw(st.integers(1, 9)),
    )
    if dtype.kind == "f":
        elements = st.one_of(
            st.floats(-2.0, 20000.0, width=32),
            st.sampled_from([np.nan, np.inf, -np.inf, 0.0]),
        )
        nodata = draw(st.one_of(st.none(), st.just(float("nan")), st.sampled_from([-9999.0, 0.0])))
    else:
        info = np.iinfo(dtype)
        low, high = int(max(info.min, -32768)), int(min(info.max, 40000))
        elements = st.integers(low, high)
        nodata = draw(st.one_of(st.none(), st.sampled_from([low, 0, high])))
    values = draw(st.lists(elements, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    data = np.array(values, dtype=np.float64).reshape(shape)
    if nodata is not None and draw(st.booleans()):  # some nodata pixels
        data[..., 0, 0] = nodata
    crs = draw(st.sampled_from([None, "EPSG:32755", "EPSG:4326"]))
    if crs == "EPSG:4326":
        transform = from_origin(draw(st.floats(140, 150)), draw(st.floats(-40, -30)), 0.0005, 0.0005)
    else:
        dx = draw(st.floats(1.0, 600.0))
        transform = from_origin(401000.0 + draw(st.floats(-500, 500)), 6152800.0, dx, dx)
    return {"data": data.astype(dtype), "nodata": nodata, "crs": crs, "transform": transform}


def write(path: Path, spec: dict[str, Any]) -> Path:
    data = spec["data"]
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": str(data.dtype),
        "nodata": spec["nodata"],
    }
    if spec["crs"] is not None:
        profile.update(crs=spec["crs"], transform=spec["transform"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


@FUZZ
@given(
    spec=rasters(),
    window=st.tuples(*(st.integers(-4, 10) for _ in range(2)), *(st.integers(1, 8) for _ in range(2))),
)
def test_read_any_raster(spec: dict[str, Any], window: tuple[int, int, int, int]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder) / "a.tif", spec)
        whole = raster.read(path).data
        assert whole.shape == spec["data"].shape and whole.dtype == np.float32
        stored = spec["data"].astype(np.float64)
        invalid = ~np.isfinite(stored)
        if spec["nodata"] is not None:
            invalid |= np.isnan(stored) if np.isnan(spec["nodata"]) else stored == spec["nodata"]
        np.testing.assert_array_equal(np.isnan(whole), invalid)
        row, col, height, width = window
        part = raster.read(path, window=raster.make_window(row, col, height, width)).data
        expected = np.full((whole.shape[0], height, width), np.nan, np.float32)
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, whole.shape[1]), min(col + width, whole.shape[2])
        if r1 > r0 and c1 > c0:
            expected[:, r0 - row : r1 - row, c0 - col : c1 - col] = whole[:, r0:r1, c0:c1]
        np.testing.assert_array_equal(part, expected)
        try:
            sample = check_values(path)
        except InputError as exc:
            assert "no valid pixel" in str(exc) and invalid.all()
            event("no valid pixel")
        else:
            assert sample.values.size == (~invalid).sum()


def placed(
    spec: dict[str, Any], fine: dict[str, Any], mode: str, factor: float, offset: float
) -> dict[str, Any]:
    """A coarse raster for a fine one: on its grid, coarser in its CRS, in another CRS, or anywhere."""
    if mode == "anywhere":
        return spec
    bands = fine["data"].shape[0]
    data = np.resize(spec["data"], (bands, *spec["data"].shape[1:])).astype(spec["data"].dtype)
    if mode == "on grid":
        data = np.resize(spec["data"], fine["data"].shape).astype(spec["data"].dtype)
        return {**fine, "data": data, "nodata": spec["nodata"]}
    if fine["crs"] is None:
        return {**spec, "data": data}
    t = fine["transform"]
    size = abs(t.a) * factor
    if mode == "coarser":
        transform = from_origin(t.c + offset * size, t.f - offset * size, size, size)
        return {**spec, "data": data, "crs": fine["crs"], "transform": transform}
    # another CRS: the fine grid's corner moved into it, pixels ``factor`` times larger
    other = "EPSG:32756" if fine["crs"] != "EPSG:32756" else "EPSG:32755"
    (x,), (y,) = rasterio.warp.transform(fine["crs"], other, [t.c], [t.f])
    degrees = other == "EPSG:4326"
    size = size / 111000 if degrees else size
    return {**spec, "data": data, "crs": other, "transform": from_origin(x + offset * size, y, size, size)}


@FUZZ
@given(
    fine=rasters(height=6, width=7),
    coarse=st.lists(rasters(), min_size=2, max_size=2),
    modes=st.lists(st.sampled_from(["on grid", "coarser", "other crs", "anywhere"]), min_size=2, max_size=2),
    factor=st.floats(0.5, 4.0),
    offset=st.floats(-1.0, 1.0),
    resampling=st.sampled_from(raster.RESAMPLING_METHODS),
)
def test_case_reader_on_random_cases(
    fine: dict[str, Any],
    coarse: list[dict[str, Any]],
    modes: list[str],
    factor: float,
    offset: float,
    resampling: str,
) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        paths = {"fine_t1": write(folder / "f1.tif", fine)}
        for role, spec, mode in zip(("coarse_t1", "coarse_t2"), coarse, modes, strict=True):
            paths[role] = write(folder / f"{role}.tif", placed(spec, fine, mode, factor, offset))
        case = scenes.explicit_case(**paths)
        try:
            reader = CaseReader(case, options=ReadOptions(resampling=resampling))
        except InputError as exc:
            event(f"refused: {str(exc).split(': ', 1)[1][:30]}")
            return
        event(f"read, reprojected {len(reader.reprojected)}")
        for role in reader.roles:
            whole = reader.read(role)
            assert whole.shape == (reader.bands, 6, 7) and whole.dtype == np.float32
            assert not np.isinf(whole).any()
            window = Window(-1, 2, 4, 9)
            part = reader.read(role, window)
            np.testing.assert_array_equal(part[:, 1:, :5], whole[:, :3, 2:])
            assert np.isnan(part[:, 0]).all() and np.isnan(part[:, :, 5:]).all()


FLAT_STEMS = st.sampled_from(["fine_", "coarse_", "FINE_", "x"]).flatmap(
    lambda prefix: st.sampled_from(["20010101", "20010201", "20010301", "20011399", "2001"]).map(
        lambda date: prefix + date
    )
)
PAIR_STEMS = st.sampled_from(["L71093084_084", "MOD09GA_A", "x"]).flatmap(
    lambda prefix: st.sampled_from(["20011008", "20011017", "2001281", "2001290", "2001200"]).map(
        lambda date: prefix + date
    )
)
SUFFIXES = st.sampled_from(["", "", "", "_mask", ".sur_refl", "_20011017", " é"])
PAIR_FOLDERS = st.sampled_from(
    [
        "2001_281_1008-2001_290_1017",
        "2001_281_1008-2001_290_1017",
        "2001_290_1017-2001_281_1008",
        "2001_281_1008-2001_281_1008",
        "2001_200_1008-2001_290_1017",
        "2001-281",
    ]
)


@st.composite
def file_trees(draw: st.DrawFn) -> list[tuple[str, str]]:
    """(relative path, content kind) pairs in a flat, pair-folder or paper layout, with noise.

    Content kinds: a raster, garbage bytes or an empty file.
    """
    layout = draw(st.sampled_from(["flat", "pair", "paper"]))
    entries = []
    if draw(st.booleans()):  # start from a complete case, then add noise
        if layout == "flat":
            stems = ["fine_20010101", "coarse_20010101", "coarse_20010201", "fine_20010201"]
        else:
            prefix = (
                "2001_281_1008-2001_290_1017/" if layout == "pair" else "train/2001_281_1008-2001_290_1017/"
            )
            stems = [prefix + s for s in ("L7_20011008", "L7_20011017", "MOD_A2001281", "MOD_A2001290")]
        entries = [(stem + ".tif", "raster") for stem in stems[: draw(st.integers(3, 4))]]
    for _ in range(draw(st.integers(0, 4))):
        if layout == "flat":
            folder, stem = "", draw(FLAT_STEMS)
        else:
            folder = draw(PAIR_FOLDERS) + "/"
            if layout == "paper":
                folder = draw(st.sampled_from(["train/", "val/", "test/", "x/"])) + folder
            stem = draw(PAIR_STEMS)
        suffix = draw(st.sampled_from([".tif", ".tif", ".tif", ".TIF", ".tiff", ".txt", ""]))
        kind = draw(st.sampled_from(["raster", "raster", "raster", "raster", "garbage", "empty"]))
        entries.append((folder + stem + draw(SUFFIXES) + suffix, kind))
    return entries


@FUZZ
@given(tree=file_trees(), spec=rasters(height=4, width=5))
def test_discovery_on_random_names(tree: list[tuple[str, str]], spec: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as name:
        root = Path(name) / "root"
        root.mkdir()
        for relative, kind in tree:
            path = root / relative
            if path.exists() or any(p.is_file() for p in path.parents if p != root and root in p.parents):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                continue
            if kind == "raster":
                write(path, spec)
            else:
                path.write_bytes(b"" if kind == "empty" else b"II*\x00garbage")
        try:
            found = scenes.discover(root)
        except InputError as exc:
            event(f"refused: {str(exc).split(': ', 1)[-1][:30]}")
            return
        assert found.cases
        event(f"{len(found.cases)} case(s)")
        for case in found.cases:
            assert isinstance(case.date_t1, dt.date)
            try:
                reader = CaseReader(case)
            except InputError:
                continue
            for role in reader.roles:
                assert reader.read(role).shape == (reader.bands, reader.height, reader.width)
