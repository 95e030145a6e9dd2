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

#: Band names of each bundled dataset whose bands are known for sure (their manifests), written into the
#: copies `stfusion sample` makes so that --bands can select them by name (lgc-flood's are only likely).
DATASET_BANDS: dict[str, tuple[str, ...]] = {
    "cia-crop": SAMPLE_BANDS,
    "estarfm-site": ("green", "red", "nir"),
}

#: Coarse/fine pixel-size ratio of each bundled dataset: CIA crop 50 m Landsat (subsampled) vs ~463 m
#: MODIS (10, the sample's ERGAS convention 0.1); ESTARFM site 30 m vs 500 m; LGC flood 25 m vs 16 x 16
#: block means (400 m). ERGAS uses 1 / ratio.
DATASET_COARSE_RATIOS: dict[str, float] = {"cia-crop": 10.0, "estarfm-site": 16.0, "lgc-flood": 16.0}


def copy_dataset(name: str, destination: Path) -> list[Path]:
    """Copy a bundled dataset (its images, manifest and attribution) into a new folder; returns the files.

    For tutorials: the copy is then the user's own data, to fuse, compare or train on.
    """
    from stfusion.atomic import copy_files
    from stfusion.errors import InputError

    if name not in DATASETS:
        raise InputError(f"no bundled dataset {name!r}; choose one of {', '.join(DATASETS)}")
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise InputError(f"{destination}: exists and is not a folder; choose a new folder")
    if destination.exists() and any(destination.iterdir()):
        raise InputError(f"{destination}: exists and is not empty; choose a new folder")
    copies = [(source, destination / source.name) for source in sorted(DATASETS[name].iterdir())]
    copies.append((DATASETS_ROOT / "README.md", destination / "ATTRIBUTION.md"))
    return copy_files(copies)
