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
from stfusion.errors import InputError
from stfusion.scenes import MIN_COARSE_OVERLAP, FusionCase, check_case, coarse_on_fine_grid
from stfusion.transforms import REFLECTANCE_SCALE

log = logging.getLogger(__name__)

#: Bits of the quality band (:func:`quality_flags`): which input is invalid at a pixel. 0 = all valid.
QUALITY_BITS: dict[str, int] = {"fine_t1": 1, "coarse_t1": 2, "coarse_t2": 4}
#: Roles a prediction is made from.
INPUT_ROLES: tuple[str, ...] = ("coarse_t1", "fine_t1", "coarse_t2")
#: Reflectance above which values look like digital numbers (or a wrong --scale), not reflectance.
DN_LIKE_REFLECTANCE = 1.5


@dataclass(frozen=True)
class Window:
    """Rows [row, row + height) and columns [col, col + width) of the fine grid (may extend outside)."""

    row: int
    col: int
    height: int
    width: int


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
    """

    resampling: str = "bilinear"
    min_overlap: float = MIN_COARSE_OVERLAP
    check_values: bool = True

    def __post_init__(self) -> None:
        if self.resampling not in raster.RESAMPLING_METHODS:
            raise InputError(
                f"resampling {self.resampling!r}: choose one of {', '.join(raster.RESAMPLING_METHODS)}"
            )
        if not 0.0 <= self.min_overlap <= 1.0:
            raise InputError(f"min overlap {self.min_overlap}: must be a fraction within 0..1")


class CaseReader:
    """A validated case whose images can be read on the fine t1 grid, whole or by window.

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
        scale: float = REFLECTANCE_SCALE,
        require_truth: bool = False,
        options: ReadOptions | None = None,
    ) -> None:
        self.case = case
        self.scale = scale
        self.options = options or ReadOptions()
        self.infos = check_case(case, require_truth=require_truth, min_overlap=self.options.min_overlap)
        self.reference = self.infos["fine_t1"]
        self.bands, self.height, self.width = self.reference.shape
        self.band_names = [n or f"band{i + 1}" for i, n in enumerate(self.reference.band_names)]
        self.reprojected = tuple(
            role
            for role in ("coarse_t1", "coarse_t2")
            if not coarse_on_fine_grid(self.infos[role], self.reference)
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
            for info in self.infos.values():
                check_values(info.path, scale=scale)

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this case has (``fine_t2`` only when the truth is known)."""
        return tuple(self.case.paths())

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
                paths[role], self.reference, scale=self.scale, window=rio_window, resampling=resampling
            )
        else:
            data = raster.read(paths[role], scale=self.scale, window=rio_window).data
        mask = self.case.masks.get(role)
        if mask is not None:
            invalid = raster.read_mask_on_grid(mask, self.reference, window=rio_window, resampling=resampling)
            data[:, invalid] = np.nan
        return data

    def quality(self, window: Window | None = None) -> np.ndarray:
        """The quality band of a prediction from this case: (h, w) uint8 :func:`quality_flags`."""
        c1, f1, c2 = (self.read(role, window) for role in INPUT_ROLES)
        return quality_flags(c1, f1, c2)


def quality_flags(coarse_t1: np.ndarray, fine_t1: np.ndarray, coarse_t2: np.ndarray) -> np.ndarray:
    """Per-pixel quality of a prediction: which inputs are invalid (NaN in any band) there.

    Args:
        coarse_t1, fine_t1, coarse_t2: (C, h, w) float reflectance on the fine grid, NaN = invalid.
    Returns:
        (h, w) uint8, the sum of :data:`QUALITY_BITS` of the invalid inputs (1 fine t1, 2 coarse t1,
        4 coarse t2); 0 where every input is valid, i.e. where the prediction has a value.
    """
    flags = np.zeros(fine_t1.shape[-2:], dtype=np.uint8)
    for role, image in (("coarse_t1", coarse_t1), ("fine_t1", fine_t1), ("coarse_t2", coarse_t2)):
        flags |= np.where(np.isfinite(image).all(axis=0), 0, QUALITY_BITS[role]).astype(np.uint8)
    return flags


def check_values(path: str | os.PathLike[str], *, scale: float = REFLECTANCE_SCALE) -> raster.ValueSample:
    """Sanity checks of a raster's values on a sample of its pixels (cheap on any size).

    Raises InputError when no pixel is valid (all nodata / non-finite; confirmed on every pixel). Logs a
    warning when NaN/inf values that are not the declared nodata are present (they are treated as
    invalid), when more than half of the valid values exceed reflectance 1.5 at ``scale`` (digital
    numbers, or a wrong ``--scale``), or when a float raster holds values within -1.5..1.5 and ``scale``
    is below 1 (already reflectance: ``--scale 1``).
    """
    sample = raster.sample_values(path)
    if sample.values.size == 0 and (sample.complete or not raster.has_valid_pixel(path)):
        nodata = f"nodata = {sample.nodata}" if sample.nodata is not None else "no nodata declared"
        raise InputError(
            f"{path}: no valid pixel (every value is nodata or NaN/inf; {nodata}); check the file, or its "
            "nodata value (e.g. gdal_edit.py -a_nodata)"
        )
    if sample.n_nonfinite:
        log.warning(
            "%s: %d of %d sampled values are NaN/inf (not the declared nodata); they are treated as invalid",
            path,
            sample.n_nonfinite,
            sample.n_pixels,
        )
    if sample.values.size == 0:
        return sample
    reflectance = sample.values * scale
    if float(np.median(reflectance)) > DN_LIKE_REFLECTANCE:
        log.warning(
            "%s: values look like digital numbers, not reflectance x %g (median reflectance %.2f with "
            "--scale %g); use surface reflectance products or set --scale",
            path,
            1 / scale,
            float(np.median(reflectance)),
            scale,
        )
    elif (
        np.dtype(sample.dtype).kind == "f"
        and scale < 1
        and np.abs(sample.values).max() <= DN_LIKE_REFLECTANCE
    ):
        log.warning(
            "%s: float values within 0..%.2f look like reflectance already, but --scale %g makes them "
            "0..%.5f; pass --scale 1",
            path,
            float(np.abs(sample.values).max()),
            scale,
            float(np.abs(sample.values).max() * scale),
        )
    return sample
