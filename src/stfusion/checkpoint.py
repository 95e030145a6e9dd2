"""Self-describing checkpoints: everything `stfusion predict` needs travels inside the file.

A checkpoint is a ``torch.save`` dict with ``format`` = :data:`FORMAT` and:

- ``model``: ``{"name": "mlffgan", "bands": int, "kwargs": {...}}``, enough to rebuild the generator;
- ``generator`` (state dict); optionally ``discriminator``, ``optimizer_g``, ``optimizer_d``;
- ``band_names``, ``scale`` (reflectance per stored unit), ``coarse_factor`` (degradation factor);
- ``config`` (the training configuration as a dict), ``epoch`` (completed epochs), ``best_val``,
  ``history`` (list of per-epoch dicts), ``versions`` (stfusion, torch, python).

Writes are atomic (temporary file, then rename), so an interrupted save never corrupts the previous
checkpoint.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stfusion import __version__
from stfusion.atomic import atomic_path
from stfusion.errors import InputError
from stfusion.models import MODELS

FORMAT = "stfusion-checkpoint/1"


@dataclass
class ModelSpec:
    """What is needed to rebuild a generator: builder name, band count and keyword arguments."""

    name: str
    bands: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        if self.name not in MODELS:
            raise InputError(f"unknown model {self.name!r} in checkpoint; known: {', '.join(MODELS)}")
        return MODELS[self.name](self.bands, **self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bands": self.bands, "kwargs": dict(self.kwargs)}


def versions() -> dict[str, str]:
    """Package versions recorded in every checkpoint."""
    return {"stfusion": __version__, "torch": torch.__version__, "python": platform.python_version()}


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` (with ``format`` and ``versions`` added) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"format": FORMAT, "versions": versions(), **payload}
    with atomic_path(path) as tmp:
        torch.save(content, tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; InputError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        content = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for damaged files (RuntimeError, EOFError, ...)
        raise InputError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {type(exc).__name__})"
        ) from exc
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise InputError(
            f"{path}: not an stfusion checkpoint (for a reference MLFF-GAN .pth use "
            "`stfusion import-reference`)"
        )
    return content


def model_spec(checkpoint: dict[str, Any]) -> ModelSpec:
    """The ModelSpec stored in a checkpoint."""
    model = checkpoint["model"]
    return ModelSpec(name=model["name"], bands=int(model["bands"]), kwargs=dict(model.get("kwargs", {})))


def load_generator(
    path: str | os.PathLike[str], *, bands: int | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the generator of a checkpoint in eval mode, on CPU; returns (generator, checkpoint).

    ``bands``, when given, must match the checkpoint's band count (InputError otherwise).
    """
    checkpoint = load_checkpoint(path)
    spec = model_spec(checkpoint)
    if bands is not None and bands != spec.bands:
        raise InputError(f"{path}: checkpoint is for {spec.bands} bands, but the input images have {bands}")
    generator = spec.build()
    generator.load_state_dict(checkpoint["generator"])
    generator.eval()
    return generator, checkpoint
