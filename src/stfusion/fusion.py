"""The fusion interface every method implements: arrays in, array out, no I/O.

A fusion method takes the reference pair (coarse t1, fine t1) and the coarse image at the target
date t2, all float32 reflectance on the fine grid with shape (C, H, W), and returns the predicted
fine image at t2, float32 (C, H, W); NaN marks pixels it cannot predict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from stfusion.blocks import check_fusion_inputs

__all__ = ["FusionMethod", "MethodRegistry", "check_fusion_inputs"]


class FusionMethod(Protocol):
    """Callable signature of a fusion method (see module docstring for shapes and units)."""

    def __call__(
        self,
        coarse_t1: np.ndarray,
        fine_t1: np.ndarray,
        coarse_t2: np.ndarray,
        **options: Any,
    ) -> np.ndarray: ...


MethodRegistry = dict[str, Callable[..., np.ndarray]]
