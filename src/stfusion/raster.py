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
from rasterio.crs import CRS
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window

from stfusion.atomic import atomic_path
from stfusion.errors import InputError, OutputExistsError
from stfusion.transforms import REFLECTANCE_SCALE, from_reflectance, to_reflectance

# GDAL's block cache defaults to 5% of RAM, and it counts in the process's memory: streaming reads each
# window about once, so a small cache costs nothing and keeps peak memory independent of the machine.
# An explicit GDAL_CACHEMAX (MB or %) in the environment wins.
os.environ.setdefault("GDAL_CACHEMAX", "256")

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
    tags: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

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
        tags=dict(src.tags()),
    )


def _read_error(path: Path, exc: Exception) -> InputError:
    """A one-line InputError for pixels that cannot be read, with GDAL's reason when it gave one."""
    cause = exc.__cause__ or exc
    reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return InputError(f"{path}: corrupt or truncated raster ({reason}); re-download or re-export it")


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
            raise _read_error(path, exc) from exc
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


# --------------------------------------------------------------------------------------------------
# grids: same-grid test, footprint overlap, reading onto another raster's grid (reprojection)

#: Resampling methods for placing a raster that is not on the fine grid onto it (rasterio names).
RESAMPLING_METHODS: tuple[str, ...] = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average")

# Error threshold of GDAL's approximate transformer, in pixels. Tiny, so every output pixel's source
# position is computed exactly: a window of a warped read then equals the same crop of a whole read
# (with the default 0.125 px the interpolation nodes depend on the window and the values differ).
_EXACT_TOLERANCE = 1e-9
# A resampled mask marks a pixel invalid where the mask's interpolated value exceeds this: any masked
# source pixel that contributes with weight > 1e-3 (masks hold integers >= 1 where invalid).
_MASK_EPSILON = 1e-3


def same_crs(a: str | None, b: str | None) -> bool:
    """Whether two CRS strings (EPSG code, WKT, PROJ) describe the same CRS; None equals only None."""
    if a is None or b is None:
        return a is b
    if a == b:
        return True
    try:
        return bool(CRS.from_user_input(a) == CRS.from_user_input(b))
    except CRSError:
        return False


def same_grid(info: RasterInfo, grid: RasterInfo, *, tolerance: float = 1e-6) -> bool:
    """Whether ``info`` lies exactly on ``grid``: same size, CRS and transform.

    Transform coefficients may differ by ``tolerance`` x the grid's pixel size (rounding in headers).
    """
    if (info.height, info.width) != (grid.height, grid.width) or not same_crs(info.crs, grid.crs):
        return False
    pixel = max(abs(grid.transform[0]), abs(grid.transform[4]), abs(grid.transform[1]), 1e-12)
    return all(abs(a - b) <= tolerance * pixel for a, b in zip(info.transform, grid.transform, strict=True))


def _bounds(info: RasterInfo) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a raster's pixel corners in its own CRS."""
    transform = Affine(*info.transform)
    xs, ys = zip(
        *(transform @ (c, r) for r in (0, info.height) for c in (0, info.width)),
        strict=True,
    )
    return min(xs), min(ys), max(xs), max(ys)


def footprint_fraction(source: RasterInfo, grid: RasterInfo) -> float:
    """Fraction (0..1) of ``grid``'s area covered by ``source``'s footprint (both need a CRS).

    The source's bounds are transformed into the grid's CRS (densified edges, so curved edges count) and
    intersected with the grid's bounds. Footprints that cannot be transformed (coordinates outside the
    CRS's domain) cover 0.
    """
    if source.crs is None or grid.crs is None:
        raise ValueError("footprint_fraction needs two georeferenced rasters")
    from rasterio.warp import transform_bounds

    left, bottom, right, top = _bounds(grid)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s_left, s_bottom, s_right, s_top = transform_bounds(
                source.crs, grid.crs, *_bounds(source), densify_pts=21
            )
    except Exception:  # PROJ raises several types for coordinates outside a CRS's domain
        return 0.0
    values = np.array([s_left, s_bottom, s_right, s_top], dtype=np.float64)
    if not np.isfinite(values).all():
        return 0.0
    width = min(right, s_right) - max(left, s_left)
    height = min(top, s_top) - max(bottom, s_bottom)
    area = (right - left) * (top - bottom)
    if width <= 0 or height <= 0 or area <= 0:
        return 0.0
    return float(min(1.0, width * height / area))


def _clip_window(window: Window | None, grid: RasterInfo) -> tuple[Window | None, tuple[slice, slice]]:
    """The part of ``window`` inside the grid, and where it goes in the window's (h, w) array."""
    if window is None:
        return Window(0, 0, grid.width, grid.height), (slice(None), slice(None))
    row0, col0 = int(window.row_off), int(window.col_off)
    row1, col1 = row0 + int(window.height), col0 + int(window.width)
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row1, grid.height), min(col1, grid.width)
    if r1 <= r0 or c1 <= c0:
        return None, (slice(0, 0), slice(0, 0))
    return Window(c0, r0, c1 - c0, r1 - r0), (slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0))


def _window_shape(window: Window | None, grid: RasterInfo) -> tuple[int, int]:
    if window is None:
        return grid.height, grid.width
    return int(window.height), int(window.width)


def _warped(
    src: rasterio.DatasetReader, grid: RasterInfo, resampling: str, *, src_nodata: float | None
) -> Any:
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    if resampling not in RESAMPLING_METHODS:
        raise InputError(f"resampling {resampling!r}: choose one of {', '.join(RESAMPLING_METHODS)}")
    options: dict[str, Any] = {}
    if src_nodata is not None:
        options["src_nodata"] = src_nodata
    return WarpedVRT(
        src,
        crs=grid.crs,
        transform=Affine(*grid.transform),
        width=grid.width,
        height=grid.height,
        resampling=Resampling[resampling],
        dtype="float32",
        nodata=np.nan,
        tolerance=_EXACT_TOLERANCE,
        **options,
    )


def read_on_grid(
    path: str | os.PathLike[str],
    grid: RasterInfo,
    *,
    scale: float = REFLECTANCE_SCALE,
    window: Window | None = None,
    resampling: str = "bilinear",
) -> np.ndarray:
    """Read a raster onto another raster's grid (reprojected if needed) as float32 reflectance.

    A raster already on ``grid`` (:func:`same_grid`) is read as :func:`read` does. Any other raster is
    warped onto the grid with GDAL (``resampling``, computed in float32; the source's nodata is
    honoured), with exact per-pixel coordinate transforms so that a window equals the same crop of a
    whole read.

    Args:
        path: source raster (any size, resolution, CRS).
        grid: the target grid (e.g. fine t1's :class:`RasterInfo`).
        scale: reflectance per stored unit.
        window: rows/columns of the grid (may extend outside it: NaN there); the whole grid when None.
        resampling: one of :data:`RESAMPLING_METHODS`.
    Returns:
        (C, h, w) float32 reflectance on the grid (window), NaN where nodata, non-finite or outside the
        source's footprint.
    """
    path = Path(path)
    with _open(path) as src:
        info = _info(path, src)
        if same_grid(info, grid):
            return read(path, scale=scale, window=window).data
        height, width = _window_shape(window, grid)
        data = np.full((info.count, height, width), np.nan, dtype=np.float32)
        inner, place = _clip_window(window, grid)
        if inner is None:
            return data
        try:
            with _warped(src, grid, resampling, src_nodata=None) as vrt:
                stored = vrt.read(window=inner)
        except RasterioIOError as exc:
            raise _read_error(path, exc) from exc
    stored *= np.float32(scale)
    stored[~np.isfinite(stored)] = np.nan
    data[(slice(None), *place)] = stored
    return data


def read_mask_on_grid(
    path: str | os.PathLike[str],
    grid: RasterInfo,
    *,
    window: Window | None = None,
    resampling: str = "nearest",
) -> np.ndarray:
    """Read a mask raster (any nonzero or non-finite value in any band = invalid) onto a grid.

    The mask's declared nodata is ignored: masks often declare 0 (clear) as nodata. A mask on ``grid``
    is read as is. A mask on another grid is warped with ``resampling`` and a pixel is invalid when the
    warped value exceeds 1e-3 in magnitude, i.e. when a masked source pixel contributes to it (with
    ``nearest``: when its nearest mask pixel is masked); pixels outside the mask's footprint are invalid.

    Returns:
        (h, w) bool, True = invalid (the window's shape; the whole grid when ``window`` is None).
    """
    path = Path(path)
    height, width = _window_shape(window, grid)
    with _open(path) as src:
        info = _info(path, src)
        try:
            if same_grid(info, grid):
                if window is None:
                    stored = src.read()
                else:
                    stored = src.read(window=window, boundless=True, fill_value=0)
                invalid = ((stored != 0) | ~np.isfinite(stored)).any(axis=0)
                return np.asarray(invalid, dtype=bool)
            invalid = np.ones((height, width), dtype=bool)
            inner, place = _clip_window(window, grid)
            if inner is None:
                return invalid
            # a non-integer source nodata never matches an integer mask: no value is skipped as nodata
            src_nodata = float("nan") if np.dtype(info.dtype).kind == "f" else 0.5
            with _warped(src, grid, resampling, src_nodata=src_nodata) as vrt:
                warped = vrt.read(window=inner)
        except RasterioIOError as exc:
            raise _read_error(path, exc) from exc
    invalid[place] = ((np.abs(warped) > _MASK_EPSILON) | ~np.isfinite(warped)).any(axis=0)
    return invalid


# --------------------------------------------------------------------------------------------------
# value checks on a sample of the pixels


@dataclass(frozen=True)
class ValueSample:
    """Stored values of a raster, sampled on a regular decimated grid (nearest), for sanity checks.

    ``values`` holds the valid stored values (finite, not nodata) of all bands, 1-D float64;
    ``n_pixels`` the sampled values in all (valid or not), ``n_nodata`` those equal to the nodata value,
    ``n_nonfinite`` the NaN/inf values that are not the declared nodata. ``complete`` is True when every
    pixel was read (small rasters).
    """

    path: Path
    dtype: str
    nodata: float | None
    values: np.ndarray
    n_pixels: int
    n_nodata: int
    n_nonfinite: int
    complete: bool


def _count_invalid(stored: np.ndarray, nodata: float | None) -> tuple[np.ndarray, int, int]:
    if nodata is not None and np.isnan(nodata):
        is_nodata = np.isnan(stored)
    elif nodata is not None:
        is_nodata = stored == nodata
    else:
        is_nodata = np.zeros(stored.shape, dtype=bool)
    nonfinite = ~np.isfinite(stored) & ~is_nodata if stored.dtype.kind == "f" else np.zeros_like(is_nodata)
    valid = ~is_nodata & ~nonfinite
    return valid, int(is_nodata.sum()), int(nonfinite.sum())


def sample_values(path: str | os.PathLike[str], *, max_pixels: int = 512 * 512, grid: int = 8) -> ValueSample:
    """Sample a raster's stored values cheaply: all pixels when it has at most ``max_pixels`` per band,
    else ``grid`` x ``grid`` square windows spread evenly over it, about ``max_pixels`` per band in all.

    Windows, not a decimated read: decimating a large GeoTIFF without overviews decodes every block
    (seconds and GDAL's whole block cache for a 10980 x 10980 scene); the windows touch a few blocks.
    """
    path = Path(path)
    with _open(path) as src:
        complete = src.height * src.width <= max_pixels
        try:
            if complete:
                stored = src.read()
            else:
                side = max(1, int(np.sqrt(max_pixels / grid**2)))
                rows = np.linspace(0, max(src.height - side, 0), grid).astype(int)
                cols = np.linspace(0, max(src.width - side, 0), grid).astype(int)
                windows = [
                    src.read(window=Window(int(c), int(r), min(side, src.width), min(side, src.height)))
                    for r in rows
                    for c in cols
                ]
                stored = np.concatenate([w.reshape(src.count, -1) for w in windows], axis=1)[:, None]
        except RasterioIOError as exc:
            raise _read_error(path, exc) from exc
        dtype, nodata = src.dtypes[0], src.nodata
    valid, n_nodata, n_nonfinite = _count_invalid(stored, nodata)
    return ValueSample(
        path=path,
        dtype=dtype,
        nodata=nodata,
        values=stored[valid].astype(np.float64),
        n_pixels=int(stored.size),
        n_nodata=n_nodata,
        n_nonfinite=n_nonfinite,
        complete=complete,
    )


def has_valid_pixel(path: str | os.PathLike[str]) -> bool:
    """Whether any pixel of any band is finite and not nodata (block by block; stops at the first)."""
    path = Path(path)
    with _open(path) as src:
        try:
            for _, block in src.block_windows(1):
                valid, _, _ = _count_invalid(src.read(window=block), src.nodata)
                if valid.any():
                    return True
        except RasterioIOError as exc:
            raise _read_error(path, exc) from exc
    return False


def write_quality(
    path: str | os.PathLike[str],
    flags: np.ndarray,
    reference: RasterInfo,
    *,
    overwrite: bool = False,
    description: str = "",
) -> Path:
    """Write a (H, W) uint8 quality/validity band on the reference's grid, atomically (no nodata).

    ``description`` (what the values mean) is stored as the band description and a ``QUALITY`` tag.
    """
    path = check_writable(path, overwrite=overwrite)
    if flags.shape != (reference.height, reference.width):
        raise ValueError(f"{path}: quality band shape {flags.shape} differs from the reference grid")
    profile = output_profile(reference, count=1, dtype="uint8")
    profile["nodata"] = None
    tags = {"QUALITY": description} if description else None
    with _open_output(path, profile, band_names=["quality"], tags=tags) as dst:
        dst.write(flags.astype(np.uint8)[None])
    return path


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
    # a nodata value is declared only when needed: the reference's, or a default when there are gaps
    has_gaps = bool(np.isnan(reflectance).any())
    nodata = _default_nodata(reference, dtype) if has_gaps else reference.nodata
    stored = _stored(reflectance, dtype=dtype, scale=scale, nodata=nodata)
    profile = output_profile(reference, count=reflectance.shape[0], dtype=dtype, nodata=nodata)
    names = band_names if band_names is not None else reference.band_names
    with _open_output(path, profile, band_names=names[: reflectance.shape[0]], tags=tags) as dst:
        dst.write(stored)
    return path


# --------------------------------------------------------------------------------------------------
# streaming output: rows written as they are finished


def _default_nodata(reference: RasterInfo, dtype: str) -> float:
    if reference.nodata is not None:
        return reference.nodata
    return float("nan") if np.dtype(dtype).kind == "f" else DEFAULT_INT16_NODATA


def _stored(block: np.ndarray, *, dtype: str, scale: float, nodata: float | None) -> np.ndarray:
    """Stored values of reflectance (rounded, clipped); NaN pixels of integer outputs become nodata."""
    stored = from_reflectance(block, scale=scale, dtype=dtype)
    if np.dtype(dtype).kind != "f" and nodata is not None:
        stored[np.isnan(block)] = nodata
    return stored


@contextmanager
def _open_output(
    path: Path,
    profile: dict[str, Any],
    *,
    band_names: Sequence[str | None],
    tags: dict[str, str] | None,
    cog: bool = False,
) -> Iterator[Any]:
    """An open rasterio writer on a temporary file, renamed onto ``path`` when the block succeeds.

    Band descriptions and tags are set after the caller's writes; ``cog`` converts the file to a
    Cloud Optimized GeoTIFF (GDAL's COG driver, with overviews) before the rename.
    """
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        # a reference without georeferencing (e.g. the ESTARFM test data) gives an output without it
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        target = tmp.with_name(tmp.name + ".gtiff") if cog else tmp
        try:
            with rasterio.open(target, "w", **profile) as dst:
                yield dst
                for index, name in enumerate(band_names, start=1):
                    if name:
                        dst.set_band_description(index, name)
                if tags:
                    dst.update_tags(**tags)
            if cog:
                rasterio.shutil.copy(target, tmp, driver="COG", compress="DEFLATE", blocksize=512)
        finally:
            if cog:
                target.unlink(missing_ok=True)


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
    with _open_output(path, profile, band_names=names[:count], tags=tags, cog=cog) as dst:

        def write(row: int, block: np.ndarray) -> None:
            if block.shape[0] != count or block.shape[2] != reference.width:
                raise ValueError(f"block shape {block.shape} does not fit ({count}, n, {reference.width})")
            if row < first or row + block.shape[1] > stop:
                raise ValueError(f"rows {row}..{row + block.shape[1]} outside {first}..{stop}")
            for top in range(0, block.shape[1], 256):  # in chunks: the conversion's temporaries stay small
                chunk = block[:, top : top + 256]
                stored = _stored(chunk, dtype=dtype, scale=scale, nodata=nodata)
                dst.write(stored, window=Window(0, row - first + top, reference.width, chunk.shape[1]))

        yield write


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
    with _open_output(path, profile, band_names=names, tags=tags, cog=cog) as dst:
        for part, (first, stop) in parts:
            with _open(part) as src:
                for top in range(0, stop - first, rows_per_block):
                    n = min(rows_per_block, stop - first - top)
                    block = src.read(window=Window(0, top, reference.width, n))
                    dst.write(block, window=Window(0, first + top, reference.width, n))
    return path
