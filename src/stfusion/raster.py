"""GeoTIFF input and output: the only module that imports rasterio.

Reading returns float32 reflectance (C, H, W) with invalid pixels as NaN, plus the source's metadata.
Reflectance = stored value x scale + offset, resolved per file by :func:`resolve_scaling` (the file's
GDAL scale/offset tags, else the caller's values, else an automatic choice). Invalid pixels are the
declared nodata (any value of the file's dtype: NaN, -3.4e38, 65535, 0, ...), non-finite values, float
fill values that are not declared (|value| >= :data:`FILL_MAGNITUDE`, e.g. -3.4028235e38), and pixels
masked by a GDAL dataset mask (internal or ``.msk``) or an alpha band; alpha bands are not data bands
(:attr:`RasterInfo.count` leaves them out).

Writing starts from a reference profile (CRS, transform) so predictions stay georeferenced, rounds and
clips to int16 reflectance x 10000 by default (with GDAL scale/offset tags saying so), declares a
nodata value the output dtype can hold, and writes atomically (temporary file in the target folder,
checked, then published; exclusive unless overwriting) so no partial output is ever left behind.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window

from stfusion import formats
from stfusion.atomic import OutputError, atomic_path, file_size_limit, output_error
from stfusion.errors import InputError, OutputExistsError
from stfusion.transforms import REFLECTANCE_SCALE, from_reflectance

try:  # GDAL errors that rasterio raises as they are (not wrapped in a RasterioError)
    from rasterio._err import CPLE_BaseError

    _GDAL_ERRORS: tuple[type[Exception], ...] = (RasterioError, CPLE_BaseError)
except ImportError:  # pragma: no cover - rasterio's private module moved
    _GDAL_ERRORS = (RasterioError,)

log = logging.getLogger(__name__)

# GDAL's block cache defaults to 5% of RAM, and it counts in the process's memory: streaming reads each
# window about once, so a small cache costs nothing and keeps peak memory independent of the machine.
# An explicit GDAL_CACHEMAX (MB or %) in the environment wins.
os.environ.setdefault("GDAL_CACHEMAX", "256")

#: int16 nodata used when a prediction has unpredictable pixels and the reference declares none.
DEFAULT_INT16_NODATA: int = -32768
#: Float values whose 99th percentile of |value| is at most this are taken as reflectance already
#: (automatic scale 1.0); above it, as reflectance x 10000.
REFLECTANCE_LIKE_MAX: float = 1.5
#: Stored float values at least this large in magnitude are fill values, not data, whether or not the
#: file declares them as nodata: no reflectance under any scale comes near (reflectance x 10000 stays
#: below 1e5). Files that declare no nodata often fill with float32's lowest value -3.4028235e38 (ArcGIS)
#: or +3.4e38; such values are invalid exactly like NaN and inf. Integer dtypes never reach it.
FILL_MAGNITUDE: float = 1e30


@dataclass(frozen=True)
class RasterInfo:
    """Metadata of a raster file; no pixels.

    ``crs`` is a WKT/EPSG string or None; ``transform`` the six affine coefficients (a, b, c, d, e, f).
    ``count``, ``dtype``, ``band_names``, ``scales`` and ``offsets`` describe the data bands only: an
    alpha band (colour interpretation alpha) is a validity mask, not data. ``data_bands`` holds the
    data bands' 1-based numbers in the file, ``alpha_band`` the alpha band's (or None). ``mask_kind``
    says whether GDAL holds a mask besides nodata: ``"none"`` (all valid, or nodata only),
    ``"per_dataset"`` (an internal or ``.msk`` mask shared by the bands) or ``"per_band"``.
    ``profile`` is rasterio's profile of the file (its ``count`` includes an alpha band).
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
    scales: tuple[float, ...] = ()
    offsets: tuple[float, ...] = ()
    data_bands: tuple[int, ...] = ()
    alpha_band: int | None = None
    mask_kind: str = "none"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W), C counting data bands only."""
        return (self.count, self.height, self.width)

    @property
    def band_numbers(self) -> tuple[int, ...]:
        """1-based file band numbers of the data bands (all bands for an info built by hand)."""
        return self.data_bands or tuple(range(1, self.count + 1))

    @property
    def has_mask(self) -> bool:
        """Whether invalid pixels come from a GDAL mask or an alpha band too, not only from values."""
        return self.alpha_band is not None or self.mask_kind != "none"


@dataclass(frozen=True)
class Scaling:
    """How a file's stored values become reflectance: ``reflectance = value x scale + offset``.

    ``source`` is ``"tags"`` (the file's GDAL scale/offset tags), ``"option"`` (the caller's values) or
    ``"auto"`` (chosen from the dtype and values); ``description`` is one line for logs.
    ``band_scales`` / ``band_offsets`` hold one value per data band (they differ only when the file's
    tags differ between bands; ``scale`` and ``offset`` are then band 1's).
    """

    scale: float
    offset: float
    source: str
    description: str = field(default="", compare=False)
    band_scales: tuple[float, ...] = ()
    band_offsets: tuple[float, ...] = ()

    def __str__(self) -> str:
        return self.description or f"reflectance = value x {self.scale:.6g}{_offset_text(self.offset)}"

    def factors(self, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(C, 1, 1) float64 scales and offsets of the data bands at 0-based ``positions``."""
        scales = [self.band_scales[p] if p < len(self.band_scales) else self.scale for p in positions]
        offsets = [self.band_offsets[p] if p < len(self.band_offsets) else self.offset for p in positions]
        return (
            np.asarray(scales, dtype=np.float64)[:, None, None],
            np.asarray(offsets, dtype=np.float64)[:, None, None],
        )

    def apply(self, stored: np.ndarray, positions: Sequence[int] | None = None) -> np.ndarray:
        """Reflectance of (C, h, w) stored values (any dtype) as a new float32 array.

        Computed in float64, then rounded once to float32: the same reflectance stored as x 10000
        integers or as correctly rounded float32 values gives bit-identical arrays (so methods that
        compare values, like STARFM's similarity tests, do not depend on how a file was stored).
        ``positions`` are the bands' 0-based positions among the data bands (all, in order, when None).
        """
        if positions is None:
            positions = range(stored.shape[0])
        scales, offsets = self.factors(list(positions))
        if not (scales != 1).any() and not (offsets != 0).any():
            return stored.astype(np.float32, copy=True)
        values = stored.astype(np.float64)
        if (scales != 1).any():
            values *= scales.astype(np.float64)
        if (offsets != 0).any():
            values += offsets.astype(np.float64)
        return values.astype(np.float32)


@dataclass(frozen=True)
class Raster:
    """A raster read into memory: ``data`` is float32 reflectance (C, H, W), NaN where invalid;
    ``scaling`` says how its stored values became reflectance."""

    data: np.ndarray
    info: RasterInfo
    scaling: Scaling | None = None


def _offset_text(offset: float) -> str:
    if offset < 0:
        return f" - {-offset:.6g}"
    return f" + {offset:.6g}" if offset > 0 else ""


def _open(path: Path) -> rasterio.DatasetReader:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a GeoTIFF file")
    damaged = _DamagedTags(path.name)
    gdal_log = logging.getLogger("rasterio._env")
    level = gdal_log.level
    if not gdal_log.isEnabledFor(logging.WARNING):  # a quiet caller's logging must not hide them
        gdal_log.setLevel(logging.WARNING)
    gdal_log.addFilter(damaged)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unreadable"
        if formats.is_tiff(formats.head(path)):  # a TIFF whose header or directory is cut off or damaged
            raise InputError(
                f"{path}: corrupt or truncated TIFF ({reason}); re-download or re-export it"
            ) from exc
        raise InputError(f"{path}: not a readable raster ({reason})") from exc
    finally:
        gdal_log.removeFilter(damaged)
        gdal_log.setLevel(level)
    if damaged.messages:  # tags GDAL could not read (e.g. the georeferencing of a file cut short)
        src.close()
        reason = damaged.messages[0].split(": ", 1)[-1]
        raise InputError(f"{path}: corrupt or truncated TIFF ({reason}); re-download or re-export it")
    return src


class _DamagedTags(logging.Filter):
    """Collects (and hides) GDAL's warnings about TIFF tags of the file ``name`` it could not read while
    the file opens; a file that lost its georeferencing this way would otherwise open as an
    ungeoreferenced raster. (GDAL's messages name the file: another file opened meanwhile in another
    thread is not blamed.)"""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "IO error during reading" in message and self.name in message:
            self.messages.append(message)
            return False
        return True


def _info(path: Path, src: rasterio.DatasetReader) -> RasterInfo:
    alphas = [
        i for i, interp in zip(src.indexes, src.colorinterp, strict=True) if interp == ColorInterp.alpha
    ]
    data_bands = tuple(i for i in src.indexes if i not in alphas) or tuple(src.indexes)
    alpha_band = alphas[0] if alphas and len(data_bands) < src.count else None
    flags = src.mask_flag_enums[data_bands[0] - 1]
    if MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags:
        mask_kind = "per_dataset"
    elif MaskFlags.all_valid in flags or MaskFlags.nodata in flags or MaskFlags.alpha in flags:
        mask_kind = "none"  # an alpha band GDAL recognised is read as alpha_band
    else:
        mask_kind = "per_band"
    crs = src.crs.to_string() if src.crs else None
    return RasterInfo(
        path=path,
        count=len(data_bands),
        height=src.height,
        width=src.width,
        dtype=src.dtypes[data_bands[0] - 1],
        crs=crs,
        transform=tuple(src.transform)[:6],
        nodata=src.nodata,
        band_names=tuple(src.descriptions[i - 1] for i in data_bands),
        profile=dict(src.profile),
        tags=dict(src.tags()),
        scales=tuple(float(src.scales[i - 1]) for i in data_bands),
        offsets=tuple(float(src.offsets[i - 1]) for i in data_bands),
        data_bands=data_bands,
        alpha_band=alpha_band,
        mask_kind=mask_kind,
    )


def _read_error(path: Path, exc: Exception) -> InputError:
    """A one-line InputError for pixels that cannot be read, with GDAL's reason when it gave one."""
    cause = exc.__cause__ or exc
    reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return InputError(f"{path}: corrupt or truncated raster ({reason}); re-download or re-export it")


def crossed_bands(
    names: Sequence[str | None], reference: Sequence[str | None], available: Sequence[str | None] = ()
) -> bool:
    """Whether bands described as ``names`` would meet ``reference``'s bands of other names although the
    names tell which bands match: a name of one list at another position in the other (MOD09GA's red,
    nir, blue, green, ... against Landsat's blue, green, red, ...), or ``available`` (every band name of
    the file ``names`` were selected from) holding all the reference's names while ``names`` differ
    (the fine image's ``--bands 3,4`` applied to a coarse file in another order). Any case; bands
    without a description tell nothing."""
    own, other, every = (_lower_names(n) for n in (names, reference, available))
    if own == other:
        return False
    if all(other) and other and set(other) <= set(every):
        return True
    return any(name and name in other and other[i] != name for i, name in enumerate(own))


def _lower_names(names: Sequence[str | None]) -> list[str]:
    return [(name or "").strip().lower() for name in names]


def set_band_names(path: str | os.PathLike[str], names: Sequence[str]) -> None:
    """Write band descriptions (e.g. green, red, nir) into a GeoTIFF in place; pixels untouched.

    InputError when the file has another number of bands; OutputError when it cannot be updated.
    """
    path = Path(path)
    count = inspect(path).count
    if count != len(names):
        raise InputError(f"{path}: {count} bands, but {len(names)} names given")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path, "r+") as dst:
                for index, name in enumerate(names, start=1):
                    dst.set_band_description(index, name)
    except (RasterioIOError, OSError) as exc:
        raise OutputError(f"{path}: cannot write its band names ({exc})") from exc


def inspect(path: str | os.PathLike[str]) -> RasterInfo:
    """Read a raster's metadata without its pixels; InputError naming the file if unreadable."""
    path = Path(path)
    with _open(path) as src:
        return _info(path, src)


# --------------------------------------------------------------------------------------------------
# scaling: stored values -> reflectance


def _check_factor(name: str, value: float | None, *, nonzero: bool) -> None:
    if value is None:
        return
    if not math.isfinite(value) or (nonzero and value == 0):
        raise InputError(f"{name} {value}: must be a finite{' nonzero' if nonzero else ''} number")


def _auto_scale(info: RasterInfo, values: np.ndarray | None = None) -> tuple[float, str]:
    """The automatic scale of a file without scale/offset tags, and why (for the description).

    Integer files hold reflectance x 10000. Float files hold reflectance (0..1, e.g. Sentinel-2 or
    Earth Engine exports) or reflectance x 10000: the 99th percentile of |value| over a sample of the
    valid values tells them apart (a few bright or bad pixels cannot tip it).
    """
    if np.dtype(info.dtype).kind != "f":
        return REFLECTANCE_SCALE, "automatic: integer values hold reflectance x 10000"
    level = _float_level(info) if values is None else _percentile_abs(values)
    if level is None:
        return 1.0, "automatic: float values, none valid in the sample: taken as reflectance"
    if level <= REFLECTANCE_LIKE_MAX:
        return 1.0, f"automatic: float values, 99th percentile of |value| {level:.3g}: reflectance already"
    return REFLECTANCE_SCALE, (
        f"automatic: float values, 99th percentile of |value| {level:.4g}: reflectance x 10000"
    )


def _percentile_abs(values: np.ndarray) -> float | None:
    return float(np.percentile(np.abs(values), 99)) if values.size else None


def _float_level(info: RasterInfo) -> float | None:
    """99th percentile of |valid value| of a float file's sample, cached per file version."""
    try:
        stat = info.path.stat()
        key = (str(info.path.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    except OSError:
        key = (str(info.path), 0, 0, 0)
    return _cached_float_level(*key)


@lru_cache(maxsize=256)
def _cached_float_level(path: str, mtime_ns: int, size: int, inode: int) -> float | None:
    """Keyed by the file's version, so a rewritten file is sampled again; readers of many windows
    (streaming) resolve the scale once per file."""
    sample = sample_values(path, scale=1.0)
    return _percentile_abs(sample.values)


def resolve_scaling(
    path_or_info: str | os.PathLike[str] | RasterInfo,
    scale: float | None = None,
    offset: float | None = None,
    *,
    values: np.ndarray | None = None,
) -> Scaling:
    """How a file's stored values become reflectance, the GDAL way (reflectance = value x scale + offset).

    In this order: the file's own GDAL scale/offset tags when any band's differ from (1, 0) (Landsat
    Collection 2 Level-2: x 2.75e-5 - 0.2; Sentinel-2 L2A baseline 04.00+: x 1e-4 - 0.1; MOD09GA:
    x 1e-4) win, per band; else the caller's ``scale`` / ``offset`` (a missing one: automatic scale,
    offset 0); else automatic: integer dtypes x 1e-4, float dtypes x 1.0 when the 99th percentile of
    the sampled |values| is at most 1.5 (reflectance already), else x 1e-4.

    Args:
        path_or_info: the raster, or its :class:`RasterInfo`.
        scale, offset: the caller's values (e.g. a ``--scale`` option), or None.
        values: valid stored values already sampled from the file (saves sampling a float file again).
    Returns:
        a :class:`Scaling`; ``str()`` of it is a one-line description for logs.
    """
    info = path_or_info if isinstance(path_or_info, RasterInfo) else inspect(path_or_info)
    _check_factor("scale", scale, nonzero=True)
    _check_factor("offset", offset, nonzero=False)
    name = info.path.name
    count = info.count
    scales = info.scales or (1.0,) * count
    offsets = info.offsets or (0.0,) * count
    usable = all(
        math.isfinite(s) and s != 0 and math.isfinite(o) for s, o in zip(scales, offsets, strict=True)
    )
    if not usable:
        log.warning("%s: unusable GDAL scale/offset tags %s / %s ignored", info.path, scales, offsets)
    elif any(s != 1.0 or o != 0.0 for s, o in zip(scales, offsets, strict=True)):
        text = f"{name}: reflectance = value x {scales[0]:.6g}{_offset_text(offsets[0])}"
        if len(set(zip(scales, offsets, strict=True))) > 1:
            bands = ", ".join(f"x {s:.6g}{_offset_text(o)}" for s, o in zip(scales, offsets, strict=True))
            text += f" (band 1; per band: {bands})"
        text += " (GDAL scale/offset tags"
        if (scale is not None and scale != scales[0]) or (offset is not None and offset != offsets[0]):
            text += "; the given scale/offset are not used"
        return Scaling(scales[0], offsets[0], "tags", text + ")", tuple(scales), tuple(offsets))
    if scale is not None or offset is not None:
        why = "given scale/offset"
        if scale is None:
            scale, reason = _auto_scale(info, values)
            why = f"given offset; scale {reason}"
        offset = 0.0 if offset is None else offset
        text = f"{name}: reflectance = value x {scale:.6g}{_offset_text(offset)} ({why})"
        return Scaling(scale, offset, "option", text, (scale,) * count, (offset,) * count)
    auto, reason = _auto_scale(info, values)
    text = f"{name}: reflectance = value x {auto:.6g} ({reason})"
    return Scaling(auto, 0.0, "auto", text, (auto,) * count, (0.0,) * count)


# --------------------------------------------------------------------------------------------------
# validity: nodata of any dtype, GDAL masks, alpha bands


def _typed_nodata(nodata: float | None, dtype: str) -> np.generic | None:
    """The nodata value as the file's dtype stores it, or None when no stored value can equal it.

    Comparing in the file's dtype matters for float32 files: their nodata (e.g. -3.4e38 from R/terra
    or ENVI) is reported as a float64 that may differ from the stored float32 bit for bit.
    """
    if nodata is None:
        return None
    kind = np.dtype(dtype).kind
    if math.isnan(nodata):
        return np.dtype(dtype).type(np.nan) if kind == "f" else None
    if kind in "iu":
        limits = np.iinfo(np.dtype(dtype))
        if not float(nodata).is_integer() or not limits.min <= nodata <= limits.max:
            return None  # e.g. -3.4e38 declared on an int16 file: matches no stored value
        return np.dtype(dtype).type(int(nodata))
    if kind == "f":
        with np.errstate(over="ignore"):
            typed = np.dtype(dtype).type(nodata)  # rounds to the nearest float32 as GDAL stores it
        return None if np.isinf(typed) and math.isfinite(nodata) else typed
    return np.dtype(dtype).type(nodata)


def _nodata_pixels(stored: np.ndarray, nodata: np.generic | None) -> np.ndarray:
    """Where ``stored`` (in the file's dtype) equals the typed nodata; all False without one."""
    if nodata is None:
        return np.zeros(stored.shape, dtype=bool)
    if np.isnan(nodata):
        return np.isnan(stored)
    return np.asarray(stored == nodata)


def _unusable(stored: np.ndarray) -> np.ndarray:
    """Where stored values are NaN, infinite or fill values (|value| >= :data:`FILL_MAGNITUDE`): (same
    shape) bool; all False for integer dtypes, whose values are always usable."""
    if stored.dtype.kind != "f":
        return np.zeros(stored.shape, dtype=bool)
    return ~(np.abs(stored) < FILL_MAGNITUDE)  # NaN compares False: unusable too


def _fill_value(nodata: np.generic | None) -> Any:
    return nodata if nodata is not None else 0


def _read_masked(
    src: rasterio.DatasetReader, info: RasterInfo, indexes: Sequence[int], window: Window | None
) -> np.ndarray | None:
    """Pixels invalid by the file's GDAL mask or alpha band: (1 or C, h, w) bool, or None without.

    Only files whose mask flags say there is a mask (or an alpha band) are read: for the others GDAL's
    mask is derived from nodata, and reading it would decode every block a second time.
    """
    if not info.has_mask:
        return None
    options: dict[str, Any] = {} if window is None else {"window": window, "boundless": True}
    invalid: np.ndarray | None = None
    if info.alpha_band is not None:
        # alpha 0 = transparent (no data); GDAL's own alpha masks treat any other value as data
        fill = {"fill_value": 0} if window is not None else {}
        invalid = (src.read(info.alpha_band, **options, **fill) <= 0)[None]
    if info.mask_kind == "per_dataset":
        masked = (src.read_masks(indexes[0], **options) == 0)[None]
        invalid = masked if invalid is None else invalid | masked
    elif info.mask_kind == "per_band":
        masked = src.read_masks(list(indexes), **options) == 0
        invalid = masked if invalid is None else invalid | masked
    return invalid


def _band_positions(info: RasterInfo, bands: Sequence[int] | None) -> list[int]:
    if bands is None:
        return list(range(info.count))
    positions = [int(b) - 1 for b in bands]
    if any(not 0 <= p < info.count for p in positions):
        raise InputError(f"{info.path}: bands {list(bands)} outside 1..{info.count}")
    return positions


def read(
    path: str | os.PathLike[str],
    *,
    scale: float | None = None,
    offset: float | None = None,
    window: Window | None = None,
    bands: Sequence[int] | None = None,
) -> Raster:
    """Read a GeoTIFF (or a window of it) as float32 reflectance (C, H, W), NaN where invalid.

    Args:
        path: raster file.
        scale, offset: reflectance = stored value x scale + offset, used when the file has no GDAL
            scale/offset tags (which win); automatic when None (see :func:`resolve_scaling`: x 1e-4 for
            integer files, x 1 for float files holding reflectance).
        window: rows/columns to read (rasterio Window); the whole raster when None. Parts of the
            window outside the raster are filled with NaN (boundless read).
        bands: 1-based data band numbers to read (alpha bands are not counted); all when None.
    Returns:
        a :class:`Raster`: ``data`` (C, h, w) float32 reflectance, NaN where the stored value is the
        nodata value (compared in the file's dtype), non-finite or a fill value (float |value| >=
        :data:`FILL_MAGNITUDE`), where the GDAL mask or the alpha band says no data, and outside the
        raster; ``scaling`` says how values became reflectance.
    """
    path = Path(path)
    with _open(path) as src:
        info = _info(path, src)
        scaling = resolve_scaling(info, scale, offset)
        positions = _band_positions(info, bands)
        indexes = [info.band_numbers[p] for p in positions]
        nodata = _typed_nodata(info.nodata, info.dtype)
        outside = None
        try:
            if window is None:
                stored = src.read(indexes)
            else:
                stored = src.read(indexes, window=window, boundless=True, fill_value=_fill_value(nodata))
                outside = _outside_mask(window, src.height, src.width)
            masked = _read_masked(src, info, indexes, window)
        except RasterioIOError as exc:
            raise _read_error(path, exc) from exc
    data = scaling.apply(stored, positions)
    invalid = _nodata_pixels(stored, nodata)
    if stored.dtype.kind == "f":
        invalid |= _unusable(stored)
    if masked is not None:
        invalid |= masked
    if outside is not None:
        invalid |= outside[None]
    data[invalid] = np.nan
    data[~np.isfinite(data)] = np.nan
    return Raster(data=data, info=info, scaling=scaling)


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
# A file's own GDAL mask or alpha band invalidates a grid pixel where a masked source pixel contributes
# with a weight above this (in magnitude): far above float32 noise on 255, far below a visible leak.
_MASKED_WEIGHT = 1e-5


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


def pixel_size_ratio(source: RasterInfo, grid: RasterInfo) -> float | None:
    """How many of ``grid``'s pixels one ``source`` pixel spans (side), e.g. 16 for 480 m MODIS over a
    30 m Landsat grid; None when it cannot be told (no CRS, or a footprint that does not transform).

    The source's width in the grid's CRS (its bounds transformed, densified) is divided by its pixel
    count, then by the grid's pixel width.
    """
    if source.crs is None or grid.crs is None:
        return None
    sizes = _pixel_in(source.crs, _bounds(source), source.width, source.height, grid.crs)
    pixel = math.hypot(grid.transform[0], grid.transform[3])
    if sizes is None or pixel <= 0:
        return None
    across, down = sizes
    return float(math.sqrt(abs(across * down)) / pixel)


def _pixel_in(
    crs: Any, bounds: tuple[float, float, float, float], width: int, height: int, grid_crs: Any
) -> tuple[float, float] | None:
    """A raster's mean pixel width and height in another CRS (its bounds transformed, densified), or
    None when they do not transform."""
    from rasterio.warp import transform_bounds

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            left, bottom, right, top = transform_bounds(crs, grid_crs, *bounds, densify_pts=21)
    except Exception:  # PROJ raises several types for coordinates outside a CRS's domain
        return None
    if not all(math.isfinite(v) for v in (left, bottom, right, top)):
        return None
    return (right - left) / max(width, 1), (top - bottom) / max(height, 1)


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
    src: Any, grid: RasterInfo, resampling: str, *, src_nodata: float | None, per_band_nodata: bool = True
) -> Any:
    """A float32 WarpedVRT of ``src`` on ``grid`` (NaN outside the source and where no source pixel
    is valid), with exact coordinate transforms. With ``per_band_nodata``, a pixel that is nodata in
    one band only is excluded from that band's resampling (GDAL's default takes a pixel as nodata only
    when all its bands are, and lets a single band's fill value through)."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    if resampling not in RESAMPLING_METHODS:
        raise InputError(f"resampling {resampling!r}: choose one of {', '.join(RESAMPLING_METHODS)}")
    options: dict[str, Any] = _warp_scales(src, grid)
    if src_nodata is not None:
        options["src_nodata"] = src_nodata
    if per_band_nodata:
        options["UNIFIED_SRC_NODATA"] = "NO"
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


def _warp_scales(src: Any, grid: RasterInfo) -> dict[str, float]:
    """GDAL's XSCALE / YSCALE warp options: grid pixels per source pixel along each axis, for the whole
    warp. Left to itself, GDAL estimates them per chunk from the sizes of the destination and source
    windows, and takes a source window wider than the kernel needs (a small or edge window) for
    downsampling: it widens the kernel, and the same grid pixel gets another value in another window
    (bilinear up to 0.1 reflectance apart on a 6 x 7 grid). In one CRS (or none) the scales are the
    ratios of the pixel sizes (rotated grids too); across CRSs, from the source's footprint in the grid's
    CRS. Empty when they cannot be told."""
    g = Affine(*grid.transform[:6])
    across, down = math.hypot(g.a, g.d), math.hypot(g.b, g.e)
    if not (across > 0 and down > 0):
        return {}
    src_crs = src.crs.to_wkt() if src.crs is not None else None
    if same_crs(src_crs, grid.crs):
        t = src.transform
        x_scale, y_scale = math.hypot(t.a, t.d) / across, math.hypot(t.b, t.e) / down
    elif src.crs is None or grid.crs is None:
        return {}
    else:
        sizes = _pixel_in(src.crs, tuple(src.bounds), src.width, src.height, grid.crs)
        if sizes is None:
            return {}
        x_scale, y_scale = abs(sizes[0]) / across, abs(sizes[1]) / down
    if not (x_scale > 0 and y_scale > 0 and math.isfinite(x_scale) and math.isfinite(y_scale)):
        return {}
    return {"XSCALE": x_scale, "YSCALE": y_scale}


# resampling methods whose grid pixels are not invalidated by a nodata source pixel under their centre
_NO_CENTRE_RULE = ("nearest", "average")


def _warp_values(
    src: Any,
    grid: RasterInfo,
    resampling: str,
    inner: Window,
    *,
    nodata: float | None,
    implied: float | None = None,
) -> np.ndarray:
    """(C, h, w) float32 stored values of ``src`` warped onto the grid window ``inner``, NaN where invalid.

    With a nodata value, a grid pixel whose centre falls on a nodata source pixel (of its band) is
    invalid, as with GDAL's default for nodata in all bands, also when interpolating kernels could
    fill it from the neighbours: a second, nearest-neighbour warp tells where the centres fall
    (``average`` averages the valid pixels of the footprint, as GDAL does for it). ``implied``: the
    nodata of a file that declares none (:func:`implied_nodata`), declared to GDAL for the warp.
    """
    with _warped(src, grid, resampling, src_nodata=implied) as vrt:
        stored = vrt.read(window=inner)
    if (nodata is not None or implied is not None) and resampling not in _NO_CENTRE_RULE:
        with _warped(src, grid, "nearest", src_nodata=implied) as vrt:
            centre = vrt.read(window=inner)
        stored[np.isnan(centre)] = np.nan
    return stored


def implied_nodata(info: RasterInfo) -> float | None:
    """The nodata value of a float file that declares none, for resampling: NaN, or its one fill value.

    A float file without a nodata value may still hold NaN or a fill value (|value| >=
    :data:`FILL_MAGNITUDE`, e.g. -3.4028235e38): neither can be a measurement. Declared to GDAL when the
    file is warped onto another grid, they are resampled as declared nodata is (the valid neighbours
    are used; a grid pixel whose centre falls on one is invalid) instead of spoiling every grid pixel
    they touch. The fill value is declared when a sample of the file (:func:`sample_values`' windows)
    holds exactly one fill value and no NaN; NaN when it holds NaN or several fill values (any other
    fill value then still makes the grid pixels it touches invalid). None for integer files, files with
    a nodata value, and files whose sample holds neither (no second warp for the centre rule: a NaN the
    sample missed spoils the grid pixels it touches).
    """
    if info.nodata is not None or np.dtype(info.dtype).kind != "f":
        return None
    try:
        stat = info.path.stat()
        key = (str(info.path.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    except OSError:
        key = (str(info.path), 0, 0, 0)
    return _cached_implied_nodata(*key, str(info.path))


@lru_cache(maxsize=256)
def _cached_implied_nodata(path: str, mtime_ns: int, size: int, inode: int, given: str) -> float | None:
    """Keyed by the file's version; ``given``: the path as the user gave it, for error messages."""
    with _open(Path(given)) as src:
        indexes = list(range(1, src.count + 1))
        windows = _sample_windows(src.height, src.width, 512 * 512, 8)
        try:
            parts = [src.read(indexes, window=w) for w in windows] if windows else [src.read(indexes)]
        except RasterioIOError as exc:
            raise _read_error(Path(given), exc) from exc
    unusable = np.concatenate([p[_unusable(p)] for p in parts])
    if not unusable.size:
        return None
    fills = np.unique(unusable[np.isfinite(unusable)])
    if fills.size == 1 and not np.isnan(unusable).any():
        return float(fills[0])
    return math.nan


_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}


def _band_vrt(
    src: rasterio.DatasetReader, sources: Sequence[tuple[str, str]], *, nodata: float | None
) -> str:
    """A GDAL VRT (XML) over ``src`` made of the given bands: (source band, GDAL data type) pairs.

    A source band is a band number, ``mask,<n>`` (band n's GDAL mask: 0 = no data, 255 = data), or
    ``alpha,<n>`` (band n, 0 -> 0 and anything positive -> 255). The VRT declares ``nodata`` and no mask,
    so GDAL's warper masks exactly what the caller asks for (it ignores a dataset mask when a nodata
    value is set, and an int16 alpha band blanks a float32 NaN warp entirely: GDAL 3.10).
    """
    filename = escape(str(Path(src.name).resolve()))
    parts = [f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">']
    if src.crs:
        parts.append(f"<SRS>{escape(src.crs.to_wkt())}</SRS>")
    parts.append(
        "<GeoTransform>" + ", ".join(repr(float(v)) for v in src.transform.to_gdal()) + "</GeoTransform>"
    )
    for number, (band, gdal_type) in enumerate(sources, start=1):
        parts.append(f'<VRTRasterBand dataType="{gdal_type}" band="{number}">')
        if nodata is not None:
            parts.append(f"<NoDataValue>{nodata!r}</NoDataValue>")
        lut = ""
        if band.startswith("alpha,"):
            band, lut = band.split(",", 1)[1], "<LUT>0:0,1:255</LUT>"
        parts.append(
            f'<ComplexSource><SourceFilename relativeToVRT="0">{filename}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand>{lut}</ComplexSource></VRTRasterBand>"
        )
    parts.append("</VRTDataset>")
    return "".join(parts)


def _warp_masked(
    src: rasterio.DatasetReader, info: RasterInfo, grid: RasterInfo, resampling: str, inner: Window
) -> np.ndarray:
    """Warp a file with a GDAL mask or alpha band: (C, h, w) float32 stored values, NaN where invalid.

    The data bands are warped through a VRT that declares only the nodata value; the mask (and alpha)
    bands, as 0 / 255 values, through a second VRT with the same resampling. A grid pixel is invalid
    where a masked source pixel contributes to it with a weight above 1e-5 in magnitude (the data
    warp does not know the mask), so at most 1e-5 of a cloud's fill value reaches a valid pixel.
    """
    data_type = _GDAL_TYPES.get(info.dtype, "Float64")
    implied = implied_nodata(info)
    declared = info.nodata if implied is None else implied
    data_xml = _band_vrt(src, [(str(i), data_type) for i in info.band_numbers], nodata=declared)
    shared: list[tuple[str, str]] = []
    if info.alpha_band is not None:
        shared.append((f"alpha,{info.alpha_band}", "Byte"))
    if info.mask_kind == "per_dataset":
        shared.append((f"mask,{info.band_numbers[0]}", "Byte"))
    per_band = [(f"mask,{i}", "Byte") for i in info.band_numbers] if info.mask_kind == "per_band" else []
    with rasterio.open(data_xml) as data_vrt:
        stored = _warp_values(data_vrt, grid, resampling, inner, nodata=declared)
    mask_xml = _band_vrt(src, shared + per_band, nodata=None)
    with rasterio.open(mask_xml) as mask_vrt, _warped(mask_vrt, grid, resampling, src_nodata=None) as vrt:
        kept = vrt.read(window=inner)
    # 255 where every contributing source pixel is data (kernels with negative lobes overshoot it near
    # a masked pixel, hence both sides); NaN outside the mask's footprint
    invalid = ~(np.abs(kept - 255.0) <= 255.0 * _MASKED_WEIGHT)
    if shared:
        stored[:, invalid[: len(shared)].any(axis=0)] = np.nan
    if per_band:
        stored[invalid[len(shared) :]] = np.nan
    return stored


def read_on_grid(
    path: str | os.PathLike[str],
    grid: RasterInfo,
    *,
    scale: float | None = None,
    offset: float | None = None,
    window: Window | None = None,
    resampling: str = "bilinear",
) -> np.ndarray:
    """Read a raster onto another raster's grid (reprojected if needed) as float32 reflectance.

    A raster already on ``grid`` (:func:`same_grid`) is read as :func:`read` does. Any other raster is
    warped onto the grid with GDAL (``resampling``, computed in float32 on stored values, then scaled:
    the scaling is linear so it commutes with resampling), with exact per-pixel coordinate transforms
    so that a window equals the same crop of a whole read. The source's nodata is honoured (resampling
    uses the valid neighbours), and so are its GDAL mask and alpha band (a grid pixel that a masked
    source pixel contributes to is invalid). A float file without a nodata value has NaN, or its one
    fill value (|value| >= :data:`FILL_MAGNITUDE`), taken as its nodata (:func:`implied_nodata`); other
    NaN/inf and fill values make every grid pixel they contribute to invalid (GDAL carries a NaN into
    the resampled value, and a fill value keeps the result beyond the threshold).

    Args:
        path: source raster (any size, resolution, CRS).
        grid: the target grid (e.g. fine t1's :class:`RasterInfo`).
        scale, offset: as for :func:`read` (the file's scale/offset tags win; automatic when None).
        window: rows/columns of the grid (may extend outside it: NaN there); the whole grid when None.
        resampling: one of :data:`RESAMPLING_METHODS`.
    Returns:
        (C, h, w) float32 reflectance on the grid (window), NaN where nodata, masked, non-finite, a
        fill value or outside the source's footprint.
    """
    path = Path(path)
    with _open(path) as src:
        info = _info(path, src)
        if same_grid(info, grid):
            return read(path, scale=scale, offset=offset, window=window).data
        scaling = resolve_scaling(info, scale, offset)
        height, width = _window_shape(window, grid)
        data = np.full((info.count, height, width), np.nan, dtype=np.float32)
        inner, place = _clip_window(window, grid)
        if inner is None:
            return data
        try:
            if info.has_mask:
                stored = _warp_masked(src, info, grid, resampling, inner)
            else:
                # the nodata value is compared by GDAL in the source's dtype (float32 -3.4e38 included)
                stored = _warp_values(
                    src, grid, resampling, inner, nodata=info.nodata, implied=implied_nodata(info)
                )
        except RasterioIOError as exc:
            raise _read_error(path, exc) from exc
    stored[_unusable(stored)] = np.nan
    stored = scaling.apply(stored)
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
            with _warped(src, grid, resampling, src_nodata=src_nodata, per_band_nodata=False) as vrt:
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

    ``values`` holds the valid stored values (finite, not a fill value, not nodata, not masked) of all
    data bands, 1-D float64, and ``reflectance`` the same values as float32 reflectance (``scaling``, per
    band); ``n_pixels`` the sampled values in all (valid or not), ``n_nodata`` those equal to the nodata
    value, ``n_nonfinite`` the NaN/inf and fill values (|value| >= :data:`FILL_MAGNITUDE`) that are not
    the declared nodata, ``n_masked`` the other values that the GDAL mask or alpha band marks as no
    data. ``complete`` is True when every pixel was read
    (small rasters).
    """

    path: Path
    dtype: str
    nodata: float | None
    values: np.ndarray
    n_pixels: int
    n_nodata: int
    n_nonfinite: int
    complete: bool
    n_masked: int = 0
    scaling: Scaling | None = None
    reflectance: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32), repr=False)


def _count_invalid(
    stored: np.ndarray, nodata: float | None, masked: np.ndarray | None = None, *, dtype: str | None = None
) -> tuple[np.ndarray, int, int, int]:
    """Valid values and the counts of nodata, unusable (NaN/inf or fill values, :func:`_unusable`) and
    masked ones (each value counted once).

    ``nodata`` is compared in ``dtype`` (the file's; ``stored``'s when None); ``masked`` (broadcast to
    ``stored``) is True where the GDAL mask or alpha band says no data.
    """
    is_nodata = _nodata_pixels(stored, _typed_nodata(nodata, dtype or str(stored.dtype)))
    nonfinite = _unusable(stored) & ~is_nodata
    valid = ~is_nodata & ~nonfinite
    n_masked = 0
    if masked is not None:
        masked = np.broadcast_to(masked, stored.shape) & valid
        n_masked = int(masked.sum())
        valid &= ~masked
    return valid, int(is_nodata.sum()), int(nonfinite.sum()), n_masked


def _sample_windows(height: int, width: int, max_pixels: int, grid: int) -> list[Window] | None:
    """``grid`` x ``grid`` square windows spread evenly over the raster, or None to read all of it."""
    if height * width <= max_pixels:
        return None
    side = max(1, int(np.sqrt(max_pixels / grid**2)))
    rows = np.linspace(0, max(height - side, 0), grid).astype(int)
    cols = np.linspace(0, max(width - side, 0), grid).astype(int)
    return [Window(int(c), int(r), min(side, width), min(side, height)) for r in rows for c in cols]


def sample_values(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = 512 * 512,
    grid: int = 8,
    scale: float | None = None,
    offset: float | None = None,
) -> ValueSample:
    """Sample a raster's stored values cheaply: all pixels when it has at most ``max_pixels`` per band,
    else ``grid`` x ``grid`` square windows spread evenly over it, about ``max_pixels`` per band in all.

    Windows, not a decimated read: decimating a large GeoTIFF without overviews decodes every block
    (seconds and GDAL's whole block cache for a 10980 x 10980 scene); the windows touch a few blocks.
    Only data bands are sampled; the GDAL mask and alpha band are read over the same windows when the
    file has them. ``scale`` / ``offset`` give the sample's :class:`Scaling` (see :func:`read`).
    """
    path = Path(path)
    with _open(path) as src:
        info = _info(path, src)
        indexes = list(info.band_numbers)
        windows = _sample_windows(src.height, src.width, max_pixels, grid)
        try:
            if windows is None:
                stored = src.read(indexes)
                masked = _read_masked(src, info, indexes, None)
            else:
                stored = np.concatenate(
                    [src.read(indexes, window=w).reshape(len(indexes), -1) for w in windows], axis=1
                )[:, None]
                masked = None
                if info.has_mask:
                    parts = [_read_masked(src, info, indexes, w) for w in windows]
                    masked = np.concatenate(
                        [p.reshape(p.shape[0], -1) for p in parts if p is not None], axis=1
                    )
                    masked = masked[:, None]
        except RasterioIOError as exc:
            raise _read_error(path, exc) from exc
    valid, n_nodata, n_nonfinite, n_masked = _count_invalid(stored, info.nodata, masked, dtype=info.dtype)
    values = stored[valid].astype(np.float64)
    scaling = resolve_scaling(info, scale, offset, values=values if stored.dtype.kind == "f" else None)
    reflectance = scaling.apply(stored)[valid]
    return ValueSample(
        path=path,
        dtype=info.dtype,
        nodata=info.nodata,
        values=values,
        n_pixels=int(stored.size),
        n_nodata=n_nodata,
        n_nonfinite=n_nonfinite,
        complete=windows is None,
        n_masked=n_masked,
        scaling=scaling,
        reflectance=reflectance,
    )


def has_valid_pixel(path: str | os.PathLike[str]) -> bool:
    """Whether any pixel of any data band is finite, not a fill value, not nodata and not masked (block
    by block; stops at the first)."""
    path = Path(path)
    with _open(path) as src:
        info = _info(path, src)
        indexes = list(info.band_numbers)
        try:
            for _, block in src.block_windows(indexes[0]):
                masked = _read_masked(src, info, indexes, block)
                valid, _, _, _ = _count_invalid(src.read(indexes, window=block), info.nodata, masked)
                if valid.any():
                    return True
        except RasterioIOError as exc:
            raise _read_error(path, exc) from exc
    return False


# --------------------------------------------------------------------------------------------------
# output: nodata valid for the output dtype, atomic and checked writes


def _holds(dtype: str, value: float) -> bool:
    """Whether ``dtype`` can store ``value`` exactly (NaN only in floats)."""
    kind = np.dtype(dtype).kind
    if kind == "f":
        with np.errstate(over="ignore"):
            return not math.isfinite(value) or bool(np.isfinite(np.dtype(dtype).type(value)))
    if math.isnan(value) or not float(value).is_integer():
        return False
    limits = np.iinfo(np.dtype(dtype))
    return bool(limits.min <= value <= limits.max)


def _output_nodata(reference: RasterInfo, dtype: str, nodata: float | None = None) -> float:
    """The nodata value of an output of ``dtype`` on the reference's grid.

    The caller's ``nodata`` when given (InputError if ``dtype`` cannot hold it); else, for float outputs,
    NaN; for integer outputs, the reference's nodata when the reference has the same dtype (same kind of
    values, e.g. -9999 of an int16 reflectance x 10000 product), else -32768 (int16; the dtype's minimum
    for other signed integers, its maximum for unsigned ones). An input's nodata of another dtype
    (NaN, -3.4e38, 65535) is never copied: the output dtype may not hold it, and its units differ.
    """
    if nodata is not None:
        if not _holds(dtype, nodata):
            raise InputError(f"nodata {nodata}: a {dtype} output cannot store it; choose a {dtype} value")
        return float(nodata)
    if np.dtype(dtype).kind == "f":
        return float("nan")
    if reference.nodata is not None and reference.dtype == dtype and _holds(dtype, reference.nodata):
        return float(reference.nodata)
    limits = np.iinfo(np.dtype(dtype))
    if dtype == "int16":
        return float(DEFAULT_INT16_NODATA)
    return float(limits.min if limits.min < 0 else limits.max)


def _stored(block: np.ndarray, *, dtype: str, nodata: float | None) -> np.ndarray:
    """Stored values of reflectance: integer outputs hold round(reflectance x 10000) clipped to the
    dtype, float outputs reflectance; NaN pixels become ``nodata``, and a valid value equal to
    ``nodata`` is nudged by one step (one unit, one float ulp) towards the dtype's other values."""
    stored = from_reflectance(block, scale=REFLECTANCE_SCALE, dtype=dtype)
    if nodata is None or math.isnan(nodata):
        return stored
    missing = np.isnan(block)
    collide = (stored == stored.dtype.type(nodata)) & ~missing
    if collide.any():
        if stored.dtype.kind == "f":
            toward = np.inf if nodata <= 0 else -np.inf
            stored[collide] = np.nextafter(stored.dtype.type(nodata), stored.dtype.type(toward))
        else:
            up = nodata < np.iinfo(stored.dtype).max
            stored[collide] = int(nodata) + (1 if up else -1)
    stored[missing] = nodata
    return stored


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
    with _open_output(path, profile, band_names=["quality"], tags=tags, overwrite=overwrite) as dst:
        _write(path, dst, flags.astype(np.uint8)[None])
    return path


# profile keys of the reference that must not carry over to an output of another dtype / band count
_SOURCE_ONLY_KEYS = ("photometric", "alpha", "nbits", "jpeg_quality", "jpegtablesmode", "quality", "zlevel")


def output_profile(
    reference: RasterInfo,
    *,
    count: int,
    dtype: str = "int16",
    nodata: float | None = None,
    blocksize: int = 256,
) -> dict[str, Any]:
    """A GeoTIFF profile for an output on the reference's grid: CRS and transform copied.

    Tiled (``blocksize`` square, when the image is at least that large) and DEFLATE-compressed. Nodata
    is ``nodata`` when given, else none when the reference declares none, else a value ``dtype`` can
    hold (:func:`_output_nodata`: the reference's own only for the same dtype; NaN for floats, -32768
    for int16).
    """
    profile = dict(reference.profile)
    for key in _SOURCE_ONLY_KEYS:
        profile.pop(key, None)
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
    if nodata is not None:
        profile["nodata"] = _output_nodata(reference, dtype, nodata)
    else:
        profile["nodata"] = _output_nodata(reference, dtype) if reference.nodata is not None else None
    return profile


def check_writable(
    path: str | os.PathLike[str], *, overwrite: bool, suffixes: Sequence[str] | None = None
) -> Path:
    """Refuse an output that cannot be written, before any work: an existing file (unless
    ``overwrite``), a folder, a missing or unwritable folder, a name too long for the filesystem, and
    (when ``suffixes`` is given, e.g. ``(".tif", ".tiff")``) a name with another suffix."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in {s.lower() for s in suffixes}:
        raise InputError(f"{path}: the output must be a GeoTIFF named *{' or *'.join(suffixes)}")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX") if folder.is_dir() else 255
    except (OSError, ValueError):  # not reported by this filesystem / platform
        name_max = 255
    if len(os.fsencode(path.name)) > name_max:  # checked first: stat() of such a name fails
        raise InputError(
            f"{path.parent / (path.name[:40] + '...')}: file name too long for the filesystem "
            f"({len(os.fsencode(path.name))} bytes; at most {name_max}); give a shorter name"
        )
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: output exists; pass --overwrite to replace it")
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
    overwrite: bool = False,
    band_names: Sequence[str | None] | None = None,
    tags: dict[str, str] | None = None,
    nodata: float | None = None,
) -> Path:
    """Write a (C, H, W) reflectance array on the reference's grid, atomically.

    Integer dtypes store round(reflectance x 10000) clipped to the dtype's range, with GDAL scale 1e-4
    and offset 0 tags (so GDAL-aware tools and :func:`read` get reflectance back); float dtypes store
    reflectance itself. NaN pixels become nodata, declared when there are some or the reference declares
    one: ``nodata`` when given, else a value the dtype holds (:func:`_output_nodata`: NaN for floats,
    -32768 for int16 unless the reference is int16 with its own). Valid values never equal it (nudged
    by one step). Without ``overwrite``, the write fails if the output appeared meanwhile.

    Args:
        nodata: the output's nodata value; a value ``dtype`` cannot hold is an InputError.
    Raises:
        OutputExistsError: ``path`` exists (or appeared during the write) and not ``overwrite``.
        OutputError: the file cannot be written (disk full, file size limit, permission...); nothing is
            left behind.
    """
    path = check_writable(path, overwrite=overwrite)
    if reflectance.ndim != 3:
        raise ValueError(f"write_like expects (C, H, W), got shape {reflectance.shape}")
    if reflectance.shape[1:] != (reference.height, reference.width):
        raise ValueError(
            f"{path}: array size {reflectance.shape[1:]} differs from the reference "
            f"{reference.path} size {(reference.height, reference.width)}"
        )
    # a nodata value is declared only when needed: gaps, a reference that declares one, or the caller's
    declare = nodata is not None or reference.nodata is not None or bool(np.isnan(reflectance).any())
    out_nodata = _output_nodata(reference, dtype, nodata) if declare else None
    stored = _stored(reflectance, dtype=dtype, nodata=out_nodata)
    count = reflectance.shape[0]
    profile = output_profile(reference, count=count, dtype=dtype)
    profile["nodata"] = out_nodata
    names = band_names if band_names is not None else reference.band_names
    with _open_output(
        path, profile, band_names=names[:count], tags=tags, overwrite=overwrite, **_scale_tags(dtype, count)
    ) as dst:
        _write(path, dst, stored)
    return path


def _scale_tags(dtype: str, count: int) -> dict[str, Any]:
    """GDAL scale/offset tags of an output: reflectance x 10000 for integer dtypes, none for floats."""
    if np.dtype(dtype).kind not in "iu":
        return {}
    return {"scales": [REFLECTANCE_SCALE] * count, "offsets": [0.0] * count}


# --------------------------------------------------------------------------------------------------
# write failures: one-line errors, and a check of the written file before it is published

_ERRNO_TEXTS = {
    code: os.strerror(code) for code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EROFS)
}


def _write_failure(path: Path, written: Path, exc: BaseException | None) -> OutputError:
    """A one-line OutputError for a failed GeoTIFF write of ``path`` (temporary file ``written``).

    GDAL rarely passes the system's reason on ("Write failed", "Write error at scanline"), so the reason
    is looked for in its messages, then in the circumstances: the file size limit (``ulimit -f``) reached,
    or the disk full.
    """
    messages: list[str] = []
    seen = exc
    while seen is not None:
        messages.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    text = " ".join(messages)
    for code, words in _ERRNO_TEXTS.items():
        if words.lower() in text.lower():
            return output_error(path, OSError(code, words))
    folder = path.parent if str(path.parent) else Path(".")
    try:
        size = written.stat().st_size
    except OSError:
        size = 0
    limit = file_size_limit()
    if limit is not None and size >= limit - 65536:  # within a write of the limit: it stopped there
        return output_error(path, OSError(errno.EFBIG, os.strerror(errno.EFBIG)))
    try:
        if shutil.disk_usage(folder).free < 1 << 20:
            return output_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    except OSError:
        pass
    reason = next((m.splitlines()[0] for m in messages if m), "incomplete file")
    return OutputError(
        f"{path}: writing failed ({reason}); check free disk space, quota and file size limits"
    )


class _IncompleteWriteError(Exception):
    """The written GeoTIFF misses blocks: GDAL reported a write error without raising it."""


def _check_written(written: Path) -> None:
    """Raise if a closed GeoTIFF is not complete: every block of every band must lie inside the file.

    GDAL flushes its block cache when the file is closed, and rasterio does not raise the write errors
    met then (disk full, file size limit): the file is then truncated or holds blocks never written.
    Reading the block offsets costs ~10 microseconds per block, no decoding.
    """
    size = written.stat().st_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(written)
    with src:
        for band in src.indexes:
            block_height, block_width = src.block_shapes[band - 1]
            for y in range(math.ceil(src.height / block_height)):
                for x in range(math.ceil(src.width / block_width)):
                    start = src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=band)
                    length = src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=band)
                    if not start or not length or int(start) + int(length) > size:
                        raise _IncompleteWriteError(f"block {x},{y} of band {band} missing or truncated")


_CHECK_ERRORS: tuple[type[Exception], ...] = (*_GDAL_ERRORS, _IncompleteWriteError)


@contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """Send what native code (libtiff) prints on the process's stderr meanwhile to the log (DEBUG).

    GDAL's bundled libtiff reports write failures (a full disk, the file size limit) straight to file
    descriptor 2, e.g. "_tiffWriteProc: File too large.", around the one-line error we raise. Only GDAL
    calls run inside this (never a progress bar); Python's own stderr is flushed first.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if line.strip():
                    log.debug("GDAL: %s", line)


def _write(path: Path, dst: Any, stored: np.ndarray, window: Window | None = None) -> None:
    """``dst.write`` with GDAL's write errors turned into a one-line OutputError naming ``path``."""
    try:
        with native_stderr_to_log():
            dst.write(stored, window=window)
    except _GDAL_ERRORS as exc:
        raise _write_failure(path, Path(dst.name), exc) from exc


def _close_quietly(dst: Any) -> None:
    try:
        dst.close()
    except Exception:  # the file is discarded; its own error would hide the one being reported
        log.debug("%s: error closing a discarded output", dst.name, exc_info=True)


@contextmanager
def _open_output(
    path: Path,
    profile: dict[str, Any],
    *,
    band_names: Sequence[str | None],
    tags: dict[str, str] | None,
    cog: bool = False,
    overwrite: bool = True,
    scales: Sequence[float] | None = None,
    offsets: Sequence[float] | None = None,
) -> Iterator[Any]:
    """An open rasterio writer on a temporary file, published onto ``path`` when the block succeeds.

    Band descriptions, tags and GDAL scale/offset tags are set after the caller's writes; the closed
    file is checked (every block written: GDAL does not raise errors met when it flushes at close), and
    ``cog`` converts it to a Cloud Optimized GeoTIFF (GDAL's COG driver, with overviews) before
    publication (exclusive unless ``overwrite``: see :class:`~stfusion.atomic.atomic_path`). A write
    that fails raises OutputError and leaves no file.
    """
    with warnings.catch_warnings(), atomic_path(path, overwrite=overwrite) as tmp:
        # a reference without georeferencing (e.g. the ESTARFM test data) gives an output without it
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        target = tmp.with_name(tmp.name + ".gtiff") if cog else tmp
        try:
            try:
                dst = rasterio.open(target, "w", **profile)
            except _GDAL_ERRORS as exc:
                raise _write_failure(path, target, exc) from exc
            try:
                yield dst
            except BaseException:
                with native_stderr_to_log():
                    _close_quietly(dst)  # the caller's error is the one to report
                raise
            try:
                with native_stderr_to_log():
                    for index, name in enumerate(band_names, start=1):
                        if name:
                            dst.set_band_description(index, name)
                    if tags:
                        dst.update_tags(**tags)
                    if scales is not None:
                        dst.scales = tuple(scales)
                    if offsets is not None:
                        dst.offsets = tuple(offsets)
                    dst.close()
            except _GDAL_ERRORS as exc:
                with native_stderr_to_log():
                    _close_quietly(dst)
                raise _write_failure(path, target, exc) from exc
            try:
                _check_written(target)
                if cog:
                    with native_stderr_to_log():
                        rasterio.shutil.copy(target, tmp, driver="COG", compress="DEFLATE", blocksize=512)
                    _check_written(tmp)
            except _CHECK_ERRORS as exc:
                raise _write_failure(path, tmp, exc) from exc
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
    rows: tuple[int, int] | None = None,
    overwrite: bool = False,
    band_names: Sequence[str | None] | None = None,
    tags: dict[str, str] | None = None,
    cog: bool = False,
    nodata: float | None = None,
) -> Iterator[Callable[[int, np.ndarray], None]]:
    """Open a GeoTIFF on the reference's grid and yield ``write(first_row, block)`` for row blocks.

    ``block`` is (C, n, W) float32 reflectance (NaN = nodata) for scene rows [first_row, first_row + n).
    ``rows`` restricts the file to scene rows [rows[0], rows[1]) (its transform is shifted to match),
    for one process's part of a scene. Stored like :func:`write_like` (rounded, clipped, tiled,
    DEFLATE, scale tags); nodata is ``nodata`` when given, else a value the dtype
    holds (NaN for floats; -32768 for int16 unless the reference is int16 with its own). The file
    appears under ``path`` only when the ``with`` block ends without an exception (and, without
    ``overwrite``, only if no other run wrote ``path`` meanwhile); ``cog`` converts it to a Cloud
    Optimized GeoTIFF (GDAL's COG driver, with overviews) before that.
    """
    path = check_writable(path, overwrite=overwrite)
    first, stop = rows if rows is not None else (0, reference.height)
    out_nodata = _output_nodata(reference, dtype, nodata)
    profile = output_profile(reference, count=count, dtype=dtype, nodata=out_nodata)
    a, b, c, d, e, f = reference.transform
    profile.update(height=stop - first, transform=Affine(a, b, c + b * first, d, e, f + e * first))
    if stop - first < 256:
        profile.update(tiled=False)
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
    names = band_names if band_names is not None else reference.band_names
    with _open_output(
        path,
        profile,
        band_names=names[:count],
        tags=tags,
        cog=cog,
        overwrite=overwrite,
        **_scale_tags(dtype, count),
    ) as dst:

        def write(row: int, block: np.ndarray) -> None:
            if block.shape[0] != count or block.shape[2] != reference.width:
                raise ValueError(f"block shape {block.shape} does not fit ({count}, n, {reference.width})")
            if row < first or row + block.shape[1] > stop:
                raise ValueError(f"rows {row}..{row + block.shape[1]} outside {first}..{stop}")
            for top in range(0, block.shape[1], 256):  # in chunks: the conversion's temporaries stay small
                chunk = block[:, top : top + 256]
                stored = _stored(chunk, dtype=dtype, nodata=out_nodata)
                window = Window(0, row - first + top, reference.width, chunk.shape[1])
                _write(path, dst, stored, window)

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

    Parts must tile the scene's rows exactly; pixels are copied unchanged, block by block, with the
    parts' nodata (when the dtype holds it), band descriptions, tags and scale/offset tags.
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
        scales, offsets = list(src.scales), list(src.offsets)
    if nodata is not None and not _holds(dtype, nodata):
        nodata = None  # not one of ours: the output declares a valid one instead
    profile = output_profile(reference, count=count, dtype=dtype)
    profile["nodata"] = nodata if nodata is not None else _output_nodata(reference, dtype)
    path = check_writable(path, overwrite=overwrite)
    tagged = any(s != 1.0 for s in scales) or any(o != 0.0 for o in offsets)
    with _open_output(
        path,
        profile,
        band_names=names,
        tags=tags,
        cog=cog,
        overwrite=overwrite,
        scales=scales if tagged else None,
        offsets=offsets if tagged else None,
    ) as dst:
        for part, (first, stop) in parts:
            with _open(part) as src:
                for top in range(0, stop - first, rows_per_block):
                    n = min(rows_per_block, stop - first - top)
                    try:
                        block = src.read(window=Window(0, top, reference.width, n))
                    except RasterioIOError as exc:
                        raise _read_error(part, exc) from exc
                    _write(path, dst, block, Window(0, first + top, reference.width, n))
    return path
