"""stfusion: spatiotemporal fusion of satellite images.

Predicts a fine image (Landsat-like) of a date from a coarse image (MODIS-like) of that date and one
or more fine + coarse reference pairs of other dates. Methods: MLFF-GAN (a trained network), STARFM,
ESTARFM, FSDAF, coarse-delta (F1 + C2 - C1) and persistence; ``stfusion methods`` lists them with their
options. The command line (``stfusion --help``) is the main interface; in Python:

- ``stfusion.fuse(fine={date: path}, coarse={date: path}, ...)``: a time series, the fine image of
  every coarse date without a usable fine one (:func:`stfusion.series.fuse`).
- ``stfusion.fusion.get(name).preparer(options)``: any method by name; apply it to a scene and predict
  with ``stfusion.blocks.predict_scene(prediction, scene)``, a scene being arrays
  (``stfusion.blocks.ArraySource``) or files (``stfusion.inputs.CaseReader(stfusion.scenes.explicit_case(
  coarse_t1=..., fine_t1=..., coarse_t2=...))``, which checks, reprojects and masks them).
- Plain functions on arrays: ``stfusion.baselines.starfm.starfm``, ``.estarfm.estarfm``,
  ``.fsdaf.fsdaf``, ``.naive.coarse_delta``; the network: ``stfusion.models.MLFFGenerator``.
- Metrics: ``stfusion.metrics.compute_metrics`` (and ``rmse``, ``ssim``, ``sam``, ``ergas``, ...);
  a prediction file against a truth file: ``stfusion.evaluation.evaluate_files``.
- Files: ``stfusion.raster.read`` (reflectance, NaN where invalid) and ``stfusion.raster.write_like``
  (a GeoTIFF on the grid of another).

Arrays are (bands, rows, cols) reflectance (0..1), NaN marking invalid pixels. See the README and
docs/ (data layouts, metrics, training, the architecture).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


#: Submodules reachable as ``stfusion.<name>`` after ``import stfusion`` (imported on first use).
_SUBMODULES = frozenset(
    {
        "baselines",
        "blocks",
        "evaluation",
        "fusion",
        "inputs",
        "metrics",
        "models",
        "raster",
        "scenes",
        "series",
    }
)


def __getattr__(name: str) -> Any:
    """``stfusion.fuse`` (the time-series API) and the submodules above are imported on first use
    (PyTorch only loads when MLFF-GAN needs it)."""
    if name == "fuse":
        from stfusion.series import fuse

        return fuse
    if name in _SUBMODULES:
        return importlib.import_module(f"stfusion.{name}")
    raise AttributeError(f"module 'stfusion' has no attribute {name!r}")
