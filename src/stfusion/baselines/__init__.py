"""Fusion baselines: arrays in, array out, no I/O (see stfusion.fusion for the interface)."""

from __future__ import annotations

import importlib
from typing import Any

from stfusion.baselines.naive import coarse_delta, persistence

__all__ = ["coarse_delta", "estarfm", "fsdaf", "persistence", "starfm"]

#: Submodules imported on first attribute access (they compile numba kernels).
_LAZY = frozenset({"starfm", "fsdaf", "estarfm"})


def __getattr__(name: str) -> Any:
    """``stfusion.baselines.starfm`` (and fsdaf, estarfm) work without importing them first."""
    if name in _LAZY:
        return importlib.import_module(f"stfusion.baselines.{name}")
    raise AttributeError(f"module 'stfusion.baselines' has no attribute {name!r}")
