"""``stfusion sample``: copy a bundled real dataset into a folder, to try the tool on as your own data."""

from __future__ import annotations

from pathlib import Path

import click

from stfusion import raster
from stfusion.cli.options import one_line_errors, say
from stfusion.sample import DATASET_BANDS, DATASETS, copy_dataset


@click.command("sample")
@click.argument("name", type=click.Choice(list(DATASETS)))
@click.argument("destination", type=click.Path(path_type=Path))
@one_line_errors()
def sample_command(name: str, destination: Path) -> None:
    """Copy the bundled dataset NAME into DESTINATION (a new folder): fine_/coarse_YYYYMMDD.tif files.

    cia-crop: CIA, Landsat-7 + MODIS, 6 bands, 3 dates; estarfm-site: the ESTARFM test data, green, red,
    nir, 3 dates; lgc-flood: the FSDAF test data, 3 bands, 2 dates (simulated coarse images). Their
    attribution is copied with them (ATTRIBUTION.md); the copies of cia-crop and estarfm-site carry
    their band names (e.g. --bands red,nir).
    """
    files = copy_dataset(name, destination)
    for path in files:  # the bands' names, so that --bands green,red works on the copy
        if path.suffix == ".tif" and name in DATASET_BANDS:
            raster.set_band_names(path, DATASET_BANDS[name])
    say(f"copied {len(files)} files to {destination}")
