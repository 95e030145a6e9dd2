"""Trivial baselines every fusion method must beat.

- ``persistence``: the fine image does not change, F2 = F1.
- ``coarse_delta``: the fine image changes as the coarse one does, F2 = F1 + (C2 - C1).

Arrays are float32 reflectance (C, H, W) on the fine grid; NaN propagates (no value where an input
has none).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from stfusion.blocks import Block, Prediction, RowBlocks, SceneSource, check_fusion_inputs


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


def _pixelwise(method: Callable[..., np.ndarray]) -> Callable[..., Prediction]:
    def prepare(source: SceneSource) -> Prediction:
        if source.n_pairs != 1:
            raise ValueError(f"{method.__name__} takes one reference pair, got {source.n_pairs}")

        def predict_block(block: Block, halo_top: int, halo_bottom: int) -> np.ndarray:
            pair = block.pairs[0]
            prediction = method(pair.coarse, pair.fine, block.coarse_t2)
            prediction[:, ~block.valid()] = np.nan  # a pixel invalid in any band of any input
            return prediction

        return RowBlocks(predict_block, halo=0, block_rows=512)

    return prepare


#: Registry entry points (stfusion.fusion): pixel-wise, so row blocks without a halo; a pixel invalid in
#: any band of any input is NaN in every band.
prepare_persistence = _pixelwise(persistence)
prepare_coarse_delta = _pixelwise(coarse_delta)
