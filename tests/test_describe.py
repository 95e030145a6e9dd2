"""`stfusion info` (stfusion.describe): a GeoTIFF or a checkpoint as stfusion reads it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from stfusion import describe, raster
from stfusion.checkpoint import Checkpoint, ModelSpec, save
from stfusion.cli import cli
from stfusion.errors import InputError
from tests.conftest import write_tif


def _landsat_c2(path: Path) -> Path:
    """A 3-band int16 file stored as Landsat C2 L2 (x 2.75e-5 - 0.2, tags), -9999 nodata in a quarter."""
    rng = np.random.default_rng(0)
    reflectance = rng.uniform(0.05, 0.15, (3, 40, 40))
    stored = np.rint((reflectance + 0.2) / 2.75e-5).astype(np.int16)
    stored[:, :20, :20] = -9999
    write_tif(path, stored, nodata=-9999)
    with rasterio.open(path, "r+") as dst:
        dst.scales = (2.75e-5,) * 3
        dst.offsets = (-0.2,) * 3
    raster.set_band_names(path, ("green", "red", "nir"))
    return path


def test_a_geotiff_is_described_as_it_is_read(tmp_path: Path) -> None:
    path = _landsat_c2(tmp_path / "fine_2021-07-04.tif")
    lines = dict(describe.describe(path))
    assert lines["size"] == "3 band(s) x 40 rows x 40 columns"
    assert lines["storage"].startswith("int16")
    assert lines["bands"] == "1 green, 2 red, 3 nir"
    assert lines["nodata"] == "-9999"
    assert lines["date"].startswith("2021-07-04")
    assert "x 2.75e-05 - 0.2" in lines["reading"] and "tags" in lines["reading"]
    assert lines["values"] == "25.0% of the values invalid (every value read); 1200 nodata"
    median = float(lines["reflectance"].split()[1].rstrip(","))
    assert 0.09 < median < 0.11  # the reflectance written, not the stored numbers
    assert lines["grid"].startswith("EPSG:") and lines["masks"] == "none"
    mask = np.zeros((1, 40, 40), np.uint8)
    mask[:, :10] = 1
    write_tif(tmp_path / "fine_2021-07-04_MASK.TIF", mask)
    described = dict(describe.describe(path))
    assert "sidecar fine_2021-07-04_MASK.TIF" in described["masks"]
    assert described["values"].endswith("; its sidecar mask covers 25.0% of the pixels")


def test_a_scale_given_for_a_tagged_file_is_said_to_be_unused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _landsat_c2(tmp_path / "c2.tif")
    with caplog.at_level(logging.WARNING):
        lines = dict(describe.describe(path, scale=1e-4))
    assert "x 2.75e-05 - 0.2" in lines["reading"]  # the tags win
    assert (
        "c2.tif: its own GDAL scale/offset tags are used (x 2.75e-05, -0.2), not the --scale/--offset"
        in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        describe.describe(path)
        describe.describe(path, scale=1e-4)  # said once per file and values
    assert "tags are used" not in caplog.text


def test_an_untagged_file_takes_the_scale_given(tmp_path: Path) -> None:
    data = np.full((2, 8, 8), 4000, np.uint16)
    path = write_tif(tmp_path / "x.tif", data, crs=None)
    auto = dict(describe.describe(path))
    assert auto["bands"].startswith("2, without descriptions") and auto["date"] == "none in its name or tags"
    assert auto["grid"].startswith("no CRS") and auto["reflectance"].startswith("median 0.4000")
    given = dict(describe.describe(path, scale=2.75e-5, offset=-0.2))
    assert given["reflectance"].startswith("median -0.0900")
    with pytest.raises(InputError, match=r"--offset 0\.1 needs --scale"):
        describe.describe(path, offset=0.1)


def test_a_checkpoint_is_described_without_running_code(tmp_path: Path) -> None:
    spec = ModelSpec("mlffgan", 2, {"channels": [4, 4, 8, 8, 8]})
    trained = Checkpoint(
        model=spec,
        generator=spec.build().state_dict(),
        coarse_factor=16,
        band_names=["red", "nir"],
        config={"data": {"train": ["a-b"], "val": ["b-a"], "files": ["fine_1.tif", "coarse_1.tif"]}},
        epoch=3,
        best_val=0.25,
    )
    path = save(tmp_path / "model.bin", trained)  # a zip archive, whatever its name
    lines = dict(describe.describe(path))
    assert lines["kind"] == "stfusion checkpoint" and lines["model"].startswith("mlffgan, 2 band(s)")
    assert lines["bands"] == "red, nir" and lines["coarse factor"] == "16"
    assert lines["trained"] == "3 epoch(s), best validation loss 0.25"
    assert lines["training cases"] == "a-b" and lines["validation cases"] == "b-a"
    assert lines["training images"] == "2: coarse_1.tif, fine_1.tif"
    assert lines["can resume training"].startswith("no")
    with pytest.raises(InputError, match="records its own scale"):
        describe.describe(path, scale=1e-4)


def test_info_command_prints_lines_or_json_and_refuses_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _landsat_c2(tmp_path / "fine.tif")
    runner = CliRunner()
    text = runner.invoke(cli, ["info", str(path)])
    assert text.exit_code == 0, text.output
    assert "bands:       1 green, 2 red, 3 nir" in text.output
    as_json = runner.invoke(cli, ["info", str(path), "--json"])
    assert json.loads(as_json.output)["nodata"] == "-9999"
    # digital numbers without tags: the value warning every command gives
    dn = write_tif(tmp_path / "dn.tif", np.full((1, 8, 8), 30000, np.uint16))
    with caplog.at_level(logging.WARNING):
        assert runner.invoke(cli, ["info", str(dn)]).exit_code == 0
    assert "look like digital numbers" in caplog.text and "scale (--scale, with --offset if" in caplog.text
    for bad, message in (
        (tmp_path / "none.tif", "none.tif: not found"),
        (tmp_path, "is a folder"),
        (write_tif(tmp_path / "empty.tif", np.full((1, 4, 4), -1, np.int16), nodata=-1), "no valid pixel"),
    ):
        result = runner.invoke(cli, ["info", str(bad)])
        assert result.exit_code == 2 and message in result.output, result.output
        assert result.output.count("\n") == 1, result.output


def test_doctests() -> None:
    import doctest

    result = doctest.testmod(describe)
    assert result.attempted >= 2 and result.failed == 0


def test_cases_says_how_much_of_each_image_is_invalid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stfusion cases` reads each image once and flags a reference over 50% invalid; an unreadable
    image, or a mask off the grid that cannot be placed on it, is named in its case's line, and the
    listing goes on."""
    folder = tmp_path / "d"
    rng = np.random.default_rng(0)
    images = {name: rng.integers(100, 3000, (2, 20, 20)).astype(np.int16) for name in ("a", "b", "c")}
    images["a"][:, :12] = -9999  # 60% nodata in the fine image of 05-24
    for role in ("fine", "coarse"):
        for date, name in (("20010524", "a"), ("20010711", "b"), ("20010812", "c")):
            data = images[name] if role == "fine" else images[name] // 2 + 100
            write_tif(folder / f"{role}_{date}.tif", data, crs=None, nodata=-9999)
    mask = np.zeros((20, 20), np.uint8)
    mask[:5] = 1
    write_tif(folder / "coarse_20010711_mask.tif", mask, crs=None)
    (folder / "fine_20010812.tif").write_bytes(b"II*\x00" + b"\x00" * 20)  # a damaged TIFF
    judged: list[Path] = []
    invalid_fraction = describe.series.invalid_fraction

    def counted(path: Path, *args: Any, **kwargs: Any) -> float:
        judged.append(path)
        return invalid_fraction(path, *args, **kwargs)

    monkeypatch.setattr(describe.series, "invalid_fraction", counted)
    result = CliRunner().invoke(cli, ["cases", str(folder)])
    assert result.exit_code == 0, result.output
    # 6 images in 2 cases (2 shared, on one grid): each judged once (the damaged one is refused first)
    assert sorted(judged) == sorted(set(judged)) and len(judged) == 5, judged
    lines = [
        line.strip() for line in result.output.splitlines() if "invalid pixel" in line or "unreadable" in line
    ]
    assert lines[0] == "invalid pixels: fine_t1 60% (too cloudy to be a reference), coarse_t2 25%", (
        result.output
    )
    assert any("fine_t2 not usable (" in line and "fine_20010812.tif" in line for line in lines), (
        result.output
    )


def test_cases_with_an_unreadable_grid_image_say_it_once(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    data = np.random.default_rng(1).integers(100, 3000, (2, 12, 12)).astype(np.int16)
    for date in ("20010524", "20010711", "20010812"):
        for role in ("fine", "coarse"):
            write_tif(folder / f"{role}_{date}.tif", data, crs=None)
    (folder / "fine_20010524.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    (folder / "coarse_20010812_mask.tif").write_bytes(b"II*\x00")  # a damaged mask
    write_tif(folder / "fine_20010711_mask.tif", np.zeros((6, 6), np.uint8), crs=None)  # off the grid, no CRS
    result = CliRunner().invoke(cli, ["cases", str(folder)])
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines() if "not usable" in line]
    lines = [line for line in lines if line.startswith("invalid pixels:")]
    assert len(lines) == 2, result.output
    assert lines[0].startswith("invalid pixels: fine_t1 not usable (") and "fine_20010524.tif" in lines[0]
    assert lines[0].endswith("the case's other images not judged") and lines[0].count(" not usable (") == 1
    assert (
        lines[1].startswith("invalid pixels: fine_t1 mask not usable (")
        and "cannot be reprojected" in lines[1]
    )
    assert "coarse_t2 mask not usable (" in lines[1] and "coarse_20010812_mask.tif" in lines[1]


def test_a_mask_file_is_described_as_a_mask(tmp_path: Path) -> None:
    write_tif(tmp_path / "fine_20010711.tif", np.full((2, 10, 10), 1000, np.int16))
    mask = np.zeros((10, 10), np.uint8)
    mask[:3] = 1
    path = write_tif(tmp_path / "fine_20010711_mask.tif", mask)
    lines = dict(describe.describe(path))
    assert lines["kind"] == "mask of fine_20010711.tif (nonzero = invalid)"
    assert lines["masked"] == "30.0% of the pixels" and "reflectance" not in lines
    (tmp_path / "fine_20010711.tif").rename(tmp_path / "fine_20010711.TIFF")  # paired by stem, any suffix
    assert dict(describe.describe(path))["kind"] == "mask of fine_20010711.TIFF (nonzero = invalid)"


def test_cases_warns_about_values_as_the_other_commands_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "d"
    data = np.random.default_rng(2).integers(100, 3000, (2, 20, 20)).astype(np.int16)
    filled = data.copy()
    filled[:, :2] = -9999  # an undeclared fill value
    for date, fine in (("20010524", filled), ("20010711", data)):
        write_tif(folder / f"fine_{date}.tif", fine, crs=None)
        write_tif(folder / f"coarse_{date}.tif", data, crs=None)
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(cli, ["cases", str(folder)])
    assert result.exit_code == 0, result.output
    assert "fine_20010524.tif: 80 of 800 sampled values are below reflectance -0.5" in caplog.text
