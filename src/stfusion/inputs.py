"""Read a fusion case's images on the fine grid, whole or window by window.

:class:`CaseReader` is the one place where a case's files become pixels: it validates the case once
(:func:`~stfusion.scenes.check_case`, plus value checks on a sample of each file), takes fine t1's grid
as the case's grid, and returns any role (``coarse_t1``, ``fine_t1``, ``coarse_t2``, ``fine_t2``) as
float32 reflectance (C, h, w) with NaN where the pixel is invalid (nodata, non-finite, masked, outside
the raster). Coarse images off the fine grid (native MODIS resolution, another CRS or extent) are
reprojected onto it as they are read. Whole-scene readers (``workflows.read_case``,
``dataset.load_case``) and the streaming predictor (``streaming``) both go through it, and a window read
equals the same crop of a whole-scene read (reprojected images and masks included).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from stfusion import raster
from stfusion.blocks import Block, ReferencePair
from stfusion.errors import InputError, NoValidPixelError
from stfusion.scenes import (
    MIN_COARSE_OVERLAP,
    FusionCase,
    check_case,
    coarse_on_fine_grid,
    is_coarse_role,
    pair_roles,
)
from stfusion.tiling import Window

log = logging.getLogger(__name__)

#: Bits of the quality band (:func:`quality_flags`): which input is invalid at a pixel. 0 = all valid.
#: Further reference pairs take the next bits (coarse_t3 8, fine_t3 16, ...: :func:`quality_bit`).
QUALITY_BITS: dict[str, int] = {"fine_t1": 1, "coarse_t1": 2, "coarse_t2": 4}
#: Reflectance above which values look like digital numbers (or a wrong --scale), not reflectance.
DN_LIKE_REFLECTANCE = 1.5
#: Reflectance below which a whole image looks like reflectance floats divided by 10000 once more.
TINY_REFLECTANCE = 0.002
#: Ratio of typical levels above which a date's fine and coarse images look differently scaled.
SCALE_MISMATCH_RATIO = 3.0
#: Median reflectance below which an image looks wrongly scaled or offset: no scene is mostly negative.
LOW_MEDIAN_REFLECTANCE = -0.02
#: Reflectance that almost every value of an integer file read as x 10000 exceeds when it holds Landsat
#: Collection 2 digital numbers (reflectance 0 is stored as 7273 there): real scenes have dark pixels.
C2_FLOOR_REFLECTANCE = 0.7
#: The largest such value (uint16 65535 read as x 10000): above it the file holds something else.
C2_CEILING_REFLECTANCE = 6.5536
#: Reflectance below which a value is impossible (surface reflectance products stay above about -0.01):
#: an undeclared integer nodata/fill value (e.g. -9999, MODIS -28672) read as data.
IMPOSSIBLE_REFLECTANCE = -0.5


def row_windows(height: int, width: int, rows: int = 256) -> list[Window]:
    """Full-width windows of ``rows`` rows (the last one shorter) covering a height x width grid."""
    return [Window(top, 0, min(rows, height - top), width) for top in range(0, height, rows)]


@dataclass(frozen=True)
class ReadOptions:
    """How a case's files become pixels, shared by every case of a run.

    Attributes:
        resampling: method for coarse images (and masks) that are not on the fine grid, one of
            :data:`stfusion.raster.RESAMPLING_METHODS`; bilinear by default.
        min_overlap: the fraction of the fine grid a coarse image's footprint must cover (0..1).
        check_values: sample each file once for all-nodata / DN-like / wrong-scale values.
        fine_scale, coarse_scale: reflectance per stored unit of the fine and the coarse images, used
            for files without GDAL scale/offset tags; None = chosen per file (:mod:`stfusion.raster`).
        fine_offset, coarse_offset: reflectance added after the scale (reflectance = value x scale +
            offset) for files without GDAL scale/offset tags, e.g. Landsat Collection 2 Level-2 scale
            2.75e-5 and offset -0.2, Sentinel-2 L2A (baseline 04.00+) 1e-4 and -0.1; None = 0. An
            offset needs the same images' scale: it belongs to that scale, never to an automatic one.
        fine_bands, coarse_bands: bands to use, in order, by 1-based number or description (e.g. a
            MOD09GA file as ("3", "4", "1", "2", "6", "7") to match Landsat bands 1-5, 7); None = all.
        coarse_ratio: coarse / fine pixel size (e.g. 16 for 480 m MODIS and 30 m Landsat), for methods
            and metrics that need it; None = from the data (:attr:`CaseReader.coarse_ratio`).
    """

    resampling: str = "bilinear"
    min_overlap: float = MIN_COARSE_OVERLAP
    check_values: bool = True
    fine_scale: float | None = None
    coarse_scale: float | None = None
    fine_offset: float | None = None
    coarse_offset: float | None = None
    fine_bands: tuple[str, ...] | None = None
    coarse_bands: tuple[str, ...] | None = None
    coarse_ratio: float | None = None

    def bands_for(self, role: str) -> tuple[str, ...] | None:
        """The band selection of a role's files (1-based numbers or descriptions), None = all bands."""
        return self.coarse_bands if is_coarse_role(role) else self.fine_bands

    def scale_for(self, role: str) -> float | None:
        """The explicit scale of a role's files (None: the file's tags or the automatic choice)."""
        return self.coarse_scale if is_coarse_role(role) else self.fine_scale

    def offset_for(self, role: str) -> float | None:
        """The explicit offset of a role's files (None: the file's tags, else 0), used with its scale."""
        return self.coarse_offset if is_coarse_role(role) else self.fine_offset

    def __post_init__(self) -> None:
        if self.resampling not in raster.RESAMPLING_METHODS:
            raise InputError(
                f"resampling {self.resampling!r}: choose one of {', '.join(raster.RESAMPLING_METHODS)}"
            )
        if not 0.0 <= self.min_overlap <= 1.0:
            raise InputError(f"min overlap {self.min_overlap}: must be a fraction within 0..1")
        for name in ("fine_scale", "coarse_scale"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise InputError(f"{name.replace('_', ' ')} {value}: must be a positive number")
        for kind in ("fine", "coarse"):
            offset = getattr(self, f"{kind}_offset")
            if offset is None:
                continue
            if not np.isfinite(offset):
                raise InputError(f"{kind} offset {offset}: must be a finite number")
            if getattr(self, f"{kind}_scale") is None:
                raise InputError(
                    f"{kind} offset {offset:g} (--offset or --{kind}-offset) needs a {kind} scale given the "
                    f"same way (--scale or --{kind}-scale; reflectance = value x scale + offset), e.g. "
                    f"--{kind}-scale 2.75e-5 --{kind}-offset -0.2 for Landsat Collection 2 Level-2"
                )


class CaseReader:
    """A validated case whose images can be read on the fine t1 grid, whole or by window.

    It is a :class:`~stfusion.blocks.SceneSource`: fusion methods read it block by block.

    Validation happens once, here: :func:`~stfusion.scenes.check_case` (readable files, band counts,
    fine grid, coarse footprints, dates, masks) and :func:`check_values` on a sample of each image. Reads
    are then cheap and never re-check.

    Attributes:
        case: the case (its ``masks`` are applied: nonzero mask pixel = invalid).
        reference: fine t1's metadata (the grid every output is written on).
        bands, height, width: the fine grid's shape.
        band_names: band descriptions of fine t1, ``band<i>`` where missing.
        reprojected: the roles whose images are not on the fine grid and are reprojected when read.
    """

    def __init__(
        self,
        case: FusionCase,
        *,
        require_truth: bool = False,
        options: ReadOptions | None = None,
    ) -> None:
        self.case = case
        self.options = options or ReadOptions()
        self.selection = {
            role: resolve_bands(
                self.options.bands_for(role),
                raster.inspect(path),
                option="--coarse-bands" if is_coarse_role(role) else "--bands",
            )
            for role, path in case.paths().items()
            if self.options.bands_for(role) is not None
        }
        self.infos = check_case(
            case,
            require_truth=require_truth,
            min_overlap=self.options.min_overlap,
            band_counts={role: len(positions) for role, positions in self.selection.items()} or None,
        )
        self.reference = self.infos["fine_t1"]
        _, self.height, self.width = self.reference.shape
        names = [n or f"band{i + 1}" for i, n in enumerate(self.reference.band_names)]
        if "fine_t1" in self.selection:
            names = [names[p] for p in self.selection["fine_t1"]]
        self.band_names = names
        self.bands = len(names)
        self._check_band_order()
        self.reprojected = tuple(
            role
            for role, info in self.infos.items()
            if is_coarse_role(role) and not coarse_on_fine_grid(info, self.reference)
        )
        for role in self.reprojected:
            info = self.infos[role]
            log.info(
                "%s %s: %dx%d px of %g x %g in %s, reprojected onto fine t1's grid (%dx%d, %s) with %s "
                "resampling",
                role,
                info.path,
                info.height,
                info.width,
                abs(info.transform[0]),
                abs(info.transform[4]),
                info.crs,
                self.height,
                self.width,
                self.reference.crs,
                self.options.resampling,
            )
        if self.options.check_values:
            samples = {
                role: check_values(
                    info.path,
                    scale=self._scale(role),
                    offset=self._offset(role),
                    options="coarse" if is_coarse_role(role) else "fine",
                )
                for role, info in self.infos.items()
            }
            for index in range(self.n_pairs):
                coarse_role, fine_role = pair_roles(index)
                check_scales_agree(samples[fine_role], samples[coarse_role])

    def _selected_names(self, role: str) -> list[str]:
        """A role's band descriptions after the band selection, lower case ("" where missing)."""
        names = [(name or "").strip().lower() for name in self.infos[role].band_names]
        return [names[p] for p in self.selection.get(role, range(len(names)))]

    def _check_band_order(self) -> None:
        """InputError when an image's selected bands would meet fine t1's bands of other names although
        the names tell which match (:func:`stfusion.raster.crossed_bands`: e.g. MOD09GA's red, nir,
        blue, green, ... against Landsat's blue, green, red, ...): fused as they are, red would meet
        blue."""
        fine = self._selected_names("fine_t1")
        for role, info in self.infos.items():
            names = self._selected_names(role)
            if not raster.crossed_bands(names, fine, info.band_names):
                continue
            option = "--coarse-bands" if is_coarse_role(role) else "--bands"
            every = {(name or "").strip().lower() for name in info.band_names}
            fix = (
                f"select them in its order by name, e.g. {option} {','.join(fine)}"
                if set(fine) <= every
                else f"select the bands that match with {option}"
                + ("" if option == "--bands" else " (and fine t1's with --bands)")
            )
            raise InputError(
                f"{info.path}: bands {', '.join(n or '?' for n in names)} would be fused with fine t1's "
                f"{', '.join(n or '?' for n in fine)}; {fix}"
            )

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this case has (``fine_t2`` only when the truth is known)."""
        return tuple(self.case.paths())

    def _scale(self, role: str) -> float | None:
        return self.options.scale_for(role)

    def _offset(self, role: str) -> float | None:
        return self.options.offset_for(role)

    @property
    def coarse_ratio(self) -> float | None:
        """Coarse / fine pixel size: the option, else that of a coarse image at its native resolution
        (reprojected onto the fine grid), else None (coarse images already on the fine grid: methods
        estimate it from the image, e.g. FSDAF)."""
        if self.options.coarse_ratio is not None:
            return self.options.coarse_ratio
        for role in self.reprojected:
            ratio = raster.pixel_size_ratio(self.infos[role], self.reference)
            if ratio is not None and ratio > 1:
                return ratio
        return None

    @property
    def n_pairs(self) -> int:
        """Number of reference pairs."""
        return len(self.case.pairs)

    def input_roles(self) -> tuple[str, ...]:
        """The roles a prediction reads: every reference pair (coarse, fine) and coarse t2."""
        roles = [role for index in range(self.n_pairs) for role in pair_roles(index)]
        return (*roles, "coarse_t2")

    def read_window(self, window: Window) -> Block:
        """The inputs of a window of the fine grid as a :class:`~stfusion.blocks.Block` (NaN outside)."""
        pairs = []
        for index in range(self.n_pairs):
            coarse_role, fine_role = pair_roles(index)
            pairs.append(
                ReferencePair(coarse=self.read(coarse_role, window), fine=self.read(fine_role, window))
            )
        return Block(top=window.row, pairs=tuple(pairs), coarse_t2=self.read("coarse_t2", window))

    def block(self, top: int, stop: int) -> Block:
        """Scene rows [top, stop), full width (the SceneSource protocol)."""
        if not 0 <= top < stop <= self.height:
            raise ValueError(f"rows {top}..{stop} are not inside a scene of {self.height} rows")
        return self.read_window(Window(top, 0, stop - top, self.width))

    def read(self, role: str, window: Window | None = None) -> np.ndarray:
        """One role's pixels on the fine grid: (C, h, w) float32 reflectance, NaN = invalid.

        ``window`` None reads the whole scene; parts of a window outside the scene are NaN. Pixels
        masked by the role's mask (``case.masks``) are NaN.
        """
        paths = self.case.paths()
        if role not in paths:
            raise KeyError(f"{self.case.name} has no {role} image; roles: {', '.join(paths)}")
        rio_window = None
        if window is not None:
            rio_window = raster.make_window(window.row, window.col, window.height, window.width)
        resampling = self.options.resampling
        if role in self.reprojected:
            data = raster.read_on_grid(
                paths[role],
                self.reference,
                scale=self._scale(role),
                offset=self._offset(role),
                window=rio_window,
                resampling=resampling,
            )
        else:
            scale, offset = self._scale(role), self._offset(role)
            data = raster.read(paths[role], scale=scale, offset=offset, window=rio_window).data
        if role in self.selection:
            data = data[list(self.selection[role])]
        mask = self.case.masks.get(role)
        if mask is not None:
            invalid = raster.read_mask_on_grid(mask, self.reference, window=rio_window, resampling=resampling)
            data[:, invalid] = np.nan
        return data

    def quality(self, window: Window | None = None) -> np.ndarray:
        """The quality band of a prediction from this case: (h, w) uint8 :func:`quality_flags`."""
        return quality_flags({role: self.read(role, window) for role in self.input_roles()})


def band_count(path: str | os.PathLike[str], options: ReadOptions | None = None) -> int:
    """Bands a fine image of a case gives after the band selection of ``options``."""
    spec = (options or ReadOptions()).fine_bands
    return len(spec) if spec is not None else raster.inspect(path).count


def band_names(path: str | os.PathLike[str], options: ReadOptions | None = None) -> list[str | None]:
    """Descriptions of the bands a fine image gives after the band selection of ``options`` (None where
    a band has none)."""
    info = raster.inspect(path)
    return [info.band_names[p] for p in resolve_bands((options or ReadOptions()).fine_bands, info)]


def resolve_bands(
    spec: tuple[str, ...] | None, info: raster.RasterInfo, *, option: str = "--bands"
) -> tuple[int, ...]:
    """0-based positions of the bands ``spec`` names (1-based numbers or descriptions), in its order;
    ``option`` is the command-line option a message suggests for selecting by number."""
    if spec is None:
        return tuple(range(info.count))
    names = {(n or "").strip().lower(): i for i, n in enumerate(info.band_names) if n}
    positions = []
    for item in spec:
        text = item.strip()
        if text.isdigit():
            number = int(text)
            if not 1 <= number <= info.count:
                raise InputError(
                    f"{info.path}: band {number} does not exist (the file has {info.count} bands)"
                )
            positions.append(number - 1)
        elif text.lower() in names:
            positions.append(names[text.lower()])
        else:
            known = ", ".join(n for n in info.band_names if n)
            if not known:
                raise InputError(
                    f"{info.path}: no band named {text!r}: the file has no band descriptions; select its "
                    f"bands by number with {option} (1 to {info.count})"
                )
            raise InputError(f"{info.path}: no band named {text!r} (its band descriptions: {known})")
    return tuple(positions)


def quality_bit(role: str) -> int:
    """The bit of an input role in the quality band: :data:`QUALITY_BITS`, then 8, 16, ... for t3, t4."""
    if role in QUALITY_BITS:
        return QUALITY_BITS[role]
    label = int(role.rsplit("_t", 1)[1])  # coarse_t3 -> 3
    return 1 << (3 + 2 * (label - 3) + (0 if is_coarse_role(role) else 1))


def quality_flags(images: dict[str, np.ndarray]) -> np.ndarray:
    """Per-pixel quality of a prediction: which inputs are invalid (NaN in any band) there.

    Args:
        images: role -> (C, h, w) float reflectance on the fine grid, NaN = invalid.
    Returns:
        (h, w) uint8 (uint16 with more than two pairs), the sum of :func:`quality_bit` of the invalid
        inputs (1 fine t1, 2 coarse t1, 4 coarse t2, 8 coarse t3, 16 fine t3); 0 where every input is
        valid.
    """
    shape = next(iter(images.values())).shape[-2:]
    bits = [quality_bit(role) for role in images]
    flags = np.zeros(shape, dtype=np.uint8 if max(bits) < 256 else np.uint16)
    for (_, image), bit in zip(images.items(), bits, strict=True):
        flags |= np.where(np.isfinite(image).all(axis=0), 0, bit).astype(flags.dtype)
    return flags


#: (file, scale, offset) given for files whose own tags win, already warned about in this process
_TAGS_WARNED: set[tuple[str, float | None, float | None]] = set()


def check_values(
    path: str | os.PathLike[str],
    *,
    scale: float | None = None,
    offset: float | None = None,
    options: str | None = None,
) -> raster.ValueSample:
    """Sanity checks of a raster's values on a sample of its pixels (cheap on any size).

    ``options`` names the command-line options that set this file's scale and offset in the advice
    of the warnings: ``"fine"`` (--fine-scale, --fine-offset), ``"coarse"``, ``"pred"``, ``"truth"``, ``""``
    (--scale, --offset); None names the fine and coarse ones.

    The file's reflectance is ``stored x scale + offset`` by its GDAL scale/offset tags, else by
    ``scale`` and ``offset``, else by the automatic choice of :func:`stfusion.raster.resolve_scaling`
    (logged). Raises InputError when no pixel is valid (all nodata / non-finite / fill values / masked;
    confirmed on every pixel). Logs one warning naming the file when NaN/inf or fill values
    (|value| >= :data:`stfusion.raster.FILL_MAGNITUDE`) that are not the declared nodata are present
    (they are treated as invalid), when most values exceed reflectance 1.5 (digital numbers, or a wrong
    scale; with the Landsat Collection 2 advice when the values look like its digital numbers), when
    every value is below reflectance 0.002 in magnitude (reflectance floats read as x 10000), when the
    typical value is below reflectance -0.02 (a wrong scale or offset), when values below -0.5 look like
    an undeclared fill value, and once per file when a given scale/offset is not used because the
    file's own GDAL tags win.
    """
    sample = raster.sample_values(path, scale=scale, offset=offset)
    if sample.values.size == 0 and (sample.complete or not raster.has_valid_pixel(path)):
        nodata = f"nodata = {sample.nodata}" if sample.nodata is not None else "no nodata declared"
        raise NoValidPixelError(
            f"{path}: no valid pixel (every value is nodata, masked, NaN/inf or a fill value; {nodata}); "
            "check the file, or its nodata value (e.g. gdal_edit.py -a_nodata)",
            path,
        )
    if sample.n_nonfinite:
        log.warning(
            "%s: %d of %d sampled values are NaN/inf or fill values (|value| >= %s) that are not the "
            "declared nodata; they are treated as invalid",
            path,
            sample.n_nonfinite,
            sample.n_pixels,
            f"{raster.FILL_MAGNITUDE:.0e}".replace("e+", "e"),  # 1e30
        )
    if sample.values.size == 0:
        return sample
    if sample.scaling is not None:
        log.info("%s", sample.scaling)
    reflectance = sample.reflectance.astype(np.float64)
    median = float(np.median(reflectance))
    prefixes = ["--fine-", "--coarse-"] if options is None else [f"--{options}-" if options else "--"]
    scale_option, offset_option = (" / ".join(f"{p}{name}" for p in prefixes) for name in ("scale", "offset"))

    def give(scale: str, offset: str = "") -> str:  # e.g. --fine-scale 1 / --coarse-scale 1
        return " / ".join(f"{p}scale {scale}" + (f" {p}offset {offset}" if offset else "") for p in prefixes)

    how = f"read as {sample.scaling}" if sample.scaling is not None else "as read"
    tagged = sample.scaling is not None and sample.scaling.source == "tags"
    if (
        tagged
        and sample.scaling is not None
        and (
            (scale is not None and scale != sample.scaling.scale)
            or (offset is not None and offset != sample.scaling.offset)
        )
        and (key := (str(path), scale, offset)) not in _TAGS_WARNED
    ):
        _TAGS_WARNED.add(key)  # once per file and values (a series reads a file for many dates)
        log.warning(
            "%s: its own GDAL scale/offset tags are used (x %g, %+g), not the %s/%s given: a file's "
            "tags win (if they are wrong, reset them: gdal_edit.py -scale 1 -offset 0 %s)",
            path,
            sample.scaling.scale,
            sample.scaling.offset,
            scale_option,
            offset_option,
            os.path.basename(path),
        )
    impossible = reflectance < IMPOSSIBLE_REFLECTANCE
    plausible = reflectance[~impossible]  # an undeclared fill value is warned about below, apart
    c2_like = bool(  # Landsat C2 L2 digital numbers (7273 = reflectance 0) read as x 10000
        plausible.size
        and sample.scaling is not None
        and sample.scaling.source == "auto"
        and np.issubdtype(np.dtype(sample.dtype), np.integer)
        and np.percentile(plausible, 2) >= C2_FLOOR_REFLECTANCE
        and plausible.max() <= C2_CEILING_REFLECTANCE
    )
    c2_advice = give("2.75e-5", "-0.2")
    if c2_like and median <= DN_LIKE_REFLECTANCE:
        log.warning(
            "%s: almost every value is above reflectance %g (median %.2f, %s), as Landsat Collection 2 "
            "Level-2 digital numbers read as x 10000 are: if it is one, give %s (or its GDAL scale/offset "
            "tags)",
            path,
            C2_FLOOR_REFLECTANCE,
            median,
            how,
            c2_advice,
        )
    elif median > DN_LIKE_REFLECTANCE:
        log.warning(
            "%s: values look like digital numbers, not reflectance (median reflectance %.2f, %s); use "
            "surface reflectance products, or give the file's scale (%s, with %s if it has one, or GDAL "
            "scale/offset tags)%s",
            path,
            median,
            how,
            scale_option,
            offset_option,
            f"; Landsat Collection 2 Level-2 digital numbers: {c2_advice}" if c2_like else "",
        )
    elif np.abs(reflectance).max() < TINY_REFLECTANCE:
        log.warning(
            "%s: every value is below reflectance %g (%s): reflectance floats read as x 10000? give %s",
            path,
            TINY_REFLECTANCE,
            how,
            give("1"),
        )
    if plausible.size and np.median(plausible) < LOW_MEDIAN_REFLECTANCE:
        log.warning(
            "%s: most values are below reflectance %g (median %.3f, %s): is its scale or offset wrong? "
            "Give the file's own (%s, %s) or GDAL scale/offset tags",
            path,
            LOW_MEDIAN_REFLECTANCE,
            float(np.median(plausible)),
            how,
            scale_option,
            offset_option,
        )
    if impossible.any():
        stored, counts = np.unique(sample.values[impossible], return_counts=True)
        common = float(stored[np.argmax(counts)])
        log.warning(
            "%s: %d of %d sampled values are below reflectance %g (most often the stored value %g): an "
            "undeclared nodata or fill value? They are used as data; declare it (e.g. gdal_edit.py "
            "-a_nodata %g %s)",
            path,
            int(impossible.sum()),
            reflectance.size,
            IMPOSSIBLE_REFLECTANCE,
            common,
            common,
            os.path.basename(path),
        )
    return sample


def check_scales_agree(fine: raster.ValueSample, coarse: raster.ValueSample) -> None:
    """Warn when a pair's fine and coarse images of one date differ by more than 3x in typical level.

    Same date, same bands: their median reflectances should be close. A large ratio means one file was
    read with a wrong scale (e.g. Landsat Collection 2 digital numbers without their scale tags).
    """
    if fine.reflectance.size == 0 or coarse.reflectance.size == 0:
        return
    level_fine = float(np.median(np.abs(fine.reflectance)))
    level_coarse = float(np.median(np.abs(coarse.reflectance)))
    if min(level_fine, level_coarse) <= 0:
        return
    ratio = max(level_fine, level_coarse) / min(level_fine, level_coarse)
    if ratio > SCALE_MISMATCH_RATIO:
        log.warning(
            "%s (median reflectance %.3f) and %s (%.3f), one date's fine and coarse images, differ %.1fx: "
            "is one of them read with a wrong scale? (%s; %s)",
            fine.path,
            level_fine,
            coarse.path,
            level_coarse,
            ratio,
            fine.scaling,
            coarse.scaling,
        )
