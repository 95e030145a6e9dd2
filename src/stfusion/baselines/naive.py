"""Trivial baselines every fusion method must beat.

- ``persistence``: the fine image does not change, F2 = F1.
- ``coarse_delta``: the fine image changes as the coarse one does, F2 = F1 + (C2 - C1).

Arrays are float32 reflectance (C, H, W) on the fine grid; NaN propagates (no value where an input
has none).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stfusion.blocks import check_fusion_inputs


def persistence(
    coarse_t1: np.ndarray, fine_t1: np.ndarray, coarse_t2: np.ndarray, **options: Any
) -> np.ndarray:
    """F2 = F1 (C, H, W); a pixel is NaN where any input is NaN, so coverage matches other methods."""
    check_fusion_inputs(coarse_t1, fine_t1, coarse_t2)
    _reject_options("persistence", options)
    prediction = fine_t1.astype(np.float32, copy=True)
    prediction[np.isnan(coarse_t1) | np.isnan(coarse_t2)] = np.nan
    return prediction


def coarse_delta(
    coarse_t1: np.ndarray, fine_t1: np.ndarray, coarse_t2: np.ndarray, **options: Any
) -> np.ndarray:
    """F2 = F1 + (C2 - C1), computed in float32 (C, H, W)."""
    check_fusion_inputs(coarse_t1, fine_t1, coarse_t2)
    _reject_options("coarse-delta", options)
    f1 = fine_t1.astype(np.float32, copy=False)
    return (f1 + (coarse_t2.astype(np.float32) - coarse_t1.astype(np.float32))).astype(np.float32)


def _reject_options(method: str, options: dict[str, Any]) -> None:
    if options:
        raise ValueError(f"method {method} takes no options, got {sorted(options)}")
