"""stfusion: spatiotemporal fusion of satellite images (MLFF-GAN, STARFM, FSDAF, baselines)."""

from __future__ import annotations

__version__ = "0.1.0"
