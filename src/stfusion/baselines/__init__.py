"""Fusion baselines: arrays in, array out, no I/O (see stfusion.fusion for the interface)."""

from __future__ import annotations

from stfusion.baselines.naive import coarse_delta, persistence

__all__ = ["coarse_delta", "persistence"]
