"""Named training recipes for MLFF-GAN: documented sets of TrainConfig values (`stfusion train --recipe`).

- ``paper``: the paper's settings (TrainConfig's defaults; `run.py` uses them).
- ``small-data``: the residual parameterisation (the network learns the correction to F1 + C2 - C1,
  with zero spatial mean per band and tile), seeded random crops with flips and rotations, no date
  swap, no dropout, no extra degradation, validation on held-out rows: for a single scene with a few
  dates on a CPU.
- ``leave-out``: ``small-data`` trained band by band (``per_band``: one one-band network for every band
  of every case, so sensors with 3 or 6 bands train together and it predicts any band count), with 4
  crops per one-band case and 12 epochs: what ``stfusion benchmark`` and ``stfusion demo`` train on the
  datasets a fold may see (sized for 2 CPU cores: about 1.4 s per step of 4 crops of 128 x 128).

A recipe gives defaults; options given on the command line (or in --config) win.
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "small-data": {
        "epochs": 60,
        "lr": 4e-4,
        "patch_size": 128,
        "random_crops": 16,  # per epoch the same 16 seeded crops, each seen under a random flip/rotation
        "flips": True,
        # no extra degradation: MODIS already resampled smoothly onto the fine grid is not re-blurred
        "coarse_factor": 1,
        "residual": True,
        # the correction keeps the coarse-delta mean: a date-specific offset of the few training dates
        # cannot carry over to other dates
        "zero_mean_correction": True,
        "date_swap": False,
        "dropout": 0.0,
        "val_holdout": 0.36,
        "val_tile": (256, 256),
        "val_overlap": (32, 32),
    },
}
RECIPES["leave-out"] = {**RECIPES["small-data"], "per_band": True, "random_crops": 4, "epochs": 12}


def recipe(name: str) -> dict[str, Any]:
    """The TrainConfig values of a recipe (a copy); KeyError listing the names otherwise."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])
