"""Time series (stfusion.series, `stfusion fuse`): pair choice, outputs, resume, cloudy references."""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from stfusion import raster, scenes, series
from stfusion.cli import cli
from stfusion.errors import InputError
from stfusion.sample import DATASETS
from tests.conftest import write_tif, write_tiny_checkpoint

FINE_DATES = (dt.date(2001, 5, 24), dt.date(2001, 7, 11), dt.date(2001, 8, 12))
CROP = (slice(None), slice(100, 164), slice(100, 164))


def build_series(folder: Path, *, extra: int = 20) -> list[dt.date]:
    """3 real ESTARFM-site dates (64 x 64 crop, fine + coarse) and ``extra`` synthetic coarse dates.

    Synthetic coarse images interpolate the real coarse images linearly in time (plus a little noise),
    every 5 days from 2001-05-10 (before, between and after the fine dates); returns the synthetic dates.
    """
    root = DATASETS["estarfm-site"]
    coarse = {d: raster.read(root / f"coarse_{d:%Y%m%d}.tif").data[CROP] for d in FINE_DATES}
    for d in FINE_DATES:
        for role in ("fine", "coarse"):
            data = raster.read(root / f"{role}_{d:%Y%m%d}.tif").data[CROP]
            write_tif(folder / f"{role}_{d:%Y%m%d}.tif", np.rint(data * 1e4).astype(np.int16), crs=None)
    rng = np.random.default_rng(0)
    synthetic = []
    start = dt.date(2001, 5, 10)
    while len(synthetic) < extra:
        date = start + dt.timedelta(days=5 * len(synthetic))
        if date in FINE_DATES:
            start += dt.timedelta(days=1)
            continue
        days = np.array([(d - date).days for d in FINE_DATES], dtype=float)
        weights = 1 / (np.abs(days) + 1)
        image = sum(w * coarse[d] for w, d in zip(weights / weights.sum(), FINE_DATES, strict=True))
        image = image + rng.normal(0, 0.002, image.shape)
        write_tif(folder / f"coarse_{date:%Y%m%d}.tif", np.rint(image * 1e4).astype(np.int16), crs=None)
        synthetic.append(date)
    return synthetic


def test_choose_pairs() -> None:
    d = dt.date
    usable = [d(2001, 1, 1), d(2001, 2, 1), d(2001, 3, 1)]
    assert series.choose_pairs(d(2001, 1, 15), usable) == (d(2001, 1, 1), d(2001, 2, 1))
    assert series.choose_pairs(d(2001, 4, 1), usable) == (d(2001, 2, 1), d(2001, 3, 1))  # both before
    assert series.choose_pairs(d(2000, 12, 1), usable) == (d(2001, 1, 1), d(2001, 2, 1))  # both after
    assert series.choose_pairs(d(2000, 12, 1), usable[:1]) == (d(2001, 1, 1),)
    assert series.choose_pairs(d(2001, 1, 20), usable, max_pairs=1) == (d(2001, 2, 1),)
    assert series.choose_pairs(d(2001, 1, 20), []) == ()


def test_fuse_dates_option_takes_a_range_or_one_date() -> None:
    from stfusion.cli.fuse import parse_dates

    d = dt.date
    assert parse_dates("2001-06-01..20010831") == (d(2001, 6, 1), d(2001, 8, 31))
    assert parse_dates("2001-07-11") == (d(2001, 7, 11), d(2001, 7, 11))
    assert parse_dates(None) is None
    for bad, why in (("2001-08-31..2001-06-01", "A on or before B"), ("July", "expected A..B or one date")):
        with pytest.raises(InputError, match=why):
            parse_dates(bad)


def test_a_file_given_as_the_folder_is_named_as_a_file(tmp_path: Path) -> None:
    script = tmp_path / "info.py"
    script.write_text("print(1)\n")
    for call in (
        lambda: series.SeriesInputs.from_folder(script),
        lambda: series.SeriesInputs.from_dirs(script, tmp_path),
        lambda: scenes.discover(script),
    ):
        with pytest.raises(InputError, match=r"info\.py: is a file, not a folder; give the folder"):
            call()
    with pytest.raises(InputError, match=r"nowhere: folder not found"):
        series.SeriesInputs.from_folder(tmp_path / "nowhere")


def test_date_of_names() -> None:
    assert series.date_of(Path("LC08_20010524_x.tif")) == dt.date(2001, 5, 24)
    assert series.date_of(Path("S2_2001-05-24.tif")) == dt.date(2001, 5, 24)
    assert series.date_of(Path("MOD09GA.A2001144.h29v12.tif")) == dt.date(2001, 5, 24)
    assert series.date_of(Path("MOD09GA.A2000366.h29v12.tif")) == dt.date(2000, 12, 31)  # a leap year


def test_impossible_days_of_year_are_no_dates(tmp_path: Path) -> None:
    for day in ("2001366", "2001000", "2001999"):  # the file has no date tags either
        path = write_tif(tmp_path / f"MOD09GA.A{day}.tif", np.zeros((1, 4, 4), np.int16))
        assert series.date_of(path) is None, day


def test_separate_folders_attach_masks_whatever_the_case_of_their_suffixes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--fine-dir / --coarse-dir: USGS-style `.TIF` images take their `_mask.tif` (or `_MASK.TIF`)
    files; a mask of no image is reported, not used."""
    data = tmp_path / "data"
    build_series(data, extra=2)
    fine_dir, coarse_dir = tmp_path / "L8", tmp_path / "MODIS"
    fine_dir.mkdir()
    coarse_dir.mkdir()
    for date in FINE_DATES:
        shutil.copy(data / f"fine_{date:%Y%m%d}.tif", fine_dir / f"LC08_{date:%Y%m%d}.TIF")
    for path in data.glob("coarse_*.tif"):
        shutil.copy(path, coarse_dir / path.name.replace("coarse_", "MOD09GA_"))
    cloudy = np.zeros((64, 64), np.uint8)
    cloudy[:52] = 1  # 81 % invalid: too cloudy to be a reference
    write_tif(fine_dir / f"LC08_{FINE_DATES[1]:%Y%m%d}_mask.tif", cloudy, crs=None)
    write_tif(fine_dir / f"LC08_{FINE_DATES[2]:%Y%m%d}_MASK.TIF", cloudy, crs=None)
    write_tif(fine_dir / "LC08_20010101_mask.tif", cloudy, crs=None)  # no such image
    with caplog.at_level("WARNING", logger="stfusion.series"):
        inputs = series.SeriesInputs.from_dirs(fine_dir, coarse_dir)
    assert {image.name: mask.name for image, mask in inputs.masks.items()} == {
        f"LC08_{FINE_DATES[1]:%Y%m%d}.TIF": f"LC08_{FINE_DATES[1]:%Y%m%d}_mask.tif",
        f"LC08_{FINE_DATES[2]:%Y%m%d}.TIF": f"LC08_{FINE_DATES[2]:%Y%m%d}_MASK.TIF",
    }
    assert "LC08_20010101_mask.tif: not used: no image named LC08_20010101 in its folder" in caplog.text
    lone = fine_dir / "LC08_20010901.TIF"  # a fine image without a coarse image of its date
    shutil.copy(fine_dir / f"LC08_{FINE_DATES[0]:%Y%m%d}.TIF", lone)
    with caplog.at_level("WARNING", logger="stfusion.series"):
        series.plan_series(series.SeriesInputs.from_dirs(fine_dir, coarse_dir))
    assert f"{lone}: not used: no coarse image of 2001-09-01 (a reference pair needs both)" in caplog.text
    lone.unlink()
    plans = {plan.date: plan for plan in series.plan_series(inputs)}
    assert plans[FINE_DATES[0]].observed  # the clear one
    for date in FINE_DATES[1:]:  # the masked ones are predicted from the clear one, and say why
        assert plans[date].pairs == (FINE_DATES[0],), plans[date]
        assert plans[date].reason == "predicted: the fine image of this date has 81.2% invalid (> 50%)"


def test_fuse_writes_every_date_table_and_figure_then_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synthetic = build_series(data)
    out = tmp_path / "out"
    args = ["fuse", str(data), "--out", str(out), "--method", "coarse-delta"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("20 date(s) predicted, 3 observed")
    outputs = sorted(out.glob("fused_*.tif"))
    assert [p.name for p in outputs] == [f"fused_{d:%Y%m%d}.tif" for d in sorted(synthetic)]
    with open(out / "series.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 23 and {r["status"] for r in rows} == {"predicted", "observed"}
    by_date = {r["date"]: r for r in rows}
    # a date between two fine dates takes the nearest before and after; one after the last, the two last
    june = str(next(d for d in sorted(synthetic) if d.month == 6))
    assert by_date[june]["pairs"] == "2001-05-24 2001-07-11"
    last = max(synthetic)
    assert last > FINE_DATES[-1] and by_date[str(last)]["pairs"] == "2001-07-11 2001-08-12"
    assert float(by_date[june]["band1"]) > 0 and float(by_date[june]["valid_fraction"]) == 1.0
    assert (out / "series.png").stat().st_size > 5000
    with rasterio.open(outputs[0]) as src:
        assert src.tags()["STFUSION_METHOD"] == "coarse-delta"
    # a rerun refuses to replace outputs; --skip-existing keeps them all
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "output exists" in again.output
    mtimes = {p: p.stat().st_mtime_ns for p in outputs}
    kept = CliRunner().invoke(cli, [*args, "--skip-existing"])
    assert kept.exit_code == 0, kept.output
    assert kept.output.count("(kept)") == 20 and "not coarse-delta" not in kept.output
    assert kept.output.rstrip().endswith("0 date(s) predicted, 20 kept, 3 observed"), kept.output
    assert {p: p.stat().st_mtime_ns for p in outputs} == mtimes
    # kept by a run of another method: reported as the files were made, and said so
    other = [*args[: args.index("--method") + 1], "persistence", "--skip-existing"]
    switched = CliRunner().invoke(cli, other)
    assert switched.exit_code == 0, switched.output
    assert switched.output.count("(coarse-delta from ") == 20, switched.output
    note = "kept as made by coarse-delta, not persistence (--overwrite redoes it)"
    assert switched.output.count(note) == 20, switched.output
    assert {p: p.stat().st_mtime_ns for p in outputs} == mtimes


def test_a_reference_needs_both_images_usable_and_masks_add_to_nodata(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synthetic = build_series(data, extra=4)
    may, july, august = FINE_DATES
    june = next(d for d in synthetic if may < d < july)
    # July's coarse image 92 % nodata: July stays observed, but is no reference
    path = data / f"coarse_{july:%Y%m%d}.tif"
    stored = raster.read(path).data
    stored = np.rint(np.nan_to_num(stored, nan=0) * 1e4).astype(np.int16)
    stored[:, :59] = -32768
    write_tif(path, stored, crs=None, nodata=-32768)
    plans = {p.date: p for p in series.plan_series(series.SeriesInputs.from_folder(data))}
    assert plans[july].observed
    assert "not a reference: its coarse image has 92.2% invalid" in plans[july].reason
    assert plans[june].pairs == (may, august)
    # May's fine image: the top half nodata and the bottom 24 rows masked, 87.5 % invalid in all (each
    # alone is at most 50 %)
    path = data / f"fine_{may:%Y%m%d}.tif"
    stored = np.rint(np.nan_to_num(raster.read(path).data, nan=0) * 1e4).astype(np.int16)
    stored[:, :32] = -32768
    write_tif(path, stored, crs=None, nodata=-32768)
    mask = np.zeros((64, 64), np.uint8)
    mask[40:] = 1
    write_tif(data / f"fine_{may:%Y%m%d}_mask.tif", mask, crs=None)
    inputs = series.SeriesInputs.from_folder(data)
    grid = raster.inspect(inputs.fine[may])
    assert series.invalid_fraction(inputs.fine[may], inputs.masks[inputs.fine[may]], grid) == 0.875
    plans = {p.date: p for p in series.plan_series(inputs, max_invalid=0.6)}
    assert not plans[may].observed and "87.5% invalid" in plans[may].reason
    with pytest.raises(InputError, match="in one of them"):
        series.plan_series(series.SeriesInputs(fine={july: inputs.fine[july]}, coarse=inputs.coarse))


def test_an_observed_date_is_checked_before_any_output(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build_series(data, extra=4)
    may, july, august = FINE_DATES
    for date in (may, august):  # July's fine image has no band names, and is only observed
        raster.set_band_names(data / f"fine_{date:%Y%m%d}.tif", ("green", "red", "nir"))
    path = data / f"coarse_{july:%Y%m%d}.tif"
    stored = np.rint(np.nan_to_num(raster.read(path).data, nan=0) * 1e4).astype(np.int16)
    stored[:, :59] = -32768
    write_tif(path, stored, crs=None, nodata=-32768)
    out = tmp_path / "out"
    args = ["fuse", str(data), "--out", str(out), "--method", "coarse-delta", "--bands", "red,nir"]
    refused = CliRunner().invoke(cli, [*args, "--coarse-bands", "2,3"])
    assert refused.exit_code == 2 and f"fine_{july:%Y%m%d}.tif: no band named 'red'" in refused.output
    assert not out.exists()


def test_a_folder_says_which_images_and_masks_it_leaves_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    build_series(data, extra=2)
    write_tif(data / "fine_20010230.tif", np.zeros((1, 4, 4), np.int16), crs=None)
    write_tif(data / "fine_2001-03-1_mask.tif", np.zeros((1, 4, 4), np.uint8), crs=None)
    (data / "notes.txt").write_text("not an image: not worth a warning")
    with caplog.at_level(logging.WARNING):
        inputs = series.SeriesInputs.from_folder(data)
    assert len(inputs.fine) == 3
    assert "fine_20010230.tif: not used: 20010230 is not a valid date" in caplog.text
    assert "fine_2001-03-1_mask.tif: not used: no image named fine_2001-03-1" in caplog.text
    assert "notes.txt" not in caplog.text


def test_a_fully_cloudy_coarse_date_is_skipped_and_the_series_goes_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synthetic = sorted(build_series(data, extra=4))
    cloudy = synthetic[1]
    write_tif(data / f"coarse_{cloudy:%Y%m%d}_mask.tif", np.ones((64, 64), np.uint8), crs=None)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["fuse", str(data), "--out", str(out), "--method", "coarse-delta"])
    assert result.exit_code == 0, result.output
    assert f"{cloudy}: skipped: no pixel could be predicted" in result.output
    assert result.output.rstrip().endswith(
        "3 date(s) predicted, 1 skipped (no pixel could be predicted), 3 observed"
    )
    assert not series.output_path(out, cloudy).exists()
    assert all(series.output_path(out, d).exists() for d in synthetic if d != cloudy)
    with open(out / "series.csv") as handle:
        rows = {row["date"]: row for row in csv.DictReader(handle)}
    assert rows[str(cloudy)]["status"] == "skipped" and rows[str(cloudy)]["band1"] == ""
    # a rerun for another date keeps the skipped one in the table
    again = CliRunner().invoke(
        cli,
        [
            "fuse",
            str(data),
            "--out",
            str(out),
            "--method",
            "coarse-delta",
            "--dates",
            str(synthetic[0]),
            "--overwrite",
        ],
    )
    assert again.exit_code == 0, again.output
    with open(out / "series.csv") as handle:
        assert {row["date"]: row["status"] for row in csv.DictReader(handle)} == {
            d: r["status"] for d, r in rows.items()
        }
    inputs = series.SeriesInputs.from_folder(data)
    in_memory = {r.date: r for r in series.fuse(inputs.fine, inputs.coarse, method="coarse-delta")}
    assert in_memory[cloudy].status == "skipped" and in_memory[cloudy].prediction is None
    # redone with --overwrite after its coarse image clouded over: the earlier output goes
    (data / f"coarse_{cloudy:%Y%m%d}_mask.tif").unlink()
    redo = ["fuse", str(data), "--out", str(out), "--method", "coarse-delta", "--dates", str(cloudy)]
    assert CliRunner().invoke(cli, redo).exit_code == 0 and series.output_path(out, cloudy).exists()
    write_tif(data / f"coarse_{cloudy:%Y%m%d}_mask.tif", np.ones((64, 64), np.uint8), crs=None)
    gone = CliRunner().invoke(cli, [*redo, "--overwrite"])
    assert gone.exit_code == 0 and f"fused_{cloudy:%Y%m%d}.tif of an earlier run removed" in gone.output
    assert not series.output_path(out, cloudy).exists()
    assert in_memory[synthetic[0]].status == "predicted"


def test_a_rerun_from_another_folder_finds_the_earlier_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "a" / "data"
    synthetic = sorted(build_series(data, extra=4))
    monkeypatch.chdir(tmp_path / "a")
    first = [
        "fuse",
        "data",
        "--out",
        "out",
        "--method",
        "coarse-delta",
        "--dates",
        f"{synthetic[0]}..{synthetic[1]}",
    ]
    assert (result := CliRunner().invoke(cli, first)).exit_code == 0, result.output
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    second = [
        "fuse",
        "../a/data",
        "--out",
        "../a/out",
        "--method",
        "coarse-delta",
        "--dates",
        str(synthetic[2]),
    ]
    assert (result := CliRunner().invoke(cli, second)).exit_code == 0, result.output
    with open(tmp_path / "a" / "out" / "series.csv") as handle:
        rows = {row["date"]: row["status"] for row in csv.DictReader(handle)}
    assert all(rows[str(d)] == "predicted" for d in synthetic[:3]), rows


def test_invalid_fractions_of_georeferenced_images_are_estimated_on_a_coarser_grid(tmp_path: Path) -> None:
    from tests.conftest import TEST_TRANSFORM

    image = write_tif(tmp_path / "fine.tif", np.full((2, 600, 700), 1000, np.int16), transform=TEST_TRANSFORM)
    cloud = np.zeros((600, 700), np.uint8)
    cloud[:150] = 1  # 25 %
    mask = write_tif(tmp_path / "fine_mask.tif", cloud, transform=TEST_TRANSFORM)
    stored = np.full((2, 600, 700), 1000, np.int16)
    stored[:, :, :350] = -9999  # 50 %, overlapping the cloud by half of it
    holes = write_tif(tmp_path / "holes.tif", stored, transform=TEST_TRANSFORM, nodata=-9999)
    grid = raster.inspect(image)
    assert series.invalid_fraction(image, mask, grid) == pytest.approx(0.25, abs=0.01)
    assert series.invalid_fraction(holes, mask, grid) == pytest.approx(0.625, abs=0.01)
    assert series.invalid_fraction(holes, None, grid) == pytest.approx(0.5, abs=0.01)


def test_a_rerun_with_dates_keeps_the_other_dates_in_the_table(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synthetic = sorted(build_series(data, extra=6))
    out = tmp_path / "out"
    args = ["fuse", str(data), "--out", str(out), "--method", "coarse-delta"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output

    def table() -> dict[str, dict[str, str]]:
        with open(out / "series.csv") as handle:
            return {row["date"]: row for row in csv.DictReader(handle)}

    before = table()
    assert len(before) == 9
    # one date redone with another method: its row changes, the other eight stay as they were
    redo = [*args[:-1], "persistence", "--dates", str(synthetic[0]), "--overwrite"]
    again = CliRunner().invoke(cli, redo)
    assert again.exit_code == 0, again.output
    assert again.output.rstrip().endswith("1 date(s) predicted, 0 observed"), again.output
    after = table()
    assert list(after) == sorted(before) and after[str(synthetic[0])]["method"] == "persistence"
    assert all(after[d] == before[d] for d in before if d != str(synthetic[0]))
    # a date whose output is gone, or whose images are, is not reported from the earlier run
    series.output_path(out, synthetic[1]).unlink()
    (data / f"coarse_{synthetic[2]:%Y%m%d}.tif").unlink()
    third = CliRunner().invoke(cli, [*args, "--dates", str(synthetic[3]), "--overwrite"])
    assert third.exit_code == 0, third.output
    assert sorted(table()) == sorted(set(before) - {str(synthetic[1]), str(synthetic[2])})


@pytest.mark.slow
def test_fuse_killed_halfway_redoes_only_the_missing_dates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build_series(data)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "stfusion", "fuse", str(data), "--out", str(out), "--method", "starfm"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list(out.glob("fused_*.tif"))) < 5 and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = {p: p.stat().st_mtime_ns for p in out.glob("fused_*.tif")}
    assert 5 <= len(done) < 20, len(done)
    for path in done:  # nothing half-written under a final name (a killed write leaves a hidden .part)
        with rasterio.open(path) as src:
            assert src.read().shape == (3, 64, 64)
    rerun = subprocess.run([*args, "--skip-existing"], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count("(kept)") == len(done)
    assert rerun.stdout.count("starfm from") - rerun.stdout.count("(kept)") == 20 - len(done)
    assert len(list(out.glob("fused_*.tif"))) == 20
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())
    assert not list(out.glob(".*.part"))  # the rerun removed the killed write's temporary, if any


def test_no_usable_reference_is_refused_before_any_output(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build_series(data, extra=3)
    for date in FINE_DATES:  # every fine image 80 % cloudy
        mask = np.zeros((64, 64), np.uint8)
        mask[:52] = 1
        write_tif(data / f"fine_{date:%Y%m%d}_mask.tif", mask, crs=None)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["fuse", str(data), "--out", str(out), "--method", "coarse-delta"])
    # no date has a usable reference pair: one line, exit 2, and no output folder at all
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "\n" not in message and message.startswith(f"error: {data}: no date can be predicted"), message
    assert "has more than 50% invalid pixels in one of them (least invalid: " in message, message
    assert f"{FINE_DATES[0]} 81.2%" in message and "--max-invalid admits cloudier ones" in message, message
    assert not out.exists()
    # fine and coarse images of no common date: said so, with the dates of both
    apart = tmp_path / "apart"
    apart.mkdir()
    for date in FINE_DATES[:1]:
        shutil.copy(data / f"fine_{date:%Y%m%d}.tif", apart)
    for date in FINE_DATES[1:]:
        shutil.copy(data / f"coarse_{date:%Y%m%d}.tif", apart)
    result = CliRunner().invoke(cli, ["fuse", str(apart), "--out", str(out), "--method", "coarse-delta"])
    assert result.exit_code == 2 and not out.exists(), result.output
    expected = (
        "no fine image has a coarse image of its date to pair with (fine dates 2001-05-24; coarse dates "
        "2001-07-11, 2001-08-12)"
    )
    assert expected in result.output, result.output
    # with a looser limit they are usable references (and their own dates count as observed)
    looser = CliRunner().invoke(
        cli,
        [
            "fuse",
            str(data),
            "--out",
            str(tmp_path / "o2"),
            "--method",
            "coarse-delta",
            "--max-invalid",
            "0.9",
        ],
    )
    assert looser.exit_code == 0, looser.output
    assert len(list((tmp_path / "o2").glob("fused_*.tif"))) == 3


def test_python_api_in_memory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synthetic = build_series(data, extra=2)
    inputs = series.SeriesInputs.from_folder(data)
    results = series.fuse(inputs.fine, inputs.coarse, method="coarse-delta")
    assert isinstance(results, list)
    predicted = [r for r in results if r.status == "predicted"]
    assert [r.date for r in predicted] == sorted(synthetic)
    assert all(r.prediction is not None and r.prediction.shape == (3, 64, 64) for r in predicted)
    lazy = series.fuse(inputs.fine, inputs.coarse, method="coarse-delta", lazy=True, out=tmp_path / "o")
    assert not isinstance(lazy, list) and not list((tmp_path / "o").glob("*.tif"))
    first = next(r for r in lazy if r.status == "predicted")
    assert first.path is not None and first.path.exists()
    assert os.path.basename(first.path) == f"fused_{min(synthetic):%Y%m%d}.tif"
    # a sidecar mask plans the series as on the command line: a fine image 81 % masked is no
    # reference (its date is predicted, and says why)
    cloudy = np.zeros((64, 64), np.uint8)
    cloudy[:52] = 1
    write_tif(data / f"fine_{FINE_DATES[1]:%Y%m%d}_mask.tif", cloudy, crs=None)
    planned = {r.date: r for r in series.fuse(inputs.fine, inputs.coarse, method="coarse-delta")}
    assert planned[FINE_DATES[1]].status == "predicted", planned[FINE_DATES[1]]
    assert "81.2% invalid" in planned[FINE_DATES[1]].reason
    assert all(FINE_DATES[1] not in r.pairs for r in planned.values())
    # a mask given for an image by another path to the same file masks it; one for no image is refused
    may = inputs.fine[FINE_DATES[0]]
    cloud = write_tif(tmp_path / "cloud.tif", np.ones((64, 64), np.uint8), crs=None)
    relative = os.path.relpath(may.parent.parent / ".." / may.parent.parent.name / "data" / may.name)
    masked = series.fuse(inputs.fine, inputs.coarse, method="coarse-delta", masks={relative: cloud})
    assert {r.date: r for r in masked}[FINE_DATES[0]].status == "predicted"
    with pytest.raises(InputError, match=r"elsewhere\.tif: given a mask \(.*cloud\.tif\) but is none of"):
        series.fuse(inputs.fine, inputs.coarse, masks={tmp_path / "elsewhere.tif": cloud})
    # dates as datetime or 'YYYY-MM-DD' keys are the same dates; anything else is refused in one line
    as_text = series.fuse({str(d): p for d, p in inputs.fine.items()}, inputs.coarse, method="coarse-delta")
    as_datetime = {dt.datetime(d.year, d.month, d.day, 10, 30): p for d, p in inputs.fine.items()}
    for results in (as_text, series.fuse(as_datetime, inputs.coarse, method="coarse-delta")):
        assert [r.status for r in results] == [r.status for r in planned.values()]
    with pytest.raises(InputError, match=r"fine image key 20010524: give a datetime\.date"):
        series.fuse({20010524: inputs.fine[FINE_DATES[0]]}, inputs.coarse)


def test_python_api_reruns_into_its_folder_as_asked(tmp_path: Path) -> None:
    from stfusion.errors import OutputExistsError
    from stfusion.workflows import OutputOptions

    data = tmp_path / "data"
    synthetic = build_series(data, extra=2)
    inputs = series.SeriesInputs.from_folder(data)
    out = tmp_path / "out"
    first = series.fuse(inputs.fine, inputs.coarse, method="coarse-delta", out=out)
    assert sorted(r.date for r in first if r.status == "predicted") == sorted(synthetic)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("fused_*.tif")}
    with pytest.raises(OutputExistsError):  # refused before any work, nothing replaced
        series.fuse(inputs.fine, inputs.coarse, method="coarse-delta", out=out)
    kept = series.fuse(inputs.fine, inputs.coarse, out=out, output=OutputOptions(skip_existing=True))
    assert sorted(r.date for r in kept if r.status == "kept") == sorted(synthetic)
    assert {p: p.stat().st_mtime_ns for p in out.glob("fused_*.tif")} == mtimes
    again = series.fuse(
        inputs.fine, inputs.coarse, method="persistence", out=out, output=OutputOptions(overwrite=True)
    )
    assert {r.method for r in again if r.status == "predicted"} == {"persistence"}


def test_fuse_with_a_checkpoint_defaults_to_mlffgan_and_a_mismatch_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build_series(data, extra=1)
    model = write_tiny_checkpoint(tmp_path / "m.ckpt", bands=3, coarse_factor=4)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["fuse", str(data), "--out", str(out), "--checkpoint", str(model)])
    assert result.exit_code == 0, result.output
    (fused,) = out.glob("fused_*.tif")
    with rasterio.open(fused) as src:
        assert src.tags()["STFUSION_METHOD"] == "mlffgan"
    # a classical method with a checkpoint, or MLFF-GAN without one: refused before any output exists
    for extra in (["--checkpoint", str(model), "--method", "fsdaf"], ["--method", "mlffgan"]):
        refused = CliRunner().invoke(cli, ["fuse", str(data), "--out", str(tmp_path / "o2"), *extra])
        assert refused.exit_code == 2 and "checkpoint" in refused.output, refused.output
        assert not (tmp_path / "o2").exists()


def test_python_api_with_a_checkpoint(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synthetic = build_series(data, extra=1)
    model = write_tiny_checkpoint(tmp_path / "m.ckpt", bands=3, coarse_factor=4)
    inputs = series.SeriesInputs.from_folder(data)
    results = series.fuse(inputs.fine, inputs.coarse, checkpoint=model)
    assert isinstance(results, list)
    (predicted,) = [r for r in results if r.status == "predicted"]
    assert predicted.date == synthetic[0] and predicted.method == "mlffgan"
    assert predicted.prediction is not None and np.isfinite(predicted.prediction).all()
    with pytest.raises(InputError, match="--checkpoint is for a trained model"):
        series.fuse(inputs.fine, inputs.coarse, method="fsdaf", checkpoint=model)


def test_a_series_is_refused_before_any_output_and_observed_dates_respect_masks(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synthetic = build_series(data, extra=3)
    out = tmp_path / "out"
    bad_option = CliRunner().invoke(cli, ["fuse", str(data), "--out", str(out), "--option", "window_size=4"])
    assert bad_option.exit_code == 2 and "window_size" in bad_option.output and not out.exists()
    last = data / f"coarse_{synthetic[-1]:%Y%m%d}.tif"
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) // 3])  # a truncated image of the last date
    truncated = CliRunner().invoke(cli, ["fuse", str(data), "--out", str(out), "--method", "coarse-delta"])
    assert truncated.exit_code == 2 and last.name in truncated.output, truncated.output
    assert not out.exists()
    last.write_bytes(whole)
    # a mask on an observed fine image: its row of series.csv counts and averages the clear pixels only
    mask = np.zeros((64, 64), np.uint8)
    mask[:16] = 1
    write_tif(data / f"fine_{FINE_DATES[1]:%Y%m%d}_mask.tif", mask, crs=None)
    result = CliRunner().invoke(cli, ["fuse", str(data), "--out", str(out), "--method", "coarse-delta"])
    assert result.exit_code == 0, result.output
    with open(out / "series.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["date"] == str(FINE_DATES[1]))
    fine = raster.read(data / f"fine_{FINE_DATES[1]:%Y%m%d}.tif").data
    assert row["status"] == "observed" and float(row["valid_fraction"]) == 0.75
    assert float(row["band1"]) == pytest.approx(float(fine[0, 16:].mean()), abs=1e-4)
    # common_<band>: every date averaged over the same pixels, those valid on all dates (rows 16-63)
    with open(out / "series.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and all(r["status"] in ("observed", "predicted") for r in rows)
    per_date = []
    for r in rows:
        path = data / f"fine_{r['date'].replace('-', '')}.tif"
        image = raster.read(
            path if r["status"] == "observed" else out / f"fused_{r['date'].replace('-', '')}.tif"
        )
        assert np.isfinite(image.data[:, 16:]).all()
        assert float(r["common_band2"]) == pytest.approx(float(image.data[1, 16:].mean()), abs=1e-4)
        per_date.append(float(r["band2"]) == pytest.approx(float(image.data[1, 16:].mean()), abs=1e-4))
    assert not all(per_date)  # a date's own mean covers its own (larger) set of valid pixels
    summaries = sorted((out / ".series").glob("*.json"))
    assert len(summaries) == 6  # 3 observed, 3 predicted
    constants: list[str] = []  # valid JSON: an observed date's unknown seconds are null, not NaN
    for summary in summaries:
        json.loads(summary.read_text(), parse_constant=constants.append)
    assert not constants
    # a fine image too cloudy to use: its date is predicted from the others, and the note says why
    mask[:52] = 1
    write_tif(data / f"fine_{FINE_DATES[1]:%Y%m%d}_mask.tif", mask, crs=None)
    again = CliRunner().invoke(
        cli, ["fuse", str(data), "--out", str(tmp_path / "o2"), "--method", "coarse-delta"]
    )
    assert again.exit_code == 0, again.output
    with open(tmp_path / "o2" / "series.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["date"] == str(FINE_DATES[1]))
    assert row["status"] == "predicted" and row["pairs"] == f"{FINE_DATES[0]} {FINE_DATES[2]}"
    assert row["note"] == "predicted: the fine image of this date has 81.2% invalid (> 50%)"


def test_fuse_checks_what_it_will_do_and_reads_observed_dates_like_the_predictions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    synthetic = build_series(data, extra=2)
    out = tmp_path / "out"
    # a model of another band count, or a two-pair method where a date has one pair: nothing written
    model = write_tiny_checkpoint(tmp_path / "m.ckpt", bands=6, coarse_factor=4)
    wrong = CliRunner().invoke(cli, ["fuse", str(data), "--out", str(out), "--checkpoint", str(model)])
    assert wrong.exit_code == 2 and "checkpoint is for 6 bands" in wrong.output and not out.exists()
    one = tmp_path / "one"
    one.mkdir()
    for name in ("fine_20010524.tif", "coarse_20010524.tif", f"coarse_{synthetic[0]:%Y%m%d}.tif"):
        shutil.copy(data / name, one / name)
    pairs = CliRunner().invoke(cli, ["fuse", str(one), "--out", str(out), "--method", "estarfm"])
    assert (
        pairs.exit_code == 2 and "method estarfm needs 2 reference pairs" in pairs.output and not out.exists()
    )
    # --bands: the table has the selected bands only, observed and predicted rows alike
    args = ["fuse", str(data), "--out", str(out), "--method", "coarse-delta", "--bands", "3,1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with open(out / "series.csv") as handle:
        rows = list(csv.DictReader(handle))
    fine = raster.read(data / f"fine_{FINE_DATES[0]:%Y%m%d}.tif").data
    observed = next(r for r in rows if r["date"] == str(FINE_DATES[0]))
    assert list(rows[0])[5:9] == ["band3", "band1", "common_band3", "common_band1"] and len(rows[0]) == 11
    assert float(observed["band3"]) == pytest.approx(float(fine[2].mean()), abs=1e-4)
    # --skip-existing resumes without reading the inputs of the dates it keeps
    target = data / f"coarse_{synthetic[0]:%Y%m%d}.tif"
    target.write_bytes(target.read_bytes()[:200])
    kept = CliRunner().invoke(cli, [*args, "--skip-existing"])
    assert kept.exit_code == 0, kept.output
    assert kept.output.count("(kept") == 2


def test_a_cloud_in_one_reference_is_predicted_from_the_other_and_noted(tmp_path: Path) -> None:
    """ESTARFM needs both pairs at a pixel: where one reference fine image is masked, the series' date
    is predicted there by FSDAF from the other pair, and series.csv's note says how many pixels."""
    data = tmp_path / "data"
    (target,) = build_series(data, extra=1)
    mask = np.zeros((64, 64), np.uint8)
    mask[:16] = 1
    write_tif(data / f"fine_{FINE_DATES[0]:%Y%m%d}_mask.tif", mask, crs=None)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["fuse", str(data), "--out", str(out), "--method", "estarfm"])
    assert result.exit_code == 0, result.output
    with open(out / "series.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["date"] == str(target))
    assert row["status"] == "predicted" and row["method"] == "estarfm"
    assert "1024 pixels (25%) predicted by fsdaf from one pair" in row["note"]
    assert float(row["valid_fraction"]) == 1.0
    assert np.isfinite(raster.read(out / f"fused_{target:%Y%m%d}.tif").data).all()


def test_common_means_leave_out_dates_mostly_invalid(tmp_path: Path) -> None:
    """The pixels common to all dates come from the dates at least half valid; a date mostly cloud gets
    no common means instead of shrinking everyone's set to a sliver."""
    rng = np.random.default_rng(4)
    images = [rng.uniform(0.05, 0.4, (2, 20, 20)).astype(np.float32) for _ in range(3)]
    images[1][:, :5] = np.nan  # 75% valid
    images[2][:, 2:] = np.nan  # 10% valid
    results = []
    for day, image in enumerate(images, start=1):
        path = write_tif(tmp_path / f"fused_2001010{day}.tif", image, dtype="float32", nodata=float("nan"))
        valid = float(np.isfinite(image).all(axis=0).mean())
        results.append(series.DateResult(dt.date(2001, 1, day), "predicted", path=path, valid_fraction=valid))
    inputs = series.SeriesInputs(fine={}, coarse={}, masks={})
    common = series.common_band_means(results, inputs)
    assert common.fraction == 0.75 and sorted(common.means) == [dt.date(2001, 1, 1), dt.date(2001, 1, 2)]
    for day in (1, 2):
        expected = [float(band[5:].mean()) for band in images[day - 1]]
        np.testing.assert_allclose(common.means[dt.date(2001, 1, day)], expected, rtol=1e-6)
    table = series.write_series_table(tmp_path / "series.csv", results, ["b1", "b2"], common)
    with open(table) as handle:
        rows = list(csv.DictReader(handle))
    assert rows[2]["common_b1"] == "" and rows[2]["b1"] == "" and float(rows[0]["common_b1"]) > 0


@pytest.mark.parametrize("fill", ["declared", "nan"])
def test_a_coarse_date_without_a_valid_pixel_is_skipped_too(tmp_path: Path, fill: str) -> None:
    """A fully cloudy MODIS day often comes as all fill (or all NaN), not as a mask: the date is skipped
    and the series goes on, as for a fully masked one; a reference image without a valid pixel is no
    reference (too cloudy), and any other unusable file still stops the series before any output."""
    data = tmp_path / "data"
    synthetic = sorted(build_series(data, extra=4))
    empty = synthetic[1]
    path = data / f"coarse_{empty:%Y%m%d}.tif"
    if fill == "declared":
        write_tif(path, np.full((3, 64, 64), -28672, np.int16), crs=None, nodata=-28672)
    else:
        write_tif(path, np.full((3, 64, 64), np.nan, np.float32), crs=None)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["fuse", str(data), "--out", str(out), "--method", "coarse-delta"])
    assert result.exit_code == 0, result.output
    assert f"{empty}: skipped: no pixel could be predicted: {path.name} has no valid pixel" in result.output
    assert result.output.rstrip().endswith(
        "3 date(s) predicted, 1 skipped (no pixel could be predicted), 3 observed"
    )
    with open(out / "series.csv") as handle:
        assert {row["date"]: row["status"] for row in csv.DictReader(handle)}[str(empty)] == "skipped"
    path.write_bytes(path.read_bytes()[:300])  # a truncated file is still refused, naming it
    refused = CliRunner().invoke(
        cli, ["fuse", str(data), "--out", str(tmp_path / "o2"), "--method", "coarse-delta"]
    )
    assert refused.exit_code == 2 and path.name in refused.output and not (tmp_path / "o2").exists()


def test_common_means_are_relative_to_the_clearest_date(tmp_path: Path) -> None:
    """A scene whose footprint leaves every date half empty (a diagonal Landsat path, SLC-off stripes)
    still gets common means: a date takes part when at least half as valid as the clearest."""
    rng = np.random.default_rng(5)
    results = []
    for day in (1, 2, 3):
        image = rng.uniform(0.05, 0.4, (2, 20, 20)).astype(np.float32)
        image[:, :, :11] = np.nan  # outside the footprint on every date: 45% valid at most
        if day == 3:
            image[:, :8] = np.nan  # and a cloud: 27% valid
        path = write_tif(tmp_path / f"fused_2001010{day}.tif", image, dtype="float32", nodata=float("nan"))
        valid = float(np.isfinite(image).all(axis=0).mean())
        results.append(series.DateResult(dt.date(2001, 1, day), "predicted", path=path, valid_fraction=valid))
    common = series.common_band_means(results, series.SeriesInputs(fine={}, coarse={}))
    assert len(common.means) == 3 and common.fraction == pytest.approx(12 * 9 / 400)
