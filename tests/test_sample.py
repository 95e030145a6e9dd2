"""The bundled datasets as `stfusion sample` copies them: files, attribution, band names."""

from __future__ import annotations

from pathlib import Path

import rasterio
from click.testing import CliRunner

from stfusion.cli import cli
from stfusion.sample import DATASETS


def test_copies_carry_their_band_names_so_bands_select_by_name(tmp_path: Path) -> None:
    runner = CliRunner()
    copied = runner.invoke(cli, ["sample", "estarfm-site", str(tmp_path / "site")])
    assert copied.exit_code == 0, copied.output
    names = sorted(p.name for p in (tmp_path / "site").iterdir())
    assert names == sorted([*(p.name for p in DATASETS["estarfm-site"].iterdir()), "ATTRIBUTION.md"])
    for path in (tmp_path / "site").glob("*.tif"):
        with rasterio.open(path) as copy, rasterio.open(DATASETS["estarfm-site"] / path.name) as source:
            assert copy.descriptions == ("green", "red", "nir")
            assert (copy.read() == source.read()).all()  # the pixels are the source's
    site = tmp_path / "site"
    args = ["predict", "--method", "coarse-delta", "--bands", "nir,red", "--out", str(tmp_path / "p.tif")]
    args += ["--fine-t1", str(site / "fine_20010524.tif"), "--coarse-t1", str(site / "coarse_20010524.tif")]
    predicted = runner.invoke(cli, [*args, "--coarse-t2", str(site / "coarse_20010711.tif")])
    assert predicted.exit_code == 0, predicted.output
    with rasterio.open(tmp_path / "p.tif") as out:
        assert out.count == 2 and out.descriptions == ("nir", "red")
    # lgc-flood's bands are not known for sure: its copies stay unnamed
    assert runner.invoke(cli, ["sample", "lgc-flood", str(tmp_path / "lgc")]).exit_code == 0
    with rasterio.open(tmp_path / "lgc" / "fine_20041126.tif") as unnamed:
        assert unnamed.descriptions == (None, None, None)
