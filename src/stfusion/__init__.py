"""stfusion: spatiotemporal fusion of satellite images (MLFF-GAN, STARFM, FSDAF, baselines)."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``stfusion.fuse`` (the time-series API) is imported on first use (PyTorch only loads when it
    predicts with MLFF-GAN)."""
    if name == "fuse":
        from stfusion.series import fuse

        return fuse
    raise AttributeError(f"module 'stfusion' has no attribute {name!r}")
