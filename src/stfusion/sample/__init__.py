"""The built-in sample: a 250 x 250 x 6 crop of the CIA benchmark in the paper's layout (see README)."""

from __future__ import annotations

from pathlib import Path

#: Root of the sample in the MLFF-GAN paper layout (train/val/test pair folders).
SAMPLE_ROOT: Path = Path(__file__).resolve().parent / "cia"

#: Band names of the sample, in file order.
SAMPLE_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir1", "swir2")

#: Coarse degradation factor suited to the sample's 50 m pixels (a MODIS pixel spans ~9 of them).
SAMPLE_COARSE_FACTOR: int = 8

#: Fine/coarse pixel-size ratio of the sample for ERGAS: 50 m Landsat (subsampled) / 500 m MODIS.
SAMPLE_ERGAS_RATIO: float = 0.1


def sample_root() -> Path:
    """Path of the sample data folder (paper layout)."""
    return SAMPLE_ROOT


#: Flat folders of the bundled real datasets (fine_YYYYMMDD.tif / coarse_YYYYMMDD.tif; see their README).
DATASETS_ROOT: Path = Path(__file__).resolve().parent / "datasets"

#: Name -> folder of each bundled dataset.
DATASETS: dict[str, Path] = {name: DATASETS_ROOT / name for name in ("cia-crop", "estarfm-site", "lgc-flood")}
