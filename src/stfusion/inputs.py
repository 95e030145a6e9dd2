"""Read a fusion case's images on the fine grid, whole or window by window.

:class:`CaseReader` is the one place where a case's files become pixels: it validates the case once
(:func:`~stfusion.scenes.check_case`), takes fine t1's grid as the case's grid, and returns any role
(``coarse_t1``, ``fine_t1``, ``coarse_t2``, ``fine_t2``) as float32 reflectance (C, h, w) with NaN
where the pixel is invalid (nodata, non-finite, outside the raster). Whole-scene readers
(``workflows.read_case``, ``dataset.load_case``) and the streaming predictor (``streaming``) both go
through it, so a window read by streaming equals the same window of a whole-scene read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stfusion import raster
from stfusion.scenes import FusionCase, check_case
from stfusion.transforms import REFLECTANCE_SCALE


@dataclass(frozen=True)
class Window:
    """Rows [row, row + height) and columns [col, col + width) of the fine grid (may extend outside)."""

    row: int
    col: int
    height: int
    width: int


class CaseReader:
    """A validated case whose images can be read on the fine t1 grid, whole or by window.

    Attributes:
        case: the case.
        reference: fine t1's metadata (the grid every output is written on).
        bands, height, width: the fine grid's shape.
        band_names: band descriptions of fine t1, ``band<i>`` where missing.
    """

    def __init__(
        self, case: FusionCase, *, scale: float = REFLECTANCE_SCALE, require_truth: bool = False
    ) -> None:
        self.case = case
        self.scale = scale
        self.infos = check_case(case, require_truth=require_truth)
        self.reference = self.infos["fine_t1"]
        self.bands, self.height, self.width = self.reference.shape
        self.band_names = [n or f"band{i + 1}" for i, n in enumerate(self.reference.band_names)]

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this case has (``fine_t2`` only when the truth is known)."""
        return tuple(self.case.paths())

    def read(self, role: str, window: Window | None = None) -> np.ndarray:
        """One role's pixels on the fine grid: (C, h, w) float32 reflectance, NaN = invalid.

        ``window`` None reads the whole scene; parts of a window outside the scene are NaN.
        """
        path = self.case.paths()[role]
        rio_window = None
        if window is not None:
            rio_window = raster.make_window(window.row, window.col, window.height, window.width)
        return raster.read(path, scale=self.scale, window=rio_window).data
