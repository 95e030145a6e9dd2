"""GeoTIFF input and output: the only module that imports rasterio.

Reading returns float32 reflectance (stored value x ``scale``) with nodata as NaN, bands first
(C, H, W), plus the source profile. Writing starts from a reference profile (CRS, transform, nodata)
so predictions stay georeferenced, rounds and clips to int16 by default, and writes atomically
(temporary file in the target folder, then rename) so no partial output is ever left behind.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window

from stfusion.atomic import atomic_path
from stfusion.errors import InputError, OutputExistsError
from stfusion.transforms import REFLECTANCE_SCALE, from_reflectance, to_reflectance

#: int16 nodata used when a prediction has unpredictable pixels and the reference declares none.
DEFAULT_INT16_NODATA: int = -32768


@dataclass(frozen=True)
class RasterInfo:
    """Metadata of a raster file; no pixels.

    ``crs`` is a WKT/EPSG string or None; ``transform`` the six affine coefficients (a, b, c, d, e, f).
    """

    path: Path
    count: int
    height: int
    width: int
    dtype: str
    crs: str | None
    transform: tuple[float, ...]
    nodata: float | None
    band_names: tuple[str | None, ...]
    profile: dict[str, Any] = field(repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (self.count, self.height, self.width)


@dataclass(frozen=True)
class Raster:
    """A raster read into memory: ``data`` is float32 reflectance (C, H, W), NaN where nodata."""

    data: np.ndarray
    info: RasterInfo


def _open(path: Path) -> rasterio.DatasetReader:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a GeoTIFF file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise InputError(f"{path}: not a readable raster ({reason})") from exc


def _info(path: Path, src: rasterio.DatasetReader) -> RasterInfo:
    crs = src.crs.to_string() if src.crs else None
    return RasterInfo(
        path=path,
        count=src.count,
        height=src.height,
        width=src.width,
        dtype=src.dtypes[0],
        crs=crs,
        transform=tuple(src.transform)[:6],
        nodata=src.nodata,
        band_names=tuple(src.descriptions),
        profile=dict(src.profile),
    )


def inspect(path: str | os.PathLike[str]) -> RasterInfo:
    """Read a raster's metadata without its pixels; InputError naming the file if unreadable."""
    path = Path(path)
    with _open(path) as src:
        return _info(path, src)


def _to_reflectance(stored: np.ndarray, nodata: float | None, scale: float) -> np.ndarray:
    data = to_reflectance(stored, scale=scale)
    if nodata is not None:
        invalid = np.isnan(stored) if np.isnan(nodata) else stored == nodata
        data[invalid] = np.nan
    if data.dtype.kind == "f":
        data[~np.isfinite(data)] = np.nan
    return data


def read(
    path: str | os.PathLike[str],
    *,
    scale: float = REFLECTANCE_SCALE,
    window: Window | None = None,
    bands: Sequence[int] | None = None,
) -> Raster:
    """Read a GeoTIFF (or a window of it) as float32 reflectance (C, H, W) with nodata as NaN.

    Args:
        path: raster file.
        scale: reflectance per stored unit (1e-4 for int16 x 10000 products; 1.0 for float
            reflectance files).
        window: rows/columns to read (rasterio Window); the whole raster when None. Parts of the
            window outside the raster are filled with NaN (boundless read).
        bands: 1-based band indices to read; all when None.
    """
    path = Path(path)
    with _open(path) as src:
        info = _info(path, src)
        indexes = list(bands) if bands is not None else list(range(1, src.count + 1))
        try:
            if window is None:
                stored = src.read(indexes)
            else:
                fill = src.nodata if src.nodata is not None else 0
                stored = src.read(indexes, window=window, boundless=True, fill_value=fill)
                outside = _outside_mask(window, src.height, src.width)
        except RasterioIOError as exc:
            raise InputError(f"{path}: corrupt or truncated raster ({exc})") from exc
    data = _to_reflectance(stored, info.nodata, scale)
    if window is not None and outside is not None:
        data[:, outside] = np.nan
    return Raster(data=data, info=info)


def make_window(row: int, col: int, height: int, width: int) -> Window:
    """A rasterio Window from pixel offsets and sizes (so callers need not import rasterio)."""
    return Window(col, row, width, height)


def _outside_mask(window: Window, height: int, width: int) -> np.ndarray | None:
    rows = np.arange(window.row_off, window.row_off + window.height)
    cols = np.arange(window.col_off, window.col_off + window.width)
    row_out = (rows < 0) | (rows >= height)
    col_out = (cols < 0) | (cols >= width)
    if not row_out.any() and not col_out.any():
        return None
    return row_out[:, None] | col_out[None, :]


def output_profile(
    reference: RasterInfo,
    *,
    count: int,
    dtype: str = "int16",
    nodata: float | None = None,
    blocksize: int = 256,
) -> dict[str, Any]:
    """A GeoTIFF profile for an output on the reference's grid: CRS, transform and nodata copied.

    Tiled (``blocksize`` square, when the image is at least that large) and DEFLATE-compressed.
    """
    profile = dict(reference.profile)
    profile.update(
        driver="GTiff",
        count=count,
        dtype=dtype,
        compress="deflate",
        predictor=2 if np.dtype(dtype).kind in "iu" else 3,
        interleave="band",
    )
    if reference.height >= blocksize and reference.width >= blocksize:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    else:
        profile.update(tiled=False)
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
    profile["nodata"] = nodata if nodata is not None else reference.nodata
    return profile


def check_writable(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Refuse an existing output (unless ``overwrite``) or an unwritable folder, before any work."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: output exists; pass --overwrite to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{path}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{path}: output folder {folder} is not writable")
    return path


def write_like(
    path: str | os.PathLike[str],
    reflectance: np.ndarray,
    reference: RasterInfo,
    *,
    dtype: str = "int16",
    scale: float = REFLECTANCE_SCALE,
    overwrite: bool = False,
    band_names: Sequence[str | None] | None = None,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write a (C, H, W) reflectance array on the reference's grid, atomically.

    Integer dtypes store round(reflectance / scale) clipped to the dtype's range; float dtypes store
    reflectance itself. NaN pixels become nodata: the reference's nodata, or -32768 for int16 (NaN for
    floats) when the reference declares none.
    """
    path = check_writable(path, overwrite=overwrite)
    if reflectance.ndim != 3:
        raise ValueError(f"write_like expects (C, H, W), got shape {reflectance.shape}")
    if reflectance.shape[1:] != (reference.height, reference.width):
        raise ValueError(
            f"{path}: array size {reflectance.shape[1:]} differs from the reference "
            f"{reference.path} size {(reference.height, reference.width)}"
        )
    is_float = np.dtype(dtype).kind == "f"
    nodata = reference.nodata
    has_gaps = bool(np.isnan(reflectance).any())
    if is_float and nodata is None and has_gaps:
        nodata = float("nan")
    elif not is_float and nodata is None and has_gaps:
        nodata = DEFAULT_INT16_NODATA
    stored = from_reflectance(reflectance, scale=scale, dtype=dtype)
    if has_gaps and nodata is not None and not is_float:
        stored[np.isnan(reflectance)] = nodata
    profile = output_profile(reference, count=reflectance.shape[0], dtype=dtype, nodata=nodata)
    names = band_names if band_names is not None else reference.band_names
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        # a reference without georeferencing (e.g. the ESTARFM test data) gives an output without it
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(stored)
            for index, name in enumerate(names[: reflectance.shape[0]], start=1):
                if name:
                    dst.set_band_description(index, name)
            if tags:
                dst.update_tags(**tags)
    return path


# --------------------------------------------------------------------------------------------------
# streaming output: rows written as they are finished


def _default_nodata(reference: RasterInfo, dtype: str) -> float:
    if reference.nodata is not None:
        return reference.nodata
    return float("nan") if np.dtype(dtype).kind == "f" else DEFAULT_INT16_NODATA


def _stored(block: np.ndarray, *, dtype: str, scale: float, nodata: float) -> np.ndarray:
    stored = from_reflectance(block, scale=scale, dtype=dtype)
    if np.dtype(dtype).kind != "f":
        stored[np.isnan(block)] = nodata
    return stored


@contextmanager
def row_writer(
    path: str | os.PathLike[str],
    reference: RasterInfo,
    *,
    count: int,
    dtype: str = "int16",
    scale: float = REFLECTANCE_SCALE,
    rows: tuple[int, int] | None = None,
    overwrite: bool = False,
    band_names: Sequence[str | None] | None = None,
    tags: dict[str, str] | None = None,
    cog: bool = False,
) -> Iterator[Callable[[int, np.ndarray], None]]:
    """Open a GeoTIFF on the reference's grid and yield ``write(first_row, block)`` for row blocks.

    ``block`` is (C, n, W) float32 reflectance (NaN = nodata) for scene rows [first_row, first_row + n).
    ``rows`` restricts the file to scene rows [rows[0], rows[1]) (its transform is shifted to match),
    for one process's part of a scene. Stored like :func:`write_like` (rounded, clipped, tiled,
    DEFLATE); nodata is the reference's, else -32768 for integers / NaN for floats. The file appears
    under ``path`` only when the ``with`` block ends without an exception; ``cog`` converts it to a
    Cloud Optimized GeoTIFF (GDAL's COG driver, with overviews) before that.
    """
    path = check_writable(path, overwrite=overwrite)
    first, stop = rows if rows is not None else (0, reference.height)
    nodata = _default_nodata(reference, dtype)
    profile = output_profile(reference, count=count, dtype=dtype, nodata=nodata)
    a, b, c, d, e, f = reference.transform
    profile.update(height=stop - first, transform=Affine(a, b, c + b * first, d, e, f + e * first))
    if stop - first < 256:
        profile.update(tiled=False)
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
    names = band_names if band_names is not None else reference.band_names
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        target = tmp.with_name(tmp.name + ".gtiff") if cog else tmp
        try:
            with rasterio.open(target, "w", **profile) as dst:

                def write(row: int, block: np.ndarray) -> None:
                    if block.shape[0] != count or block.shape[2] != reference.width:
                        raise ValueError(
                            f"block shape {block.shape} does not fit ({count}, n, {reference.width})"
                        )
                    if row < first or row + block.shape[1] > stop:
                        raise ValueError(f"rows {row}..{row + block.shape[1]} outside {first}..{stop}")
                    stored = _stored(block, dtype=dtype, scale=scale, nodata=nodata)
                    dst.write(stored, window=Window(0, row - first, reference.width, block.shape[1]))

                yield write
                for index, name in enumerate(names[:count], start=1):
                    if name:
                        dst.set_band_description(index, name)
                if tags:
                    dst.update_tags(**tags)
            if cog:
                rasterio.shutil.copy(target, tmp, driver="COG", compress="DEFLATE", blocksize=512)
        finally:
            if cog:
                target.unlink(missing_ok=True)


def join_row_parts(
    parts: Sequence[tuple[Path, tuple[int, int]]],
    path: str | os.PathLike[str],
    reference: RasterInfo,
    *,
    overwrite: bool = False,
    cog: bool = False,
    rows_per_block: int = 512,
) -> Path:
    """Join row parts written by :func:`row_writer` (path, (first_row, stop)) into one GeoTIFF.

    Parts must tile the scene's rows exactly; pixels are copied unchanged, block by block.
    """
    spans = sorted(rows for _, rows in parts)
    expected = 0
    for first, stop in spans:
        if first != expected:
            raise ValueError(f"row parts {spans} do not tile rows 0..{reference.height}")
        expected = stop
    if expected != reference.height:
        raise ValueError(f"row parts {spans} do not tile rows 0..{reference.height}")
    with _open(parts[0][0]) as src:
        count, dtype, nodata = src.count, src.dtypes[0], src.nodata
        names = src.descriptions
        tags = src.tags()
    profile = output_profile(reference, count=count, dtype=dtype, nodata=nodata)
    path = check_writable(path, overwrite=overwrite)
    with warnings.catch_warnings(), atomic_path(Path(path)) as tmp:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        target = tmp.with_name(tmp.name + ".gtiff") if cog else tmp
        try:
            with rasterio.open(target, "w", **profile) as dst:
                for part, (first, stop) in parts:
                    with _open(part) as src:
                        for top in range(0, stop - first, rows_per_block):
                            n = min(rows_per_block, stop - first - top)
                            block = src.read(window=Window(0, top, reference.width, n))
                            dst.write(block, window=Window(0, first + top, reference.width, n))
                for index, name in enumerate(names, start=1):
                    if name:
                        dst.set_band_description(index, name)
                if tags:
                    dst.update_tags(**tags)
            if cog:
                rasterio.shutil.copy(target, tmp, driver="COG", compress="DEFLATE", blocksize=512)
        finally:
            if cog:
                target.unlink(missing_ok=True)
    return Path(path)
