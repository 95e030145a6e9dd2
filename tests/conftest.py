"""Shared test helpers: tiny real GeoTIFFs written with rasterio into tmp_path."""

from __future__ import annotations

import os

# Tests use tiny tensors, where one thread is as fast as several, and OpenMP threads that spin-wait
# make a loaded machine crawl (measured: a tiny training step 30x slower beside another busy process).
# Set before torch is imported; subprocesses (torchrun, the CLI) inherit it. An explicit value wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from stfusion.sample import SAMPLE_ROOT

TEST_CRS = "EPSG:32755"
TEST_TRANSFORM = from_origin(401000.0, 6152800.0, 50.0, 50.0)

WriteTif = Callable[..., Path]


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = TEST_CRS,
    transform: Any = TEST_TRANSFORM,
    nodata: float | None = None,
    dtype: str | None = None,
) -> Path:
    """Write a (C, H, W) array as a GeoTIFF (CRS and transform by default) and return its path."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": dtype or str(data.dtype),
    }
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(profile["dtype"]))
    return path


def random_scene(rng: np.random.Generator, bands: int = 4, height: int = 20, width: int = 24) -> np.ndarray:
    """Int16 reflectance x 1e4 with smooth structure plus noise, (bands, height, width)."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = 1500 + 800 * np.sin(yy / 5.0)[None] * np.cos(xx / 7.0)[None]
    offsets = np.arange(bands)[:, None, None] * 300
    noise = rng.normal(0, 50, size=(bands, height, width))
    return np.clip(base + offsets + noise, -100, 10000).astype(np.int16)


@pytest.fixture
def tif_writer() -> WriteTif:
    """The write_tif helper as a fixture."""
    return write_tif


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(2020)


@pytest.fixture
def flat_folder(tmp_path: Path, rng: np.random.Generator) -> Path:
    """A flat folder with three dates of fine_/coarse_ files (4 bands, 20 x 24)."""
    folder = tmp_path / "flat"
    for stamp in ("20010101", "20010201", "20010301"):
        write_tif(folder / f"fine_{stamp}.tif", random_scene(rng))
        write_tif(folder / f"coarse_{stamp}.tif", random_scene(rng))
    return folder


@pytest.fixture
def sample_root() -> Path:
    """The built-in CIA sample (paper layout)."""
    return SAMPLE_ROOT


def make_pair_folder(
    root: Path,
    name: str,
    rng: np.random.Generator,
    *,
    skip: str | None = None,
    bands: int = 4,
    height: int = 20,
    width: int = 24,
) -> Path:
    """A CIA-style pair folder: Landsat names carry YYYYMMDD, MODIS names YYYYDOY."""
    from stfusion import scenes

    folder = root / name
    t1, t2 = scenes.parse_pair_folder_name(name)
    for date in (t1, t2):
        fine = folder / f"L71093084_084{date.fine_key}_HRF_modtran_surf_ref_agd66.tif"
        coarse = folder / f"MOD09GA_A{date.coarse_key}.sur_refl.tif"
        for path in (fine, coarse):
            if skip is None or skip not in path.name:
                write_tif(path, random_scene(rng, bands=bands, height=height, width=width))
    return folder


@pytest.fixture
def tiny_paper_data(tmp_path: Path) -> Path:
    """Paper layout with train (2 cases), val and test; 3 bands, 40 x 48 pixels."""
    rng = np.random.default_rng(7)
    root = tmp_path / "data"
    size = {"bands": 3, "height": 40, "width": 48}
    make_pair_folder(root / "train", "2001_281_1008-2001_290_1017", rng, **size)
    make_pair_folder(root / "train", "2001_290_1017-2001_306_1102", rng, **size)
    make_pair_folder(root / "val", "2001_306_1102-2001_322_1118", rng, **size)
    make_pair_folder(root / "test", "2001_322_1118-2001_338_1204", rng, **size)
    return root


def write_tiny_checkpoint(path: Path, *, bands: int, coarse_factor: int) -> Path:
    """A checkpoint of a randomly initialised tiny MLFF-GAN generator (channels 4-8), seeded."""
    import torch

    from stfusion.checkpoint import Checkpoint, ModelSpec, save

    torch.manual_seed(0)
    spec = ModelSpec("mlffgan", bands, {"channels": [4, 4, 8, 8, 8]})
    checkpoint = Checkpoint(
        model=spec,
        generator=spec.build().state_dict(),
        coarse_factor=coarse_factor,
        band_names=[f"b{i + 1}" for i in range(bands)],
    )
    return save(path, checkpoint)
