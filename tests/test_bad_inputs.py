"""Every row of README's "Bad inputs and what you see" table, through the command line.

Errors are one line ``error: <file>: <problem and fix>`` on stderr, exit code 2, no traceback, and no
output file (not even a temporary ``.part``) left behind. Warnings go to the log and the run goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner, Result
from rasterio.transform import from_origin

from stfusion import fusion, scenes, workflows
from stfusion.blocks import Prediction
from stfusion.checkpoint import load as load_checkpoint
from stfusion.cli import cli
from stfusion.inputs import CaseReader
from tests.conftest import TEST_TRANSFORM, make_pair_folder, random_scene, write_tif, write_tiny_checkpoint

RNG_SEED = 11


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A valid explicit case (4 bands, 20 x 24, int16 reflectance x 1e4) for `stfusion predict`."""
    rng = np.random.default_rng(RNG_SEED)
    inputs = tmp_path / "in"
    return {
        "coarse_t1": write_tif(inputs / "coarse_20010101.tif", random_scene(rng)),
        "fine_t1": write_tif(inputs / "fine_20010101.tif", random_scene(rng), nodata=-9999),
        "coarse_t2": write_tif(inputs / "coarse_20010201.tif", random_scene(rng)),
    }


def predict(runner: CliRunner, files: dict[str, Path], out: Path, *extra: str) -> Result:
    args = ["predict", "--method", "coarse-delta", "--out", str(out), *extra]
    for role in ("fine_t1", "coarse_t1", "coarse_t2"):
        args += [f"--{role.replace('_', '-')}", str(files[role])]
    return runner.invoke(cli, args)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert ("Traceback" not in result.output and result.exception is None) or isinstance(
        result.exception, SystemExit
    )
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_nothing_written(folder: Path) -> None:
    leftovers = [
        p for p in folder.rglob("*") if p.is_file() and (p.suffix == ".part" or p.name.startswith("pred"))
    ]
    assert not leftovers, leftovers


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _folder_instead(path: Path) -> None:
    path.unlink()
    path.mkdir()


# id -> (damage to the explicit case, expected fragments of the one-line error)
PREDICT_ERRORS: dict[str, tuple[Callable[[dict[str, Path]], Any], list[str]]] = {
    "missing file": (lambda f: f["fine_t1"].unlink(), ["fine_20010101.tif: file not found"]),
    "folder instead of a file": (
        lambda f: _folder_instead(f["coarse_t2"]),
        ["coarse_20010201.tif: is a folder, expected a GeoTIFF file"],
    ),
    "non-raster file": (
        lambda f: f["coarse_t2"].write_text("hello"),
        ["coarse_20010201.tif: not a readable raster"],
    ),
    "truncated GeoTIFF": (
        lambda f: _truncate(f["fine_t1"]),
        ["fine_20010101.tif: corrupt or truncated raster"],
    ),
    "band-count mismatch": (
        lambda f: write_tif(f["coarse_t2"], random_scene(np.random.default_rng(1), bands=3)),
        ["coarse_20010201.tif: 3 bands, but fine t1 fine_20010101.tif has 4"],
    ),
    "coarse footprint elsewhere": (
        lambda f: write_tif(
            f["coarse_t1"],
            random_scene(np.random.default_rng(1)),
            transform=from_origin(1000.0, 1000.0, 50.0, 50.0),
        ),
        ["coarse_20010101.tif: footprint (CRS EPSG:32755) covers 0% of the grid of fine_20010101.tif"],
    ),
    "coarse in a wrong CRS": (
        lambda f: write_tif(f["coarse_t1"], random_scene(np.random.default_rng(1)), crs="EPSG:4326"),
        ["coarse_20010101.tif: footprint (CRS EPSG:4326) covers 0%", "its CRS is right"],
    ),
    "coarse off the grid without CRS": (
        lambda f: write_tif(f["coarse_t2"], random_scene(np.random.default_rng(1), height=10), crs=None),
        [
            "coarse_20010201.tif: coarse image is not on the grid of fine_20010101.tif",
            "cannot be reprojected",
        ],
    ),
    "all-nodata input": (
        lambda f: write_tif(f["fine_t1"], np.full((4, 20, 24), -9999, np.int16), nodata=-9999),
        ["fine_20010101.tif: no valid pixel", "nodata = -9999"],
    ),
    "all-NaN float input": (
        lambda f: write_tif(f["coarse_t1"], np.full((4, 20, 24), np.nan, np.float32)),
        ["coarse_20010101.tif: no valid pixel"],
    ),
}


@pytest.mark.parametrize("label", list(PREDICT_ERRORS))
def test_predict_refuses_bad_input(
    runner: CliRunner, files: dict[str, Path], tmp_path: Path, label: str
) -> None:
    damage, fragments = PREDICT_ERRORS[label]
    damage(files)
    assert_one_line_error(predict(runner, files, tmp_path / "pred.tif"), *fragments)
    assert_nothing_written(tmp_path)


def test_output_exists_or_cannot_be_written(
    runner: CliRunner, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "pred.tif"
    out.write_text("old")
    assert_one_line_error(predict(runner, files, out), "pred.tif: output exists; pass --overwrite")
    assert out.read_text() == "old"
    assert predict(runner, files, out, "--overwrite").exit_code == 0
    assert_one_line_error(
        predict(runner, files, tmp_path / "no" / "p.tif"), "output folder", "does not exist"
    )
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    assert_one_line_error(predict(runner, files, tmp_path / "p.tif"), "is not writable")
    assert not (tmp_path / "p.tif").exists()


def test_suspicious_values_warn(
    runner: CliRunner, files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(2)
    # NaN/inf in a float input without nodata: warned, treated as invalid, nodata in the prediction
    scene = random_scene(rng).astype(np.float32)
    scene[:, 2, 3] = np.nan
    scene[0, 5, 6] = np.inf
    write_tif(files["coarse_t2"], scene)
    with caplog.at_level(logging.WARNING):
        result = predict(runner, files, tmp_path / "a.tif")
    assert result.exit_code == 0, result.output
    assert "coarse_20010201.tif: 5 of 1920 sampled values are NaN/inf" in caplog.text
    with rasterio.open(tmp_path / "a.tif") as src:
        stored = src.read()
        assert (stored[:, 2, 3] == src.nodata).all() and (stored[:, 5, 6] == src.nodata).all()
    # digital numbers instead of reflectance x 1e4
    caplog.clear()
    write_tif(files["coarse_t2"], (random_scene(rng) * 12).astype(np.uint16))
    with caplog.at_level(logging.WARNING):
        assert predict(runner, files, tmp_path / "b.tif").exit_code == 0
    assert "coarse_20010201.tif: values look like digital numbers" in caplog.text
    # (every value above reflectance 0.7: they could be Landsat C2 digital numbers, and it says how)
    assert "Collection 2 Level-2 digital numbers: --coarse-scale 2.75e-5 --coarse-offset -0.2" in caplog.text

    def warnings_of(out: str, *extra: str) -> str:
        """The warnings of one prediction with the files as they are now."""
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert predict(runner, files, tmp_path / out, *extra).exit_code == 0
        return caplog.text

    # x 10000 integers read with Landsat C2's scale and offset: mostly negative reflectance, warned
    write_tif(files["coarse_t2"], random_scene(rng))
    text = warnings_of("b2.tif", "--coarse-scale", "2.75e-5", "--coarse-offset", "-0.2")
    assert "coarse_20010201.tif: most values are below reflectance -0.02 (median -0." in text
    assert "is its scale or offset wrong?" in text
    # Landsat C2 digital numbers read as x 10000 (every value above reflectance 0.73): warned too
    c2 = np.rint((random_scene(rng) * 1e-4 + 0.2) / 2.75e-5).astype(np.uint16)
    write_tif(files["coarse_t2"], c2)
    text = warnings_of("b3.tif")
    assert "coarse_20010201.tif: almost every value is above reflectance 0.7" in text
    assert "Landsat Collection 2 Level-2 digital numbers read as x 10000" in text
    assert "give --coarse-scale 2.75e-5 --coarse-offset -0.2" in text and "values look like" not in text
    # bright float reflectance (snow, 0.9-1.1) and a swath edge of undeclared -9999 (60 %): only the
    # fill value is warned about, not the scale
    snow = np.random.default_rng(3).uniform(0.9, 1.1, (4, 20, 24)).astype(np.float32)
    write_tif(files["coarse_t2"], snow)
    edge = random_scene(rng)
    edge[:, :12] = -9999
    write_tif(files["coarse_t1"], edge)
    text = warnings_of("b5.tif")
    assert "coarse_20010201.tif" not in text, text
    assert "coarse_20010101.tif: " in text and "(most often the stored value -9999)" in text
    assert "scale or offset wrong" not in text and "Collection 2" not in text
    # an undeclared integer fill value (MODIS -28672) in a block: warned, named, used as data
    filled = random_scene(rng)
    filled[:, :4, :6] = -28672
    write_tif(files["coarse_t2"], filled)
    text = warnings_of("b4.tif")
    assert "sampled values are below reflectance -0.5 (most often the stored value -28672)" in text
    assert "gdal_edit.py -a_nodata -28672 coarse_20010201.tif" in text
    # float reflectance 0..1: read as reflectance (automatic scale 1), the same prediction as x 10000
    # integers, no warning; forced through --scale 0.0001 it is warned about
    caplog.clear()
    integers = {role: random_scene(rng) for role in files}
    for role, values in integers.items():
        write_tif(files[role], values.astype(np.float32) * np.float32(1e-4))
    with caplog.at_level(logging.WARNING):
        assert predict(runner, files, tmp_path / "c.tif").exit_code == 0
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert predict(runner, files, tmp_path / "d.tif", "--scale", "0.0001").exit_code == 0
    assert "every value is below reflectance 0.002" in caplog.text and "give --fine-scale 1" in caplog.text
    assert (
        "coarse_20010201.tif: every value is below" in caplog.text and "give --coarse-scale 1" in caplog.text
    )
    for role, values in integers.items():
        write_tif(files[role], values)
    assert predict(runner, files, tmp_path / "e.tif").exit_code == 0
    with rasterio.open(tmp_path / "c.tif") as c, rasterio.open(tmp_path / "e.tif") as e:
        assert np.abs(c.read().astype(int) - e.read().astype(int)).max() <= 1


def test_unknown_resampling_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        cli, ["compare", str(tmp_path), "--out", str(tmp_path / "o"), "--resampling", "sinc"]
    )
    assert result.exit_code == 2 and "Invalid value for '--resampling'" in result.output


# --------------------------------------------------------------------------------------------------
# folders: scene discovery, dates, grids (stfusion cases / compare / test)


def _pair_data(root: Path, name: str = "2001_281_1008-2001_290_1017", **kwargs: Any) -> Path:
    make_pair_folder(root / "test", name, np.random.default_rng(RNG_SEED), **kwargs)
    return root


def compare(runner: CliRunner, data: Path, out: Path, *extra: str) -> Result:
    return runner.invoke(
        cli, ["compare", str(data), "--out", str(out), "--methods", "persistence,coarse-delta", *extra]
    )


def test_folder_errors(runner: CliRunner, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(runner.invoke(cli, ["cases", str(empty)]), "empty: no fusion cases found")
    (tmp_path / "bad" / "train" / "2001-281").mkdir(parents=True)
    assert_one_line_error(runner.invoke(cli, ["cases", str(tmp_path / "bad")]), "2001-281", "does not parse")
    missing = _pair_data(tmp_path / "missing", skip="MOD09GA_A2001281")
    assert_one_line_error(runner.invoke(cli, ["cases", str(missing)]), "no file for coarse_t1", "2001281")


def test_dates_that_contradict_the_pair_folder(runner: CliRunner, tmp_path: Path) -> None:
    doy = tmp_path / "doy"
    for name in ("L7_20011008.tif", "L7_20011017.tif", "MOD_A2001200.tif", "MOD_A2001290.tif"):
        write_tif(doy / "test" / "2001_200_1008-2001_290_1017" / name, random_scene(np.random.default_rng(1)))
    assert_one_line_error(
        runner.invoke(cli, ["cases", str(doy)]),
        "2001_200_1008-2001_290_1017: day of year 200 (2001-07-19) contradicts the date 2001-10-08",
        "fix the folder name",
    )
    both = _pair_data(tmp_path / "both")
    folder = both / "test" / "2001_281_1008-2001_290_1017"
    write_tif(folder / "L7_20011008_20011017.tif", random_scene(np.random.default_rng(1)))
    assert_one_line_error(
        runner.invoke(cli, ["cases", str(both)]), "name contains both dates 20011008 and 20011017"
    )
    tagged = _pair_data(tmp_path / "tagged")
    coarse_t2 = tagged / "test" / "2001_281_1008-2001_290_1017" / "MOD09GA_A2001290.sur_refl.tif"
    with rasterio.open(coarse_t2, "r+") as dst:
        dst.update_tags(RANGEBEGINNINGDATE="2002-03-01")
    assert_one_line_error(
        compare(runner, tagged, tmp_path / "out"),
        "MOD09GA_A2001290.sur_refl.tif: acquired 2002-03-01 (metadata), but it is coarse_t2",
    )
    assert_nothing_written(tmp_path / "out")


def test_backward_prediction_is_accepted(runner: CliRunner, tmp_path: Path) -> None:
    data = _pair_data(tmp_path / "data", "2001_290_1017-2001_281_1008")
    result = compare(runner, data, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "2001_290_1017-2001_281_1008" / "coarse-delta.tif").exists()


def test_truth_on_another_grid(runner: CliRunner, tmp_path: Path) -> None:
    data = _pair_data(tmp_path / "data")
    truth = (
        data / "test" / "2001_281_1008-2001_290_1017" / "L71093084_08420011017_HRF_modtran_surf_ref_agd66.tif"
    )
    shifted = from_origin(TEST_TRANSFORM.c + 25.0, TEST_TRANSFORM.f, 50.0, 50.0)
    write_tif(truth, random_scene(np.random.default_rng(1)), transform=shifted)
    assert_one_line_error(
        compare(runner, data, tmp_path / "out"),
        "L71093084_08420011017_HRF_modtran_surf_ref_agd66.tif: transform",
        "fine images of a case must share one grid",
    )
    assert_nothing_written(tmp_path / "out")


def test_masks_bad_and_good(runner: CliRunner, tmp_path: Path) -> None:
    data = _pair_data(tmp_path / "data")
    folder = data / "test" / "2001_281_1008-2001_290_1017"
    fine_t1 = folder / "L71093084_08420011008_HRF_modtran_surf_ref_agd66.tif"
    mask = folder / f"{fine_t1.stem}_mask.tif"
    write_tif(mask, np.zeros((1, 7, 7), np.uint8), crs=None)
    assert_one_line_error(compare(runner, data, tmp_path / "out"), f"{mask.name}: mask is not on the grid of")
    assert_nothing_written(tmp_path / "out")
    cloud = np.zeros((1, 20, 24), np.uint8)
    cloud[0, 5:9, 6:12] = 1
    write_tif(mask, cloud, nodata=0)
    result = compare(runner, data, tmp_path / "out", "--quality")
    assert result.exit_code == 0, result.output
    case_dir = tmp_path / "out" / "2001_281_1008-2001_290_1017"
    with rasterio.open(case_dir / "coarse-delta.tif") as src:
        stored = src.read()
        assert (stored[:, 5:9, 6:12] == src.nodata).all() and (stored[:, 10:, :] != src.nodata).all()
    with rasterio.open(case_dir / "quality.tif") as src:
        quality = src.read(1)
        assert (quality[5:9, 6:12] == 1).all() and quality.sum() == 4 * 6
    # evaluate: a mask of another size without CRS
    pred = case_dir / "coarse-delta.tif"
    truth = folder / "L71093084_08420011017_HRF_modtran_surf_ref_agd66.tif"
    odd = write_tif(tmp_path / "odd_mask.tif", np.zeros((1, 7, 7), np.uint8), crs=None)
    args = ["evaluate", "--pred", str(pred), "--truth", str(truth), "--mask", str(odd)]
    assert_one_line_error(runner.invoke(cli, args), "odd_mask.tif: mask is not on the grid of")


# --------------------------------------------------------------------------------------------------
# checkpoints, training, interrupted runs


def _checkpoint(path: Path, bands: int) -> Path:
    return write_tiny_checkpoint(path, bands=bands, coarse_factor=1)


def test_checkpoint_errors(runner: CliRunner, files: dict[str, Path], tmp_path: Path) -> None:
    six = _checkpoint(tmp_path / "six.ckpt", 6)
    out = tmp_path / "pred.tif"
    result = predict(runner, files, out, "--method", "mlffgan", "--checkpoint", str(six))
    assert_one_line_error(result, "six.ckpt: checkpoint is for 6 bands", "4")
    assert_nothing_written(tmp_path)
    data = _pair_data(tmp_path / "data")
    result = runner.invoke(cli, ["test", str(data), "--checkpoint", str(six), "--out", str(tmp_path / "t")])
    assert_one_line_error(result, "six.ckpt: checkpoint is for 6 bands, but", "has 4")
    assert not (tmp_path / "t").exists()
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(six.read_bytes()[:1000])
    result = predict(runner, files, out, "--method", "mlffgan", "--checkpoint", str(truncated))
    assert_one_line_error(result, "cut.ckpt: not a readable checkpoint (truncated or corrupt")
    assert_nothing_written(tmp_path)


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
    runner: CliRunner, tiny_paper_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stfusion import train

    real_step = train.gan_step
    calls = {"n": 0}

    def poisoned_step(*args: Any, **kwargs: Any) -> dict[str, float]:
        losses = real_step(*args, **kwargs)
        calls["n"] += 1
        return {k: math.nan for k in losses} if calls["n"] > steps_per_epoch else losses

    steps_per_epoch = 1  # 2 train cases of 40 x 48, one random 32-px crop each, batch size 4
    monkeypatch.setattr(train, "gan_step", poisoned_step)
    save = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_paper_data), "--save-dir", str(save), "--epochs", "3"]
    args += ["--patch-size", "32", "--random-crops", "1", "--coarse-factor", "1", "--batch-size", "4"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "last.ckpt" in errors[0], result.output
    assert errors[0].startswith("error: non-finite loss at epoch 2, step 1"), errors[0]
    assert "Traceback" not in result.output
    assert load_checkpoint(save / "last.ckpt").epoch == 1
    assert not list(save.glob("*.part"))


class Interrupt(KeyboardInterrupt):
    """Ctrl-C raised by a predictor in the middle of a run."""


def test_interrupted_run_resumes_with_skip_existing(runner: CliRunner, tmp_path: Path) -> None:
    """Ctrl-C after the first case: its outputs are complete, nothing partial is left; a rerun with
    --skip-existing predicts only what is missing (and the CLI flag works end to end)."""
    rng = np.random.default_rng(RNG_SEED)
    root = tmp_path / "data"
    for name in ("2001_281_1008-2001_290_1017", "2001_290_1017-2001_306_1102"):
        make_pair_folder(root / "test", name, rng)
    cases = scenes.discover(root).cases
    calls: list[str] = []

    def predictor(source: CaseReader) -> Prediction:
        calls.append(source.case.name)
        if len(calls) == 2 and interrupt:
            raise Interrupt
        return fusion.get("persistence").preparer()(source)

    out = tmp_path / "out"
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        workflows.run_methods(cases, {"persistence": predictor}, out_dir=out)
    assert (out / cases[0].name / "persistence.tif").exists()
    assert not (out / cases[1].name / "persistence.tif").exists()
    assert not list(out.rglob("*.part"))
    first_mtime = (out / cases[0].name / "persistence.tif").stat().st_mtime_ns
    interrupt, calls = False, []
    with pytest.raises(Exception, match="output exists; pass --overwrite"):
        workflows.run_methods(cases, {"persistence": predictor}, out_dir=out)
    assert calls == []  # refused before any work
    resume = workflows.OutputOptions(skip_existing=True)
    results = workflows.run_methods(cases, {"persistence": predictor}, out_dir=out, output=resume)
    assert calls == [cases[1].name]
    assert (out / cases[0].name / "persistence.tif").stat().st_mtime_ns == first_mtime
    assert all(r["persistence"].metrics is not None for r in results.values())
    # the CLI: a second compare refuses, --skip-existing completes without redoing anything
    assert compare(runner, root, tmp_path / "cmp").exit_code == 0
    assert_one_line_error(compare(runner, root, tmp_path / "cmp"), "output exists; pass --overwrite")
    again = compare(runner, root, tmp_path / "cmp", "--skip-existing")
    assert again.exit_code == 0, again.output
    document = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    timed = [method["extra"]["seconds"] for method in document["methods"].values()]
    assert timed and all(value is None for value in timed)  # kept outputs were not timed: null (not computed)
    assert "| nan |" not in again.output
